"""The dataclass schema of every recipe: the only config system (DESIGN.md §3).

``recipe YAML -> TrlParser (HfArgumentParser) -> dataclasses -> plain builder functions``. Precedence: dataclass
default < YAML < command-line flag. An unknown key in a recipe is an error that names the key. Field names are
unique across all recipe dataclasses (TRL's ``SFTConfig`` included), so one flat YAML feeds them all.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

GRANULARITIES = ("node", "graph")
COORDINATE_KINDS = ("laplacian", "geo", "grid", "none")


class RecipeError(ValueError):
    """A recipe file or flag is wrong; the message names the file and key."""


@dataclass
class DataConfig:
    """What goes into the instruction dataset: which series, how it is windowed, which template renders it.

    Sampling fields accept a fraction (``0 < x <= 1``) or a count (``x > 1``); ``None`` keeps everything.
    """

    dataset_names: list[str] = field(default_factory=lambda: ["synthetic"], metadata={
        "help": "registered dataset names (see `st-instruct data list`) or paths to series files"})
    dataset_dir: str | None = field(default=None, metadata={"help": "folder holding the named datasets' files"})
    dataset_channels: list[str] | None = field(default=None, metadata={"help": "channels to keep (default all)"})
    dataset_start: str | None = field(default=None, metadata={"help": "keep steps from this date on"})
    dataset_end: str | None = field(default=None, metadata={"help": "keep steps before this date"})
    history: int = field(default=12, metadata={"help": "history length L in steps"})
    horizon: int = field(default=12, metadata={"help": "forecast horizon P in steps"})
    split: str = field(default="7:1:2", metadata={"help": "chronological train:validation:test ratios"})
    stride: int = field(default=1, metadata={"help": "steps between consecutive windows"})
    template: str = field(default="forecast_node", metadata={
        "help": "prompt template in prompts/ (latest version), 'name@N' to pin version N, or a .jinja path"})
    granularity: str = field(default="node", metadata={
        "help": "'node': one region/sensor per sample (UrbanGPT); 'graph': all nodes of a window (ST-LLM)"})
    values_in_text: bool = field(default=False, metadata={"help": "also write the history values into the text"})
    values_decimals: int = field(default=1, metadata={"help": "decimals of values written into the text"})
    node_sample: float | None = field(default=None, metadata={"help": "nodes to keep: fraction or count"})
    window_sample: float | None = field(default=None, metadata={
        "help": "windows to keep per split: fraction or count"})
    sample_seed: int = field(default=0, metadata={"help": "seed of node/window sampling"})
    coordinates: str = field(default="laplacian", metadata={
        "help": "spatial coordinates per node: laplacian | geo | grid | none"})
    coordinate_dim: int = field(default=8, metadata={"help": "number of Laplacian eigenvectors"})
    dataset_cache_dir: str | None = field(default=None, metadata={
        "help": "where built datasets are cached by fingerprint (default: the user cache)"})
    streaming: bool = field(default=False, metadata={"help": "build an IterableDataset instead of Arrow tables"})

    def __post_init__(self) -> None:
        if isinstance(self.dataset_names, str):
            self.dataset_names = [self.dataset_names]
        if not self.dataset_names:
            raise RecipeError("dataset_names must name at least one dataset")
        if self.granularity not in GRANULARITIES:
            raise RecipeError(f"granularity must be one of {GRANULARITIES}, found {self.granularity!r}")
        if self.coordinates not in COORDINATE_KINDS:
            raise RecipeError(f"coordinates must be one of {COORDINATE_KINDS}, found {self.coordinates!r}")
        for key in ("node_sample", "window_sample"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise RecipeError(f"{key} must be a fraction in (0, 1] or a count > 1, found {value}")
        if self.history < 1 or self.horizon < 1 or self.stride < 1:
            raise RecipeError(f"history, horizon and stride must be >= 1, found {self.history}, {self.horizon}, "
                              f"{self.stride}")


@dataclass
class ModelConfig:
    """The backbone (its tokenizer is what the dataset is tokenised with; later issues add the model options)."""

    model_name_or_path: str | None = field(default="smollm2-135m", metadata={
        "help": "backbone: a registered name (smollm2-135m), a local folder or a hub id; none = no tokenisation"})
    model_max_length: int | None = field(default=None, metadata={
        "help": "context length; default the tokenizer's model_max_length"})


RECIPE_DATACLASSES: tuple[type, ...] = (DataConfig, ModelConfig)


def _known_keys(dataclass_types: tuple[type, ...]) -> list[str]:
    return [f.name for cls in dataclass_types for f in fields(cls)]


def check_unique_fields(dataclass_types: tuple[type, ...]) -> None:
    """Raise if two recipe dataclasses share a field name (a flat YAML could not say which one it sets)."""
    seen: dict[str, str] = {}
    for cls in dataclass_types:
        for f in fields(cls):
            if f.name in seen:
                raise RecipeError(f"field {f.name!r} is declared by both {seen[f.name]} and {cls.__name__}")
            seen[f.name] = cls.__name__


def load_recipe_file(path: str | Path, dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """Read a recipe YAML mapping and check every key against ``dataclass_types`` (close names suggested)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err.strerror or err}") from err
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of keys to values, found {type(config).__name__}")
    known = _known_keys(dataclass_types)
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(f"recipe {path}: unknown key {key!r}{hint} Known keys: {', '.join(sorted(known))}")
    return config


def parse_recipe(dataclass_types: tuple[type, ...], args: list[str] | None = None) -> tuple[Any, ...]:
    """``[RECIPE.yaml] [--key value ...]`` -> one instance per dataclass type.

    The recipe may be given as the first positional argument or with ``--config``; flags override it. Built on
    TRL's ``TrlParser`` so training recipes can include ``SFTConfig`` fields unchanged.
    """
    from trl import TrlParser

    check_unique_fields(dataclass_types)
    args = list(sys.argv[1:] if args is None else args)
    if args and not args[0].startswith("-"):
        args = ["--config", args[0], *args[1:]]
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise RecipeError("--config needs a recipe path")
        load_recipe_file(args[i + 1], dataclass_types)  # names the offending key before TRL sees it
    parser = TrlParser(dataclass_types)
    try:
        return tuple(parser.parse_args_and_config(args))
    except SystemExit as err:  # argparse exits on an unknown or malformed flag after printing the usage
        raise RecipeError(f"bad command-line flags {args}: see the message above") from err
