"""The pretraining job of a recipe (``st-instruct pretrain RECIPE.yaml``, ``scripts/pretrain.py``): windows of one or
several datasets -> encoder + light head -> a plain AdamW loop on the CPU -> its own folder.

The folder holds ``encoder.safetensors``, the head (``readout.safetensors`` or ``decoder.safetensors``),
``encoder_config.json`` (:class:`~st_instruct.models.st_encoders.EncoderSpec`), ``recipe.yaml`` (every resolved
value) and ``pretrain_log.json``: the loss of every step and the corpus -- ``datasets`` (in the recipe's order), their
normalised ``dataset_weights``, the steps each got (``dataset_steps``, aligned with ``datasets``) and ``leave_out``
(the held-out dataset, never read; null without one). A forecaster recipe loads it with ``st_encoder_init: DIR``
(:func:`get_pretrained_encoder`).

Batches come from the train split of :func:`~st_instruct.data.windows.build_windows` (scaled values, null masks,
calendar features; the scaler fitted on the train split), one dataset per step, drawn with the recipe's
``dataset_weights``: the encoder is node-count agnostic, so datasets of different sizes mix without padding.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from st_instruct.configs import (
    PRETRAIN_DATACLASSES,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    RecipeError,
    STEncoderConfig,
    TrainingDivergedError,
    load_recipe_file,
    part,
    recipe_dict,
)
from st_instruct.data.loaders import load_series
from st_instruct.data.masks import draw_mask
from st_instruct.data.stdata import STData
from st_instruct.data.windows import (
    StandardScaler,
    STWindows,
    build_windows,
    parse_split,
    split_borders,
    window_statistics,
)
from st_instruct.models.st_encoders import ENCODER_CONFIG_FILE, EncoderSpec, build_st_encoder
from st_instruct.outputs import check_writable, staged_output
from st_instruct.pretraining.model import HEAD_FILE, PretrainModel, forecast_loss, reconstruction_loss
from st_instruct.samples.builder import sample_coordinates

ENCODER_FILE = "encoder.safetensors"
RECIPE_FILE = "recipe.yaml"
LOG_FILE = "pretrain_log.json"
# what the data fields of an EncoderSpec are in a recipe's terms, for the error of a folder that does not fit
SHAPE_KEYS = {"history": "history", "channels": "channels (of the data)", "coord_dim": "coordinates / coordinate_dim"}


@dataclass
class PretrainSource:
    """One dataset ready for pretraining: its share of the steps (``weight``, the corpus's sum to 1), its windows,
    ``coords`` [N, K], its graph (for block masks) and the mask families that can be drawn on it."""

    name: str
    weight: float
    windows: STWindows
    coords: torch.Tensor
    adjacency: np.ndarray | None
    grid_shape: tuple[int, int] | None
    families: list[str]
    # scaling: window -- the axes of [B, L, N, C] each history window is z-scored over, as the sample builder scales
    # (per node for node samples, over the nodes for graph samples); None: the train split's scaler
    window_axis: tuple[int, ...] | None = None


def load_sources(data_config: DataConfig, families: list[str]) -> list[PretrainSource]:
    """Every dataset of the recipe's corpus (:meth:`~st_instruct.configs.DataConfig.corpus`: ``leave_out`` is never
    read), windowed, with its weight; refuses learned coordinates and datasets of different channel counts (one
    encoder reads them all)."""
    if data_config.coordinates == "learned":
        raise RecipeError("coordinates: learned is a table per node id trained with the forecaster, not part of the "
                          "pretrained encoder; pretrain with laplacian, geo, grid or none coordinates")
    sources = []
    for entry, data in zip(data_config.corpus(), load_series(data_config), strict=True):
        windows = build_windows(data, data_config.history, data_config.horizon, data_config.split,
                                data_config.stride)
        coords = torch.from_numpy(sample_coordinates(data, data_config))
        adjacency = data.dense_adjacency()
        graph = adjacency is not None or data.grid_shape is not None
        usable = [name for name in families if name != "block" or graph]
        if not usable:
            raise RecipeError(f"pretrain_mask_families {families}: block masks need a graph or a grid, and dataset "
                              f"{data.name!r} has neither; add another family (e.g. random, tube, temporal)")
        sources.append(PretrainSource(data.name, entry.weight, windows, coords, adjacency, data.grid_shape, usable,
                                      window_axis=None if data_config.scaling == "train" else
                                      (1,) if data_config.granularity == "node" else (1, 2)))
    channels = {source.name: source.windows.scaled.shape[-1] for source in sources}
    if len(set(channels.values())) > 1:
        raise RecipeError(f"dataset_names have different channel counts {channels}; one encoder reads a fixed "
                          "number of channels: pick channels with dataset_channels or per dataset as "
                          "NAME[ch1,ch2], or pretrain them separately")
    return sources


def window_batch(source: PretrainSource, index: np.ndarray) -> dict[str, torch.Tensor]:
    """The train windows ``index`` of ``source`` as encoder inputs plus ``target`` / ``target_mask`` [B, P, N, C]
    (scaled, observed): by the train split's scaler, or with a ``window_axis`` by the statistics of each history
    window (:func:`~st_instruct.data.windows.window_statistics`, as the sample builder scales with ``scaling:
    window``)."""
    windows = source.windows
    arrays = windows.batch("train", index)
    future = arrays["start"][:, None] + windows.history + np.arange(windows.horizon)[None, :]
    batch, nodes = len(index), source.coords.shape[0]
    history, target = arrays["x"], windows.scaled[future]
    if source.window_axis is not None:
        past = arrays["start"][:, None] + np.arange(windows.history)[None, :]
        mean, std = window_statistics(windows.data.values[past], arrays["x_mask"], axis=source.window_axis)
        history = np.where(arrays["x_mask"], (np.nan_to_num(windows.data.values[past]) - mean) / std, 0.0)
        target = np.where(windows.observed[future], (np.nan_to_num(windows.data.values[future]) - mean) / std, 0.0)
        history, target = history.astype(np.float32), target.astype(np.float32)
    return {"history": torch.from_numpy(history), "history_mask": torch.from_numpy(arrays["x_mask"]),
            "history_tod": torch.from_numpy(arrays["x_tod"]), "history_dow": torch.from_numpy(arrays["x_dow"]),
            "coords": source.coords[None].expand(batch, -1, -1), "node_mask": torch.ones(batch, nodes, dtype=bool),
            "steps_per_day": torch.full((batch,), windows.steps_per_day),
            "target": torch.from_numpy(target),
            "target_mask": torch.from_numpy(windows.observed[future])}


def step_loss(model: PretrainModel, batch: dict[str, torch.Tensor], source: PretrainSource, ratio: float,
              generator: torch.Generator) -> torch.Tensor:
    """The loss of one batch: the forecast readout's masked MAE, or (``mae``) one mask family drawn from
    ``source.families`` hiding entries that the decoder must reconstruct."""
    inputs = {key: value for key, value in batch.items() if not key.startswith("target")}
    if model.objective == "forecast":
        return forecast_loss(model(**inputs), batch["target"], batch["target_mask"])
    family = source.families[int(torch.randint(len(source.families), (), generator=generator))]
    hidden = draw_mask(family, tuple(batch["history"].shape), ratio, generator, adjacency=source.adjacency,
                       grid_shape=source.grid_shape)
    return reconstruction_loss(model(**inputs, hidden=hidden), batch["history"], batch["history_mask"], hidden)


class EpochOrder:
    """Batches of window indices in whole epochs: each train window once per pass, in an order drawn from
    ``generator``; a batch never spans two passes (the last one of a pass may be shorter)."""

    def __init__(self, count: int, generator: torch.Generator) -> None:
        self.count, self.generator = count, generator
        self.order, self.position = torch.randperm(count, generator=generator).numpy(), 0

    def next(self, size: int) -> np.ndarray:
        if self.position >= self.count:
            self.order, self.position = torch.randperm(self.count, generator=self.generator).numpy(), 0
        index = self.order[self.position:self.position + size]
        self.position += size
        return index


def divergence_error(what: str, step: int, config: PretrainConfig) -> TrainingDivergedError:
    """The error of a pretraining run whose loss or weights turned inf or nan: ``what`` happened at ``step``."""
    return TrainingDivergedError(f"{what} at step {step} of {config.pretrain_steps}: pretraining diverged and was "
                                 f"stopped, nothing was saved; lower pretrain_learning_rate (now "
                                 f"{config.pretrain_learning_rate:g}) and pretrain again")


def train_encoder(data_config: DataConfig, model_config: ModelConfig, config: PretrainConfig,
                  progress: bool = True) -> tuple[PretrainModel, EncoderSpec, dict]:
    """Pretrain the recipe's encoder: ``(model, its encoder's config, log)``; the log holds the loss of every step and
    the corpus (module docstring). Each step's dataset is drawn with the corpus's weights (``dataset_weights``).
    Seeded by ``pretrain_seed`` (initialisation, dataset draws, batches, masks): the same recipe gives the same
    weights.

    A loss that turns inf or nan stops the run before its step is applied, and weights left non-finite by the last
    step are refused too (:class:`TrainingDivergedError`), so no folder of non-finite weights is ever written."""
    sources = load_sources(data_config, list(config.pretrain_mask_families))
    first = sources[0]
    encoder_config = EncoderSpec(part(model_config, STEncoderConfig), history=data_config.history,
                                 channels=first.windows.scaled.shape[-1], coord_dim=first.coords.shape[1])
    torch.manual_seed(config.pretrain_seed)
    generator = torch.Generator().manual_seed(config.pretrain_seed)
    steps = data_config.horizon if config.pretrain_objective == "forecast" else data_config.history
    model = PretrainModel(build_st_encoder(encoder_config), config.pretrain_objective, steps,
                          encoder_config.channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_learning_rate,
                                  weight_decay=config.pretrain_weight_decay)
    schedule = None
    if config.pretrain_lr_scheduler == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.pretrain_steps)
    orders = [EpochOrder(source.windows.num_windows("train"), generator) for source in sources]
    cumulative_weights = torch.tensor([source.weight for source in sources], dtype=torch.float64).cumsum(0)
    steps_per_source = [0] * len(sources)
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(config.pretrain_steps), desc=f"pretrain ({config.pretrain_objective})", disable=not progress)
    model.train()
    for step in bar:
        # inverse CDF of one uniform draw, which takes from the generator what torch.randint did before the weights:
        # a one-dataset recipe gives the weights it gave then
        uniform = torch.rand((), generator=generator).double()
        pick = min(int(torch.searchsorted(cumulative_weights, uniform, right=True)), len(sources) - 1)
        steps_per_source[pick] += 1
        source, index = sources[pick], orders[pick].next(config.pretrain_batch_size)
        loss = step_loss(model, window_batch(source, index), source, config.pretrain_mask_ratio, generator)
        if not loss.isfinite():
            raise divergence_error(f"the {config.pretrain_objective} loss is {loss.item():g}", step + 1, config)
        optimizer.zero_grad()
        loss.backward()
        try:
            optimizer.step()
        except RuntimeError as err:  # AdamW's step size lr / (1 - beta1^t) beyond float32: lr above about 3e37
            if "overflow" not in str(err):
                raise
            raise divergence_error(f"the optimizer step overflowed ({err})", step + 1, config) from err
        if schedule is not None:
            schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    if not all(p.isfinite().all() for p in model.parameters()):  # the last step's update: no loss has read it
        raise divergence_error("the weights turned inf or nan", config.pretrain_steps, config)
    log = {"objective": config.pretrain_objective, "datasets": [source.name for source in sources],
           "dataset_weights": [source.weight for source in sources], "dataset_steps": steps_per_source,
           "leave_out": data_config.leave_out, "losses": losses, "seconds": round(time.perf_counter() - started, 2)}
    return model.eval(), encoder_config, log


def save_encoder(model: PretrainModel, encoder_config: EncoderSpec, log: dict, output: str | Path,
                 recipe: dict, overwrite: bool = False) -> Path:
    """Write the pretrained folder (module docstring) through ``staged_output``: it appears only once complete,
    and a non-empty ``output`` is refused unless ``overwrite``."""
    output = Path(output)
    with staged_output(output, overwrite=overwrite, flag="--overwrite") as staging:
        save_file(model.encoder.state_dict(), str(staging / ENCODER_FILE), metadata={"format": "pt"})
        save_file(model.head.state_dict(), str(staging / HEAD_FILE[model.objective]), metadata={"format": "pt"})
        encoder_config.save(staging)
        (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
        (staging / LOG_FILE).write_text(json.dumps(log, indent=2) + "\n")
    return output


def pretrain(data_config: DataConfig, model_config: ModelConfig, config: PretrainConfig, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Pretrain the recipe's encoder and save its folder at ``pretrain_output_dir``; returns that path. Nothing is
    overwritten unasked (``overwrite``), checked before any work."""
    output = Path(config.pretrain_output_dir)
    check_writable(output, overwrite, "--overwrite")
    model, encoder_config, log = train_encoder(data_config, model_config, config, progress)
    save_encoder(model, encoder_config, log, output, recipe_dict(data_config, model_config, config), overwrite)
    losses = log["losses"]
    left_out = f" ({log['leave_out']} left out)" if log["leave_out"] else ""
    print(f"pretrained the {encoder_config.encoder.st_encoder} encoder ({config.pretrain_objective}, {len(losses)} "
          f"steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}) on {', '.join(log['datasets'])}{left_out}; saved to "
          f"{output}")
    return output


def get_pretrained_encoder(directory: str | Path, expected: EncoderSpec) -> nn.Module:
    """The encoder saved in ``directory`` by :func:`pretrain`, built by ``build_st_encoder`` and loaded; a
    :class:`RecipeError` (one line naming ``st_encoder_init``) for a missing or non-encoder folder or one whose
    encoder does not fit ``expected`` (the recipe's), naming every differing value on both sides."""
    key = "st_encoder_init"
    directory = Path(directory)
    if not directory.is_dir():
        raise RecipeError(f"{key}: {directory} is not a folder; name the output folder of `st-instruct pretrain`")
    try:
        saved = EncoderSpec.load(directory)
    except ValueError as err:
        raise RecipeError(f"{key}: {err}") from None
    pairs = [(f.name, getattr(saved.encoder, f.name), getattr(expected.encoder, f.name))
             for f in fields(STEncoderConfig)]
    pairs += [(label, getattr(saved, name), getattr(expected, name)) for name, label in SHAPE_KEYS.items()]
    differ = [f"{name}: {mine!r} in the folder, {theirs!r} in the recipe" for name, mine, theirs in pairs
              if mine != theirs]
    if differ:
        raise RecipeError(f"{key}: the encoder in {directory} does not fit this recipe ({'; '.join(differ)}); "
                          f"pretrain one with the recipe's settings or set them to the folder's")
    path = directory / ENCODER_FILE
    encoder = build_st_encoder(saved)
    try:
        encoder.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:  # missing, corrupt, another version
        raise RecipeError(f"{key}: {path} cannot be loaded into the {saved.encoder.st_encoder} encoder of "
                          f"{directory / ENCODER_CONFIG_FILE} ({str(err).splitlines()[0]}); pretrain again") from None
    return encoder


def load_readout_into_skip(directory: str | Path, head: nn.Module) -> None:
    """``head_skip_init: readout``: start ``head`` (a :class:`~st_instruct.models.regression_head.RegressionHead`
    with a skip path) from the forecast readout saved in ``directory``
    (:meth:`~st_instruct.models.regression_head.RegressionHead.start_from_skip`); a :class:`RecipeError` naming the
    folder for one without a forecast readout or with one of another horizon or channel count."""
    path = Path(directory) / HEAD_FILE["forecast"]
    if not path.is_file():
        found = [name for name in HEAD_FILE.values() if (Path(directory) / name).is_file()]
        raise RecipeError(f"head_skip_init: readout needs the forecast readout {path}, which is not there "
                          f"({', '.join(found) or 'no head file'} found: pretrain with pretrain_objective: forecast, "
                          "or use head_skip_init: closed)")
    try:
        state = load_file(str(path))
        head.start_from_skip(state["weight"], state["bias"])
    except (OSError, KeyError, SafetensorError) as err:
        raise RecipeError(f"head_skip_init: {path} cannot be read as a readout ({err}); pretrain again") from None
    except ValueError as err:
        raise RecipeError(f"head_skip_init: the readout in {path} does not fit this recipe's head: {err}; pretrain "
                          "with the recipe's horizon and channels") from None


# ------------------------------------------------------------------------------------ the MAE as an imputer
@dataclass
class PretrainedMAE:
    """A masked-autoencoder folder of :func:`pretrain` loaded to fill gaps (:func:`load_pretrained_mae`): the encoder +
    decoder (``model``, eval mode), its :class:`EncoderSpec`, the recipe's data keys (``data_config``: how the
    pretraining scaled its windows and built its coordinates) and the corpus it read (``datasets``, the log's)."""

    directory: Path
    model: PretrainModel
    spec: EncoderSpec
    data_config: DataConfig
    datasets: list[str]

    @property
    def window_axis(self) -> tuple[int, ...] | None:
        """The axes of [B, L, N, C] each history window is z-scored over, as :func:`load_sources` set them (None:
        the train split's scaler)."""
        config = self.data_config
        return None if config.scaling == "train" else (1,) if config.granularity == "node" else (1, 2)

    def coordinates(self, data: STData) -> np.ndarray:
        """``[N', K]`` the coordinates the pretraining would have built for ``data`` (its series view with
        ``channel_independent``: ``N' = N * C``)."""
        view = data.series_view() if self.data_config.channel_independent else data
        return sample_coordinates(view, self.data_config)

    def misfit(self, data: STData, history: int) -> str | None:
        """Why the encoder cannot read windows of ``history`` steps of ``data`` (one line), or None when it can:
        another history length, another channel count, or coordinates of another kind or size."""
        channels = 1 if self.data_config.channel_independent else data.num_channels
        if history != self.spec.history:
            return (f"the encoder in {self.directory} reads histories of {self.spec.history} steps, the evaluated "
                    f"windows have {history}")
        if channels != self.spec.channels:
            return (f"the encoder in {self.directory} reads {self.spec.channels} channel(s), the evaluated data "
                    f"{data.name!r} has {channels} per node")
        try:
            coords = self.coordinates(data)
        except ValueError as err:  # STDataError, RecipeError
            return (f"the encoder in {self.directory} places nodes by coordinates: {self.data_config.coordinates}, "
                    f"which {data.name!r} cannot give ({str(err).splitlines()[0]})")
        if coords.shape[1] != self.spec.coord_dim:
            return (f"the encoder in {self.directory} reads {self.spec.coord_dim} coordinates per node, "
                    f"{data.name!r} gives {coords.shape[1]} (coordinates: {self.data_config.coordinates})")
        return None

    def train_split_of(self, name: str) -> tuple[STData, tuple[int, int]] | None:
        """``(data, (lo, hi))``: dataset ``name`` as the pretraining read it and the steps of its train split (the
        only ones pretraining read), or None when ``name`` was not in its corpus."""
        if name not in self.datasets:
            return None
        corpus = self.data_config.corpus()
        if len(corpus) != len(self.datasets):
            raise RecipeError(f"the log of {self.directory} names {len(self.datasets)} datasets, its recipe "
                              f"{len(corpus)}; pretrain again")
        entry = corpus[self.datasets.index(name)]  # the log's datasets follow the corpus
        channels = entry.channels or self.data_config.dataset_channels
        config = dataclasses.replace(self.data_config, dataset_names=[entry.name], dataset_weights=None,
                                     leave_out=None, dataset_channels=channels)
        data = load_series(config)[0]
        return data, split_borders(data.num_steps, parse_split(self.data_config.split))["train"]

    @torch.no_grad()
    def reconstruct(self, values: np.ndarray, visible: np.ndarray, tod: np.ndarray, dow: np.ndarray,
                    coords: np.ndarray, steps_per_day: int, scaler: StandardScaler, batch_size: int = 64
                    ) -> np.ndarray:
        """``[B, L, N, C]`` the history windows ``values`` (original units; NaN where missing) with every entry not
        ``visible`` filled by the decoder and every visible one returned as read (bit for bit).

        The windows are scaled as the pretraining scaled its own (:func:`window_batch`): by ``scaler`` (the train
        split's statistics) or by each window's statistics over :attr:`window_axis`, those fitted on the visible
        entries only. What is not visible reaches the encoder as pretraining hid entries: value zeroed, observed flag
        cleared (``hidden=``); the reconstruction is de-scaled by the same statistics. ``tod`` / ``dow`` [B, L],
        ``coords`` [N', K] (:meth:`coordinates`)."""
        batch, steps, nodes, channels = values.shape
        if batch == 0:
            return values.copy()
        # the encoder's view: [B, L, N * C, 1] series (channel_independent; node n * C + c) or the windows as they are
        view = (batch, steps, nodes * channels, 1) if self.data_config.channel_independent else values.shape
        raw = np.nan_to_num(values)
        if self.window_axis is None:
            mean, std = scaler.mean.astype(np.float32), scaler.std.astype(np.float32)
            scaled = np.where(visible, scaler.transform(raw), 0.0).astype(np.float32)
        else:
            mean, std = window_statistics(raw.reshape(view), visible.reshape(view), axis=self.window_axis)
            stats = (batch, 1, *view[2:])
            mean = np.broadcast_to(mean, stats).reshape(batch, 1, nodes, channels)
            std = np.broadcast_to(std, stats).reshape(batch, 1, nodes, channels)
            scaled = np.where(visible, (raw - mean) / std, 0.0).astype(np.float32)
        history = torch.from_numpy(np.ascontiguousarray(scaled.reshape(view)))
        seen = torch.from_numpy(np.ascontiguousarray(visible.reshape(view)))
        coords_t = torch.from_numpy(np.asarray(coords, dtype=np.float32))
        out = []
        for lo in range(0, batch, batch_size):
            chunk = slice(lo, lo + batch_size)
            count = history[chunk].shape[0]
            out.append(self.model(history[chunk], seen[chunk], torch.from_numpy(tod[chunk]).long(),
                                  torch.from_numpy(dow[chunk]).long(), coords_t[None].expand(count, -1, -1),
                                  torch.ones(count, view[2], dtype=torch.bool),
                                  torch.full((count,), steps_per_day), hidden=~seen[chunk]))
        decoded = torch.cat(out).numpy().reshape(values.shape).astype(np.float64) * std + mean
        return np.where(visible, values, decoded.astype(values.dtype))


def load_pretrained_mae(directory: str | Path) -> PretrainedMAE:
    """The masked autoencoder (encoder + decoder) saved in ``directory`` by :func:`pretrain`, with what it needs to
    rebuild its inputs (:class:`PretrainedMAE`); a :class:`RecipeError` (one line) for a missing folder, one of
    another objective (``forecast``: a readout, no decoder) or files that do not load."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecipeError(f"{directory} is not a folder; name the output folder of `st-instruct pretrain`")
    try:
        spec = EncoderSpec.load(directory)
        log = json.loads((directory / LOG_FILE).read_text())
        values = load_recipe_file(directory / RECIPE_FILE, PRETRAIN_DATACLASSES)
    except (OSError, ValueError) as err:  # RecipeError is a ValueError
        raise RecipeError(f"{directory} is not a complete pretrained folder ({str(err).splitlines()[0]}); "
                          "pretrain again") from None
    objective = log.get("objective", values.get("pretrain_objective"))
    if objective != "mae":
        raise RecipeError(f"the encoder in {directory} was pretrained with objective {objective!r}, which saves no "
                          f"decoder back to the history; pretrain one with pretrain_objective: mae")
    names = {f.name for f in fields(DataConfig)}
    try:
        data_config = DataConfig(**{key: value for key, value in values.items() if key in names})
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{directory / RECIPE_FILE}: {str(err).splitlines()[0]}") from None
    model = PretrainModel(build_st_encoder(spec), "mae", spec.history, spec.channels)
    try:
        model.encoder.load_state_dict(load_file(str(directory / ENCODER_FILE)), strict=True)
        model.head.load_state_dict(load_file(str(directory / HEAD_FILE["mae"])), strict=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        raise RecipeError(f"{directory}: the encoder or decoder cannot be loaded ({str(err).splitlines()[0]}); "
                          "pretrain again") from None
    return PretrainedMAE(directory, model.eval(), spec, data_config, list(log.get("datasets", [])))
