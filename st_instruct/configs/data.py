"""The data part of a recipe: which series, how they are windowed, which template renders the samples
(:class:`DataConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from st_instruct.configs.checks import RecipeError, check_choice, check_fields

GRANULARITIES = ("node", "graph")
SCALINGS = ("train", "window")
COORDINATE_KINDS = ("laplacian", "geo", "grid", "learned", "none")
# mirrored from st_instruct.tasks.TASKS (a test checks they agree) so reading a recipe imports no task
TASK_NAMES = ("forecasting",)
# mirrored from st_instruct.samples.render.IMAGE_KINDS (a test checks they agree) plus "none"
IMAGE_KIND_NAMES = ("none", "map", "multiview")


DATASET_SPEC_KEYS = ("adjacency", "freq", "series_start", "null_value", "channel_names", "nodes", "no_calendar")
"""What a user can say about a dataset where it is used: the keyword arguments of
:func:`~st_instruct.data.loaders.get_dataset`, the CLI flags ``--adjacency --freq --series-start --null-value
--channel-names --nodes --no-calendar`` of every verb that reads a dataset, and the recipe keys ``dataset_<key>`` of
:class:`DataConfig`."""


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
                "it)"})
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
    window_sample: float | None = field(default=None, metadata={
        "help": "windows to keep per split: fraction or count"})
    sample_seed: int = field(default=0, metadata={"help": "seed of node/window sampling"})
    coordinates: str = field(default="laplacian", metadata={
        "help": "spatial coordinates per node: laplacian | geo | grid | learned (a trained table per node id: "
                "not transferable to other node sets) | none"})
    coordinate_dim: int = field(default=8, metadata={
        "help": "number of Laplacian eigenvectors / width of the learned node table"})
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
        if not self.dataset_names:
            raise RecipeError("dataset_names must name at least one dataset")
        if self.granularity not in GRANULARITIES:
            raise RecipeError(f"granularity must be one of {GRANULARITIES}, found {self.granularity!r}")
        if self.scaling not in SCALINGS:
            raise RecipeError(f"scaling must be one of {SCALINGS}, found {self.scaling!r}")
        if self.coordinates not in COORDINATE_KINDS:
            raise RecipeError(f"coordinates must be one of {COORDINATE_KINDS}, found {self.coordinates!r}")
        for key in ("node_sample", "window_sample"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise RecipeError(f"{key} must be a fraction in (0, 1] or a count > 1, found {value}")
        if self.history < 1 or self.horizon < 1 or self.stride < 1:
            raise RecipeError(f"history, horizon and stride must be >= 1, found {self.history}, {self.horizon}, "
                              f"{self.stride}")
