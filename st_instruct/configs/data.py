"""The data part of a recipe: which series, how they are windowed, which template renders the samples
(:class:`DataConfig`)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field

from st_instruct.configs.checks import RecipeError, check_choice, check_fields

GRANULARITIES = ("node", "graph")
SCALINGS = ("train", "window")
COORDINATE_KINDS = ("laplacian", "geo", "grid", "learned", "none")
# mirrored from st_instruct.tasks.TASKS (a test checks they agree) so reading a recipe imports no task
TASK_NAMES = ("forecasting", "imputation")
# mirrored from st_instruct.data.missing.PATTERNS / PRESETS (a test checks they agree)
MISSING_PATTERN_NAMES = ("point", "sequence", "node", "spin_point", "spin_block")
MISSING_PRESET_NAMES = ("spin_point", "spin_block")
# mirrored from st_instruct.data.missing.HISTORY_FILLS (a test checks they agree)
HISTORY_FILL_NAMES = ("none", "forward")
# mirrored from st_instruct.samples.render.IMAGE_KINDS (a test checks they agree) plus "none"
IMAGE_KIND_NAMES = ("none", "map", "multiview")


DATASET_SPEC_KEYS = ("adjacency", "freq", "series_start", "null_value", "channel_names", "nodes", "no_calendar")
"""What a user can say about a dataset where it is used: the keyword arguments of
:func:`~st_instruct.data.loaders.get_dataset`, the CLI flags ``--adjacency --freq --series-start --null-value
--channel-names --nodes --no-calendar`` of every verb that reads a dataset, and the recipe keys ``dataset_<key>`` of
:class:`DataConfig`."""


CHANNEL_SELECTION_EXAMPLE = "beijing-air[PM2.5,CO]"


def parse_dataset_entry(entry: str | os.PathLike) -> tuple[str, list[str] | None]:
    """``(NAME, channels)`` of one ``dataset_names`` entry: ``"beijing-air[PM2.5,CO]"`` -> ``("beijing-air",
    ["PM2.5", "CO"])``; a plain name or path -> ``(entry, None)``. Only a pair of brackets closing the entry selects
    channels, so a path with balanced brackets elsewhere (``runs[2]/speeds.npz``) is a path as before. A
    :class:`RecipeError` for unbalanced brackets or an empty channel list."""
    entry = os.fspath(entry) if isinstance(entry, os.PathLike) else str(entry)  # YAML reads `- 2024` as a number
    if not entry.endswith("]") and _brackets_balanced(entry):
        return entry, None
    name, opened, inside = entry[:-1].rpartition("[")
    if not entry.endswith("]") or not opened or not name or "]" in inside or not _brackets_balanced(name):
        raise RecipeError(f"dataset_names entry {entry!r} is malformed: expected NAME or NAME[channel,...] with one "
                          f"pair of brackets at its end, e.g. {CHANNEL_SELECTION_EXAMPLE}")
    channels = [channel.strip() for channel in inside.split(",")]
    if not all(channels):
        raise RecipeError(f"dataset_names entry {entry!r} has an empty channel list or channel name: expected "
                          f"NAME[channel,...] naming at least one channel, e.g. {CHANNEL_SELECTION_EXAMPLE}")
    return name, channels


def corpus_names(dataset_names: list[str], leave_out: str | None = None) -> list[str]:
    """The NAMEs of a recipe's ``dataset_names`` without ``leave_out`` (what a card lists as trained on), for a
    recipe read as a dict; a parsed :class:`DataConfig` has :meth:`DataConfig.corpus`."""
    return [name for name, _ in map(parse_dataset_entry, dataset_names) if name != leave_out]


def _brackets_balanced(text: str) -> bool:
    """Whether every ``[`` of ``text`` is closed by a later ``]`` and every ``]`` closes one."""
    depth = 0
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


@dataclass
class CorpusEntry:
    """One dataset of a recipe's corpus (:meth:`DataConfig.corpus`): ``name`` as :func:`get_dataset
    <st_instruct.data.loaders.get_dataset>` takes it (a registered name or a file path), the ``channels`` its
    ``NAME[ch1,ch2]`` entry selects (``None``: ``dataset_channels`` applies) and its mixing ``weight`` (the
    corpus's weights sum to 1)."""

    name: str
    channels: list[str] | None
    weight: float


@dataclass
class DataConfig:
    """What goes into the instruction dataset: which series, how it is windowed, which template renders it.

    Sampling fields accept a fraction (``0 < x <= 1``) or a count (``x > 1``); ``None`` keeps everything.
    """

    dataset_names: list[str] = field(default_factory=lambda: ["synthetic"], metadata={
        "help": "the corpus: registered dataset names (see `st-instruct data list`) or paths to series files, each "
                "at most once; NAME[ch1,ch2] keeps those channels of that dataset (instead of dataset_channels)"})
    dataset_weights: list[float] | None = field(default=None, metadata={
        "help": "pretraining: the share of steps drawn from each dataset of dataset_names (one finite weight > 0 "
                "per entry, normalised to sum 1); null: equal. The forecaster's training takes every window of "
                "every dataset and does not read it"})
    leave_out: str | None = field(default=None, metadata={
        "help": "a NAME of dataset_names removed from the corpus (with its weight) before any data is read: "
                "leave-one-dataset-out transfer"})
    dataset_dir: str | None = field(default=None, metadata={"help": "folder holding the named datasets' files"})
    dataset_channels: list[str] | None = field(default=None, metadata={"help": "channels to keep (default all)"})
    dataset_start: str | None = field(default=None, metadata={"help": "keep steps from this date on"})
    dataset_end: str | None = field(default=None, metadata={"help": "keep steps before this date"})
    # The dataset specification (DATASET_SPEC_KEYS; CLI flags --adjacency, --freq, ...).
    # It applies to EACH dataset of dataset_names: several path datasets needing different specs are not supported.
    dataset_adjacency: str | None = field(default=None, metadata={
        "help": "adjacency file replacing the graph: N x N matrix (.csv/.npy/.npz) or from,to[,cost] edge list"})
    dataset_freq: str | None = field(default=None, metadata={
        "help": "the step of a series without timestamps, e.g. 15min, 1h, 1D"})
    dataset_series_start: str | None = field(default=None, metadata={
        "help": "timestamp of the first step of a series without timestamps, e.g. 2024-03-04"})
    dataset_null_value: str | None = field(default=None, metadata={
        "help": "value meaning 'not observed' besides NaN (e.g. 0); nan declares none; default the dataset's own"})
    dataset_channel_names: list[str] | None = field(default=None, metadata={
        "help": "one name per channel of a series file (default ch0, ch1, ...)"})
    dataset_nodes: str | None = field(default=None, metadata={
        "help": "nodes .csv: a name column, optionally latitude,longitude or x,y; one row per node in node order"})
    dataset_no_calendar: bool = field(default=False, metadata={
        "help": "run without a calendar: time features zero, calendar baselines skipped (else an unknown "
                "calendar is refused)"})
    task: str = field(default="forecasting", metadata={
        "help": "what a window is for (st_instruct.tasks): forecasting (read the history, predict the horizon after "
                "it) or imputation (read the history with missing_pattern's entries hidden, return all of it; "
                "horizon: 0)"})
    missing_pattern: str | None = field(default=None, metadata={
        "help": "observed entries hidden from the model (st_instruct.data.missing): NAME:RATE with NAME point, "
                "sequence or node and RATE in (0, 1) of the observed entries (point:0.5), or SPIN's presets "
                "spin_point / spin_block; imputation trains and scores on them, forecasting reads a sparser history"})
    history_fill: str = field(default="none", metadata={
        "help": "what a forecaster reads in place of a history entry it lacks (hidden by missing_pattern or missing "
                "from the data): none (a zero with its observed flag off: forecasting directly from the sparse "
                "history) or forward (the last value read at or before that step, flagged observed: impute-then-"
                "forecast; it reads no later step, so no window sees past its own history)"})
    history: int = field(default=12, metadata={"help": "history length L in steps"})
    horizon: int = field(default=12, metadata={"help": "forecast horizon P in steps"})
    split: str = field(default="7:1:2", metadata={"help": "chronological train:validation:test ratios"})
    stride: int = field(default=1, metadata={"help": "steps between consecutive windows"})
    scaling: str = field(default="train", metadata={
        "help": "statistics the samples are scaled with: 'train' (per channel, the dataset's train split) or "
                "'window' (from each sample's own history window only: strict zero-shot)"})
    template: str = field(default="forecast_node", metadata={
        "help": "prompt template in prompts/ (latest version), 'name@N' to pin version N, or a .jinja path (a path "
                "outside prompts/ and $ST_INSTRUCT_PROMPTS only as a --template flag)"})
    template_sha256: str | None = field(default=None, metadata={
        "help": "sha256 of the template file; recorded by training, checked whenever it is set"})
    granularity: str = field(default="node", metadata={
        "help": "'node': one region/sensor per sample (UrbanGPT); 'graph': all nodes of a window (ST-LLM)"})
    values_in_text: bool = field(default=False, metadata={"help": "also write the history values into the text"})
    values_decimals: int = field(default=1, metadata={"help": "decimals of values written into the text"})
    node_sample: float | None = field(default=None, metadata={"help": "nodes to keep: fraction or count"})
    graph_patch_size: int | None = field(default=None, metadata={
        "help": "graph samples of large graphs (PatchSTG-style): cut the nodes into spatial patches of at most this "
                "many (KD-tree on the coordinates, st_instruct.data.patches; isolated nodes in patches of their own), "
                "one sample per window and patch, each forecasting its patch's nodes (stitched back per window); "
                "null: every node in one sample"})
    graph_patch_context: int = field(default=2, metadata={
        "help": "with graph_patch_size: summary tokens before a patch's nodes, one per nearest other patch (its "
                "nodes' mean history at their mean coordinates), read but never forecast"})
    window_sample: float | None = field(default=None, metadata={
        "help": "windows to keep per split: fraction or count"})
    sample_seed: int = field(default=0, metadata={"help": "seed of node/window sampling"})
    coordinates: str = field(default="laplacian", metadata={
        "help": "spatial coordinates per node: laplacian | geo | grid | learned (a trained table per node id: "
                "not transferable to other node sets) | none"})
    coordinate_dim: int = field(default=8, metadata={
        "help": "number of Laplacian eigenvectors / width of the learned node table"})
    channel_independent: bool = field(default=False, metadata={
        "help": "universal forecaster: read every channel of every node as its own one-channel series "
                "(STData.series_view), so one model takes any channel count; each series' node name and description "
                "name its channel and unit, and its coordinates end in a code of the channel's name "
                "(channel_identity_dim)"})
    channel_identity_dim: int = field(default=16, metadata={
        "help": "with channel_independent: the length of each series' channel code, a fixed vector keyed by the "
                "channel's name that the encoder's coordinate map learns to read (0: none)"})
    dataset_cache_dir: str | None = field(default=None, metadata={
        "help": "where built datasets are cached by fingerprint (default: the user cache)"})
    streaming: bool = field(default=False, metadata={"help": "build an IterableDataset instead of Arrow tables"})
    image_kind: str = field(default="none", metadata={
        "help": "ST-VLM: the image of each window a vision-language backbone reads (st_instruct.samples.render): map "
                "(history steps as map / heat-map panels) | multiview (temporal, spatial, correlation and map "
                "views) | none (text and ST tokens only)"})
    image_size: int | None = field(default=None, metadata={
        "help": "image side in pixels (default: the vision tower's image size, 224 for towers of any size)"})
    image_panels: int = field(default=4, metadata={"help": "history steps tiled into one map image"})
    image_channel: int = field(default=0, metadata={"help": "the channel an image colours (index)"})
    rationale_teacher: str = field(default="none", metadata={
        "help": "AirGPT: training answers start with a five-stage rationale written by this teacher under the true "
                "label: none | analytic (deterministic, from the window's facts) | a causal LM (smollm2-135m, a "
                "folder or a hub id; rejected texts replaced by the analytic teacher's; cached by content hash)"})
    rationale_fraction: float = field(default=0.5, metadata={
        "help": "share of the training samples that get a rationale (the rest keep the direct answer, so the "
                "single-pass forecast stays trained)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("task", self.task, TASK_NAMES)
        self._check_missing_pattern()
        check_choice("history_fill", self.history_fill, HISTORY_FILL_NAMES)
        if self.history_fill != "none" and self.task == "imputation":
            raise RecipeError(f"history_fill {self.history_fill!r} fills a forecaster's history, but task imputation "
                              "fills the gaps itself: drop history_fill (or set it to none)")
        if self.image_kind not in IMAGE_KIND_NAMES:
            raise RecipeError(f"image_kind must be one of {IMAGE_KIND_NAMES}, found {self.image_kind!r}")
        if self.image_size is not None and self.image_size < 32:
            raise RecipeError(f"image_size must be >= 32 pixels (or null for the vision tower's), found "
                              f"{self.image_size}")
        if not 0 < self.rationale_fraction <= 1:
            raise RecipeError(f"rationale_fraction must be in (0, 1], found {self.rationale_fraction}")
        if self.rationale_teacher != "none" and self.streaming:
            raise RecipeError("rationale_teacher adds the teacher's rationales to a built dataset; it cannot stream: "
                              "set streaming: false")
        if self.image_panels < 1 or self.image_channel < 0:
            raise RecipeError(f"image_panels must be >= 1 and image_channel >= 0, found {self.image_panels}, "
                              f"{self.image_channel}")
        if isinstance(self.dataset_names, str):
            self.dataset_names = [self.dataset_names]
        self.corpus()
        if self.granularity not in GRANULARITIES:
            raise RecipeError(f"granularity must be one of {GRANULARITIES}, found {self.granularity!r}")
        if self.scaling not in SCALINGS:
            raise RecipeError(f"scaling must be one of {SCALINGS}, found {self.scaling!r}")
        if self.coordinates not in COORDINATE_KINDS:
            raise RecipeError(f"coordinates must be one of {COORDINATE_KINDS}, found {self.coordinates!r}")
        if self.graph_patch_size is not None and (self.granularity != "graph" or self.graph_patch_size < 1):
            raise RecipeError(f"graph_patch_size cuts graph samples into patches of >= 1 node: it needs granularity: "
                              f"graph and a size >= 1, found {self.graph_patch_size} with granularity "
                              f"{self.granularity!r}")
        if self.graph_patch_size is not None and self.coordinates == "learned":
            raise RecipeError("graph_patch_size adds summary tokens of neighbouring patches, which no learned node "
                              "table row stands for; use coordinates: geo, grid or laplacian")
        if self.graph_patch_size is not None and self.values_in_text:
            raise RecipeError("graph_patch_size keeps the values out of the text (a patch's summary tokens have no "
                              "readings of their own): set values_in_text: false")
        if self.graph_patch_context < 0:
            raise RecipeError(f"graph_patch_context must be >= 0, found {self.graph_patch_context}")
        for key in ("node_sample", "window_sample"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise RecipeError(f"{key} must be a fraction in (0, 1] or a count > 1, found {value}")
        if not 0 <= self.channel_identity_dim <= 4_096:
            raise RecipeError(f"channel_identity_dim must be an integer in 0..4096, found {self.channel_identity_dim}")
        if self.channel_independent and self.scaling != "window":
            raise RecipeError(f"channel_independent reads any dataset with no statistic of it: it needs scaling: "
                              f"window (each series z-scored by its own history window), found {self.scaling!r}")
        if self.channel_independent and self.coordinates == "learned":
            raise RecipeError("channel_independent reads any node set, but coordinates: learned is a table per node "
                              "id of the training data; use coordinates: none, geo or laplacian")
        if self.task == "imputation":
            if self.horizon != 0:
                raise RecipeError(f"task imputation fills windows of history steps and predicts none after them: set "
                                  f"horizon: 0, found {self.horizon}")
        elif self.horizon < 1:
            raise RecipeError(f"horizon must be >= 1 for task {self.task}, found {self.horizon}")
        if self.history < 1 or self.stride < 1:
            raise RecipeError(f"history and stride must be >= 1, found {self.history}, {self.stride}")

    def _check_missing_pattern(self) -> None:
        """``missing_pattern`` well formed (:class:`~st_instruct.data.missing.MissingPattern` says the same), and
        given to imputation, which has nothing to score without it."""
        if self.missing_pattern is None:
            if self.task == "imputation":
                raise RecipeError("task imputation needs missing_pattern: the entries to hide and score, e.g. "
                                  "point:0.25 or spin_block")
            return
        name, sep, rate = str(self.missing_pattern).partition(":")
        if name not in MISSING_PATTERN_NAMES:
            raise RecipeError(f"missing_pattern must be NAME:RATE or a preset, NAME one of "
                              f"{', '.join(MISSING_PATTERN_NAMES)}, found {self.missing_pattern!r}")
        if name in MISSING_PRESET_NAMES:
            if sep:
                raise RecipeError(f"missing_pattern {name} is a preset with its own rate; write {name!r} alone, found "
                                  f"{self.missing_pattern!r}")
            return
        try:
            value = float(rate)
        except ValueError:
            value = math.nan
        if not 0 < value < 1:
            raise RecipeError(f"missing_pattern {self.missing_pattern!r}: the rate must be in (0, 1), e.g. {name}:0.5")

    def corpus(self) -> list[CorpusEntry]:
        """The datasets that load (:func:`~st_instruct.data.loaders.load_series`), in ``dataset_names`` order:
        ``leave_out`` removed with its weight, the weights normalised over the rest. Checks the corpus keys; a
        :class:`RecipeError` naming the key for each mistake (run by ``__post_init__``, so a recipe is refused
        before any data is read)."""
        if not self.dataset_names:
            raise RecipeError(f"dataset_names must name at least one dataset (a registered name, a path or "
                              f"NAME[channel,...]), found {list(self.dataset_names)}")
        entries = [parse_dataset_entry(entry) for entry in self.dataset_names]
        names = [name for name, _ in entries]
        twice = [name for name in names if names.count(name) > 1]
        if twice:
            listed = [entry for entry, name in zip(self.dataset_names, names, strict=True) if name == twice[0]]
            raise RecipeError(f"dataset_names lists the dataset {twice[0]!r} twice ({listed}); list each dataset "
                              f"once, with all the channels it gives in one entry, e.g. {CHANNEL_SELECTION_EXAMPLE}")
        weights = [1.0] * len(entries) if self.dataset_weights is None else list(self.dataset_weights)
        if len(weights) != len(entries):
            raise RecipeError(f"dataset_weights must give one weight per entry of dataset_names ({len(entries)}: "
                              f"{list(self.dataset_names)}), found {len(weights)}: {weights}")
        if not all(isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w > 0
                   for w in weights):
            raise RecipeError(f"dataset_weights must be finite numbers > 0, found {weights}; leave a dataset out "
                              "with leave_out, not with a weight of 0")
        if self.leave_out is not None:
            if self.leave_out not in names:
                raise RecipeError(f"leave_out {self.leave_out!r} is not a dataset of dataset_names; expected one "
                                  f"of {names} (or null)")
            if len(names) == 1:
                raise RecipeError(f"leave_out {self.leave_out!r} removes the only dataset of dataset_names; list "
                                  "the datasets to keep beside it, or set leave_out: null")
        kept = [(name, channels, weight) for (name, channels), weight in zip(entries, weights, strict=True)
                if name != self.leave_out]
        total = sum(weight for *_, weight in kept)
        return [CorpusEntry(name, channels, weight / total) for name, channels, weight in kept]

    def for_one_dataset(self, name: str | os.PathLike, **changes: object) -> DataConfig:
        """This config pointed at the one dataset ``name`` (a registered name or a path), with ``changes``: the corpus
        keys that describe ``dataset_names`` (``dataset_weights``, ``leave_out``) dropped, as they cannot apply."""
        return dataclasses.replace(self, dataset_names=[name], dataset_weights=None, leave_out=None, **changes)
