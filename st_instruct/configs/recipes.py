"""Reading recipes: ``recipe YAML -> TrlParser (HfArgumentParser) -> dataclasses`` (docs/design.md §3).

Precedence: dataclass default < YAML < command-line flag. An unknown key in a recipe is an error that names the key.
Field names are unique across all recipe dataclasses (TRL's ``SFTConfig`` included), so one flat YAML feeds them all.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import re
import sys
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from st_instruct.configs.checks import RecipeError, check_finite
from st_instruct.configs.data import DATASET_SPEC_KEYS, DataConfig
from st_instruct.configs.model import ModelConfig, check_architecture
from st_instruct.configs.pretrain import PretrainConfig
from st_instruct.shipped import (
    PROMPTS_ENV,
    file_sha256,
    is_trusted_template,
    names_a_path,
    resolve_template,
    shipped_recipes,
)

RECIPE_DATACLASSES: tuple[type, ...] = (DataConfig, ModelConfig)
PRETRAIN_DATACLASSES: tuple[type, ...] = (DataConfig, ModelConfig, PretrainConfig)


def check_training_arguments(args: Any) -> None:
    """What ``TrainingArguments`` (TRL's ``SFTConfig``) itself lets through and training cannot use: an inf or nan
    value, or a ``learning_rate`` <= 0 (the adapters / backbone would not learn, or climb the loss)."""
    check_finite(args)
    if not args.learning_rate > 0:
        raise RecipeError(f"learning_rate must be > 0, found {args.learning_rate}; set it in the recipe or with "
                          "--learning_rate")


def check_recipe_consistency(data_config: DataConfig, model_config: ModelConfig) -> None:
    """Refuse settings of the data and the model that are each valid but do not work together (a
    :class:`RecipeError`): SE-Attention rotates by a node's coordinates centred per sample, and a node-granularity
    prompt holds one node, whose centred coordinates are 0: the rotation would silently do nothing; UniST's grid
    encoder places nodes on their grid by their grid coordinates."""
    if model_config.se_attention and data_config.granularity == "node":
        raise RecipeError("se_attention: true does nothing with granularity: node (a prompt of one node, whose "
                          "coordinates centred per sample are 0, is rotated by a zero angle); use granularity: graph "
                          "(e.g. with template: forecast_graph) or se_attention: false")
    if model_config.st_encoder == "grid_patch" and data_config.coordinates != "grid":
        raise RecipeError(f"st_encoder: grid_patch places each node on its grid by its (row, col), so it needs "
                          f"coordinates: grid, found coordinates: {data_config.coordinates}")
    if data_config.graph_patch_size is not None and (model_config.st_graph != "none" or model_config.unist_prompts):
        raise RecipeError("graph_patch_size samples carry summary tokens of neighbouring patches, which neither the "
                          "graph encoder (st_graph) nor UniST's memory prompts (unist_prompts) can place in the "
                          "dataset's graph; drop graph_patch_size or those modules")
    check_architecture(data_config, model_config)


def train_dataclasses() -> tuple[type, ...]:
    """``(DataConfig, ModelConfig, trl.SFTConfig)``: the schema of a training recipe, one flat YAML.

    A function, not a constant, so importing this module does not import TRL (seconds). ``st-instruct build-data``
    parses with it too and ignores the ``SFTConfig``, so a training recipe also builds its own dataset.
    """
    from trl import SFTConfig

    return (DataConfig, ModelConfig, SFTConfig)


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


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: ``name_or_path`` itself when it exists (or looks like a path), else the shipped recipe of that
    name (``smoke_sft`` -> ``recipes/smoke_sft.yaml``). An unknown name is a :class:`RecipeError` listing the
    shipped ones."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise RecipeError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe; shipped: "
                      f"{', '.join(shipped)} (`st-instruct recipes` lists them)")


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


def cpu_training_defaults(given: set[str]) -> dict[str, Any]:
    """Defaults of ``SFTConfig`` fields for a machine without CUDA, for the keys a recipe and its flags left unset.

    TRL turns bf16 and activation (gradient) checkpointing on by default, and ``TrainingArguments`` refuses bf16
    without a GPU; multi-process runs on CPU need ``use_cpu`` (docs/design.md §8). Deriving these from the hardware
    keeps the recipe the same on a laptop, on 2 CPU processes and on 8 GPUs. Empty when CUDA is available.
    """
    import torch  # here, not at the top: every verb imports configs, and torch takes seconds

    if torch.cuda.is_available():
        return {}
    defaults: dict[str, Any] = {"bf16": False, "use_cpu": True}
    if not {"activation_checkpointing", "gradient_checkpointing"} & given:
        defaults["activation_checkpointing"] = False
    return {key: value for key, value in defaults.items() if key not in given}


class _ParserError(Exception):
    """argparse's complaint about one value (raised instead of printing the usage and exiting)."""


def _value_kind(action: Any) -> str | None:
    """What a flag's value must be, in words, from its argparse ``type`` (None when any value is accepted)."""
    if _is_bool_type(action.type):
        return "true or false"
    return {int: "an integer", float: "a number", str: "a string"}.get(action.type)


def _is_bool_type(kind: Any) -> bool:
    """HfArgumentParser's ``string_to_bool`` (TRL and transformers each have a copy)."""
    return getattr(kind, "__name__", None) == "string_to_bool"


def _check_recipe_types(path: str, config: dict[str, Any], actions: dict[str, Any],
                        dataclass_types: tuple[type, ...]) -> None:
    """Raise a :class:`RecipeError` naming ``path``, the key, the value and the expected type for a recipe value
    argparse would pass through unchecked (a list for a number, ``1.5`` for an integer, null for a required key);
    a string is left to argparse's own conversion (reported by :func:`parse_recipe`)."""
    # the declared annotations: HfArgumentParser rewrites the fields' .type in place
    annotations = {name: str(hint) for cls in dataclass_types for klass in reversed(cls.__mro__)
                   for name, hint in vars(klass).get("__annotations__", {}).items()}
    optional = {f.name: "None" in annotations.get(f.name, "") or "Optional" in annotations.get(f.name, "")
                or f.default is None for cls in dataclass_types for f in fields(cls)}
    for key, value in config.items():
        action = actions.get(key)
        kind = _value_kind(action) if action is not None else None
        many = action is not None and action.nargs in ("+", "*")
        if kind is None or (not many and any(word in annotations.get(key, "") for word in ("list", "dict"))):
            continue  # e.g. TRL's report_to: str | list[str]
        expected = f"a list of {kind.removeprefix('an ').removeprefix('a ')}s" if many else kind
        if value is None:
            if optional.get(key, True):
                continue
            bad = True
        elif many:
            items = value if isinstance(value, list) else [value] if action.type is str else None
            # argparse converts a string default, never the strings inside a list default: check those here
            bad = items is None or any(not _fits(item, action.type) or not _converts(item, action.type)
                                       for item in items)
        else:
            bad = not _fits(value, action.type)
        if bad:
            raise RecipeError(f"recipe {path}: key {key!r} must be {expected}, found {value!r} "
                              f"({type(value).__name__}); fix the value in the recipe (or override it with --{key})")


def _fits(value: Any, kind: Any) -> bool:
    """Whether a YAML value can fill an argparse value of ``kind`` (strings: argparse converts and checks them)."""
    if isinstance(value, str):
        return True
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if _is_bool_type(kind):
        return isinstance(value, bool)
    return not isinstance(value, (list, dict))  # str: a scalar (YAML dates and numbers read as text)


def _converts(item: Any, kind: Any) -> bool:
    """Whether a string item of a list converts with ``kind`` (``int("last")`` does not); non-strings: True."""
    if not isinstance(item, str):
        return True
    try:
        kind(item)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False
    return True


def _check_recipe_template(path: str, config: dict[str, Any]) -> None:
    """A recipe file may only name templates in the trusted folders (prompts/, $ST_INSTRUCT_PROMPTS): a shared
    recipe (or model folder) must not make this machine render a file of its choosing."""
    value = config.get("template")
    if isinstance(value, str) and names_a_path(value) and not is_trusted_template(value):
        raise RecipeError(f"recipe {path}: key 'template' names {value}, a file outside prompts/ and "
                          f"${PROMPTS_ENV}, which a recipe file may not do; name a shipped template (e.g. "
                          f"forecast_node), put the file in the folder ${PROMPTS_ENV} names, or pass --template "
                          f"{value} on the command line if you trust it")


def _check_flags(args: list[str], known: list[str]) -> None:
    """Every ``--key`` flag names a recipe key (``--no_<key>`` negates a boolean); close names suggested."""
    for arg in args:
        if not arg.startswith("--") or arg in ("--config", "--help"):  # --help: argparse prints every key
            continue
        name = arg[2:].split("=")[0].replace("-", "_")
        if name in known or (name.startswith("no_") and name[3:] in known):
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else ""
        raise RecipeError(f"unknown flag --{name}{hint} Any recipe key can be given as a flag (see the recipe's "
                          "keys or `--help`)")


def _check_template_sha256(configs: tuple[Any, ...]) -> None:
    for config in configs:
        if isinstance(config, DataConfig) and config.template_sha256:
            path = resolve_template(config.template)
            digest = file_sha256(path)
            if digest != config.template_sha256:
                raise RecipeError(f"template_sha256 is {config.template_sha256}, but the template {path} has sha256 "
                                  f"{digest}: the file changed since the recipe was written; restore it, or drop "
                                  "template_sha256 to accept the new text")


def dataset_flags_as_recipe_keys(args: list[str]) -> list[str]:
    """The dataset flags of the other verbs (``--freq 15min``, ``--series-start``, ``--no-calendar``, ``--start``,
    ``--channels``, ...; :data:`DATASET_SPEC_KEYS` and the slicing flags) written as their
    ``DataConfig`` recipe keys (``--dataset_freq 15min``), so ``train`` / ``build-data`` / ``scripts/sft.py`` take the
    same names as ``baselines`` and ``evaluate``. They apply to every dataset of ``dataset_names``."""
    keys = (*DATASET_SPEC_KEYS, "start", "end", "channels")
    flags = {f"--{key.replace('_', '-')}": f"--dataset_{key}" for key in keys}
    out = []
    for arg in args:
        name, eq, value = arg.partition("=")
        if name == "--no-calendar":
            out += ["--dataset_no_calendar", value if eq else "true"]
        elif name in flags:
            out.append(f"{flags[name]}{eq}{value}")
        else:
            out.append(arg)
    return out


def parse_recipe(dataclass_types: tuple[type, ...], args: list[str] | None = None) -> tuple[Any, ...]:
    """``[RECIPE.yaml] [--key value ...]`` -> one instance per dataclass type.

    The recipe may be given as the first positional argument or with ``--config``; flags override it, the dataset
    flags of the other verbs among them (:func:`dataset_flags_as_recipe_keys`). Built on
    TRL's ``TrlParser`` so training recipes include ``SFTConfig`` fields unchanged; with ``SFTConfig`` among the
    types, :func:`cpu_training_defaults` apply under the recipe on a machine without CUDA.

    Every mistake is one :class:`RecipeError` line naming the recipe (or flag), the key, the value and what is
    expected -- never argparse's usage text; an inf or nan value and a ``learning_rate`` <= 0 among them
    (:func:`check_fields`, :func:`check_training_arguments`). A recipe file may only name templates in
    ``prompts/`` or ``$ST_INSTRUCT_PROMPTS`` (a ``--template`` flag may name any file); a set ``template_sha256``
    must match the template's file.
    """
    # here, not at the top: every verb imports configs, and TRL / transformers take seconds
    from transformers import TrainingArguments
    from trl import TrlParser

    class RecipeParser(TrlParser):
        def error(self, message: str):  # argparse would print the usage and exit
            raise _ParserError(message)

    check_unique_fields(dataclass_types)
    args = list(sys.argv[1:] if args is None else args)
    if args and not args[0].startswith("-"):
        args = ["--config", args[0], *args[1:]]
    if DataConfig in dataclass_types:
        args = dataset_flags_as_recipe_keys(args)
    flags = {arg[2:].split("=")[0].replace("-", "_") for arg in args if arg.startswith("--")} - {"config"}
    _check_flags(args, _known_keys(dataclass_types))
    recipe, config = None, {}
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise RecipeError("--config needs a recipe path")
        recipe = args[i + 1] = str(resolve_recipe(args[i + 1]))
        config = load_recipe_file(recipe, dataclass_types)  # names the offending key before TRL sees it
    parser = RecipeParser(dataclass_types)
    actions = {action.dest: action for action in parser._actions if action.option_strings
               and not action.option_strings[0].startswith("--no_")}
    if recipe is not None:
        from_file = {key: value for key, value in config.items() if key not in flags}
        _check_recipe_types(recipe, from_file, actions, dataclass_types)
        _check_recipe_template(recipe, from_file)
    _read_null_words_as_none(parser, dataclass_types)
    if any(cls.__name__ == "SFTConfig" for cls in dataclass_types):
        parser.set_defaults_with_config(**cpu_training_defaults(flags | set(config)))
    try:
        parsed = tuple(parser.parse_args_and_config(args))
    except _ParserError as err:
        raise RecipeError(_parser_message(str(err), recipe, set(config) - flags)) from None
    except RecipeError:
        raise
    except ValueError as err:  # a dataclass's own check (TrainingArguments: bf16 without a GPU, ...)
        raise RecipeError(f"recipe {recipe or '(none)'}: {err}") from err
    for config in parsed:
        if isinstance(config, TrainingArguments):
            check_training_arguments(config)
    _check_template_sha256(parsed)
    data = [config for config in parsed if isinstance(config, DataConfig)]
    model = [config for config in parsed if isinstance(config, ModelConfig)]
    if data and model:
        try:
            check_recipe_consistency(data[0], model[0])
        except RecipeError as err:
            raise RecipeError(f"recipe {recipe or '(flags)'}: {err}") from None
    return parsed


def _read_null_words_as_none(parser: argparse.ArgumentParser, dataclass_types: tuple[type, ...]) -> None:
    """Make ``--key null`` (or ``none``) set an optional single-valued string key of ``DataConfig`` / ``ModelConfig``
    to ``None``: argparse would pass the word on as a string, and the dataclass's own checks (``leave_out`` must
    name a dataset) run when it is built, so the word becomes ``None`` as argparse converts it."""
    # (HfArgumentParser rewrites field types in place, dropping "| None": an optional key is one defaulting to None)
    optional = {f.name for cls in dataclass_types if issubclass(cls, (DataConfig, ModelConfig))
                for f in fields(cls) if f.default is None}
    for action in parser._actions:
        if action.dest in optional and action.type is str and action.nargs is None:
            action.type = _none_for_null_word


def _none_for_null_word(value: str) -> str | None:
    """argparse's conversion of an optional string key's value: ``null`` / ``none`` (any case) -> ``None``."""
    return None if value.lower() in ("null", "none") else value


def _parser_message(message: str, recipe: str | None, file_keys: set[str]) -> str:
    """argparse's ``argument --history/--history: invalid int value: 'abc'`` as a line naming where it came from."""
    match = re.match(r"argument (--[\w-]+)(?:/--[\w-]+)*: (.*)", message)
    if match is None:
        return f"{message} (see `st-instruct VERB --help`)"
    key, problem = match[1][2:].replace("-", "_"), match[2]
    for argparse_word, kind in (("int", "an integer"), ("float", "a number"), ("string_to_bool", "true or false")):
        problem = re.sub(rf"invalid {argparse_word} value: (.*)", rf"must be {kind}, found \1", problem)
    if recipe is not None and key in file_keys:
        return f"recipe {recipe}: key {key!r}: {problem}; fix the value in the recipe (or override it with --{key})"
    return f"flag --{key}: {problem}"


def recipe_dict(*configs: Any) -> dict[str, Any]:
    """The resolved values of parsed recipe dataclasses as one flat mapping that :func:`parse_recipe` reads back.

    Every field of our dataclasses. Of ``TrainingArguments`` (hundreds of fields): those that differ from a default
    instance on this machine, plus the precision and device choices (``bf16``, ``use_cpu``,
    ``activation_checkpointing``) whatever they are; never ``hub_token``.
    """
    out: dict[str, Any] = {}
    for config in configs:
        if not hasattr(config, "to_dict"):
            out.update({f.name: _plain(getattr(config, f.name)) for f in fields(config)})
            continue
        reference = _default_training_values(type(config))
        values = config.to_dict()  # resolved and serialisable; hides every *_token value
        always = {"bf16", "use_cpu", "activation_checkpointing"}
        for f in fields(config):
            name = f.name
            if not f.init or name in ("hub_token", "gradient_checkpointing") or name not in values:
                continue
            if name in always or values[name] != reference.get(name):
                out[name] = _plain(getattr(config, name) if name.endswith("_token") else values[name])
    return out


@functools.cache
def _default_training_values(cls: type) -> dict[str, Any]:
    """``cls()``'s resolved values (with the CPU defaults), made once per class: building ``TrainingArguments`` resets
    accelerate's state, so it must not happen again once a trainer runs (a checkpoint's card reads the recipe)."""
    return cls(**cpu_training_defaults(set())).to_dict()


def _plain(value: Any) -> Any:
    """YAML-safe form of a config value (enums by value, tuples as lists)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
