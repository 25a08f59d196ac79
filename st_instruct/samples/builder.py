"""Instruction datasets for spatio-temporal forecasting: windows of :class:`STData` -> chat samples + arrays.

UrbanGPT (Li et al., "UrbanGPT: Spatio-Temporal Large Language Models", KDD 2024) trains an LLM on one region per
sample: a prompt with the city, region and time in words, a ``<st_his>`` token where the ST encoder's embedding
of the region's history goes, and a ``<st_pre>`` token whose hidden state a regression head turns into the
forecast. ST-LLM (Liu et al., "Spatial-Temporal Large Language Model for Traffic Prediction", MDM 2024) puts
every node of a window in one sample, one token per node. :func:`build_dataset` makes both
(``DataConfig.granularity`` = ``"node"`` / ``"graph"``) as a ``datasets.DatasetDict`` (train / validation /
test), rendered by a versioned template of ``prompts/`` (:mod:`st_instruct.samples.prompts`), cached on disk by a
fingerprint of everything that determines it (:func:`dataset_fingerprint`).

Sample schema (one row; ``N'`` = nodes in the sample: 1 for ``node``, the (sampled) nodes of the dataset in
ascending index order for ``graph``; ``L`` history, ``P`` horizon, ``C`` channels, ``K`` coordinate size).
Arrays are nested Arrow lists; ``with_format("numpy")`` gives them with the shapes below.

==================  =========================  =================================================================
column              type, shape                meaning
==================  =========================  =================================================================
sample_id           str                        ``"<dataset>/<split>/w<window_start:06d>/n<node:03d>"`` (node) or
                                               ``".../all"`` (graph); unique and stable
dataset, city       str                        ``STData.name`` and ``STData.city``
split               str                        ``train`` / ``validation`` / ``test``
window_start        int64                      step index of the first history step (in the sliced series)
time_start          str                        ISO time of the first history step, ``""`` without a calendar
template            str                        the template that rendered ``messages``: ``"forecast_node@1"``
                                               (or the file path for a template outside ``prompts/`` naming)
messages            list of {role, content}    chat turns (``system`` if the template has one, ``user``,
                                               ``assistant``); one ``<st_his>`` and one ``<st_pre>`` per node,
                                               in the order of ``node_index``
node_index          int32 ``[N']``             node indices in the dataset, ascending in graph samples
history             float32 ``[L, N', C]``     scaled (z-score, see *Scaling*) history, 0 where missing
history_mask        bool ``[L, N', C]``        True where observed (not NaN, not the declared null value)
target              float32 ``[P, N', C]``     scaled target, 0 where missing
target_mask         bool ``[P, N', C]``        True where observed
scaler_mean/_std    float32 ``[C]``            original = scaled * std + mean (the sample's scaler)
coords              float32 ``[N', K]``        per ``DataConfig.coordinates``: ``laplacian`` K = coordinate_dim
                                               (Laplacian eigenvectors of the full graph; zeros without one),
                                               ``geo`` K = 2 (lat/lon or planar xy), ``grid`` K = 2 (row, col),
                                               ``none`` / ``learned`` K = 0 (``learned``: the model keeps
                                               a trained table indexed by ``node_index``)
history_tod/_dow    int32 ``[L]``              step of the day (0 .. steps_per_day - 1) / day of week (Mon = 0)
target_tod/_dow     int32 ``[P]``              same for the horizon (zeros with ``no_calendar``; an unknown
                                               calendar is refused, never assumed)
steps_per_day       int32                      steps in one day (0 when the step is unknown)
==================  =========================  =================================================================

With ``DataConfig.rationale_teacher`` (AirGPT) two string columns more, ``rationale`` and ``rationale_source``, and
the answers of some training samples start with the rationale (:mod:`st_instruct.samples.rationale_samples`).

Integer columns are stored as int32 (``window_start`` int64); ``with_format("numpy")`` returns integer arrays as
int64, as ``datasets`` does for every integer column. Several datasets are concatenated per split (each keeps its
own scaler, hence the per-sample scaler columns). Samples are ordered by dataset (config order), then window, then
node.

Scaling (``DataConfig.scaling``): ``train`` z-scores every sample with its dataset's train-split statistics per
channel (:class:`~st_instruct.data.windows.StandardScaler`). ``window`` (strict zero-shot: no value outside the
input window is read) z-scores each sample with the statistics of its own history window
(:func:`~st_instruct.data.windows.window_statistics`): per (node, channel) for node samples, per channel over the
sample's nodes for graph samples (``scaler_mean`` holds one value per channel); its target is scaled by the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import xxhash
from datasets.table import MemoryMappedTable

from st_instruct.configs import DataConfig
from st_instruct.data.graph import grid_coordinates, laplacian_eigenvectors
from st_instruct.data.loaders import load_series
from st_instruct.data.missing import MissingPattern, forward_fill, hide
from st_instruct.data.patches import neighbour_patches, partition_nodes
from st_instruct.data.registry import cache_dir
from st_instruct.data.stdata import STData, STDataError
from st_instruct.data.windows import SPLITS, STWindows, build_windows, window_statistics
from st_instruct.outputs import clean_stale_siblings, staged_output
from st_instruct.samples.prompts import (
    PeriodText,
    PromptTemplate,
    dataset_context,
    format_values,
    load_template,
    node_context,
)
from st_instruct.samples.rationale_samples import add_rationales
from st_instruct.samples.rationales.teachers import AnalyticTeacher
from st_instruct.samples.st_tokens import ST_HIS, ST_PRE
from st_instruct.samples.tokenize import tokenize_dataset
from st_instruct.shipped import TemplateError
from st_instruct.tasks import Task, get_task

# Bump when the sample columns or their meaning change: it is part of every fingerprint.
BUILDER_VERSION = 1
CHUNK_SAMPLES = 4096  # samples rendered per Arrow record batch
# the template (and its checksum) enter the fingerprint as the template's text instead
# image_* choose what the vision collator renders per batch, not the built samples
_NOT_FINGERPRINTED = ("dataset_dir", "dataset_cache_dir", "streaming", "template", "template_sha256", "image_kind",
                      "image_size", "image_panels", "image_channel")


def sample_features() -> datasets.Features:
    """The :class:`datasets.Features` of a sample (module docstring)."""
    f32, i32 = datasets.Value("float32"), datasets.Value("int32")
    boolean, string = datasets.Value("bool"), datasets.Value("string")

    def nested(value: datasets.Value, depth: int) -> Any:
        for _ in range(depth):
            value = datasets.List(value)
        return value

    return datasets.Features({
        "sample_id": string, "dataset": string, "city": string, "split": string,
        "window_start": datasets.Value("int64"), "time_start": string, "template": string,
        "messages": datasets.List({"role": string, "content": string}),
        "node_index": nested(i32, 1),
        "history": nested(f32, 3), "history_mask": nested(boolean, 3),
        "target": nested(f32, 3), "target_mask": nested(boolean, 3),
        "scaler_mean": nested(f32, 1), "scaler_std": nested(f32, 1),
        "coords": nested(f32, 2),
        "history_tod": nested(i32, 1), "history_dow": nested(i32, 1),
        "target_tod": nested(i32, 1), "target_dow": nested(i32, 1),
        "steps_per_day": i32,
    })


# ---------------------------------------------------------------------------------------------------- sources
def _subsample(count: int, sample: float | None, seed: tuple[int, ...]) -> np.ndarray:
    """Ascending indices of ``sample`` (fraction <= 1 or count > 1) out of ``count``, drawn with ``seed``."""
    if sample is None or count == 0:
        return np.arange(count)
    keep = max(1, int(round(sample * count))) if sample <= 1 else min(int(sample), count)
    if keep >= count:
        return np.arange(count)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=keep, replace=False))


def channel_identity(channels: list[str], dim: int) -> np.ndarray:
    """``[N, dim]`` float32 code of each node's channel, keyed by its text: a fixed standard-normal vector (scaled
    by ``1/sqrt(dim)``) seeded by the SHA-256 of the name, lower-cased and stripped. The encoder's linear map of
    the coordinates turns the codes of the channels it trained on into learned embeddings (``dim`` at least the
    number of names makes them independent); a name never seen still gets its own code, from its text alone, so
    ``"PM2.5"`` is the same channel in every dataset and on every machine."""
    codes = {}
    for name in dict.fromkeys(channels):
        seed = int.from_bytes(hashlib.sha256(name.strip().lower().encode()).digest()[:8], "little")
        codes[name] = np.random.default_rng(seed).standard_normal(dim) / np.sqrt(dim)
    return np.array([codes[name] for name in channels], dtype=np.float32).reshape(len(channels), dim)


def node_coordinates(data: STData, kind: str, dim: int, identity_dim: int = 0) -> np.ndarray:
    """``[N, K]`` float32 coordinates of every node (see the ``coords`` column in the module docstring); with
    ``identity_dim`` the :func:`channel_identity` of each node's channel is appended (``K + identity_dim``): the
    node's channel in a channel-independent view (:meth:`STData.series_view`), else the dataset's one channel."""
    coords = _place_coordinates(data, kind, dim)
    if identity_dim == 0:
        return coords
    if data.node_channels is None and data.num_channels != 1:
        raise STDataError(f"dataset {data.name!r}: a channel identity code is one per node, but the dataset has "
                          f"{data.num_channels} channels per node; read it channel-independently")
    channels = data.node_channels or [data.channels[0]] * data.num_nodes
    return np.concatenate([coords, channel_identity(channels, identity_dim)], axis=1)


def sample_coordinates(data: STData, config: DataConfig) -> np.ndarray:
    """``[N, K]`` coordinates of every node of ``data`` as the recipe ``config`` asks (:func:`node_coordinates`;
    the channel code with ``channel_independent``)."""
    identity = config.channel_identity_dim if config.channel_independent else 0
    return node_coordinates(data, config.coordinates, config.coordinate_dim, identity)


def _place_coordinates(data: STData, kind: str, dim: int) -> np.ndarray:
    """``[N, K]`` float32 coordinates of every node's place (:func:`node_coordinates` without the channel)."""
    N = data.num_nodes
    if kind == "laplacian":
        adj = data.adjacency  # dense, or scipy sparse (kept sparse for a large graph)
        return np.zeros((N, dim), np.float32) if adj is None else laplacian_eigenvectors(adj, dim)
    if kind == "geo":
        if data.coords is None or data.coord_kind not in ("latlon", "xy"):
            raise STDataError(f"dataset {data.name!r}: coordinates='geo' needs lat/lon or xy node coordinates, "
                              f"the dataset has {data.coord_kind or 'none'}; use coordinates: laplacian, grid "
                              "or none")
        return data.coords.astype(np.float32)
    if kind == "grid":
        if data.grid_shape is None:
            raise STDataError(f"dataset {data.name!r}: coordinates='grid' needs a grid dataset (grid_shape); use "
                              "coordinates: laplacian, geo or none")
        return grid_coordinates(*data.grid_shape).astype(np.float32)
    if kind in ("none", "learned"):  # learned: the model's own table, indexed by node_index
        return np.zeros((N, 0), np.float32)
    raise ValueError(f"coordinates must be laplacian, geo, grid, learned or none, found {kind!r}")


@dataclass
class SourcePlan:
    """One dataset, windowed and sub-sampled, with everything precomputed that every sample reuses.

    Attributes:
        windows: the dataset's windows (scaler fitted on its train split).
        nodes: ``[N']`` kept node indices, ascending.
        window_index: ``{split: [B_s]}`` kept windows (indices into ``windows.starts[split]``), ascending.
        coords: ``[N', K]`` coordinates of the kept nodes.
        nodes_context: template context of each kept node.
        base_context: template variables shared by all samples of the dataset.
        period: readable period text per step.
        scaled / observed: ``[T, N', C]`` scaled values and masks of the kept nodes.
        value_text: ``[T, N', C]`` rounded original values as text (``"NA"`` missing), only with values_in_text.
        iso: ``[T]`` ISO timestamps (``""`` without a calendar).
        task / seed: the recipe's task (:mod:`st_instruct.tasks`: which steps a sample reads and predicts, which
            entries it trains and scores) and the seed of what it draws.
        hidden: ``[T, N', C]`` the observed entries the recipe's ``missing_pattern`` hides from the model (drawn once
            over the whole series with the seed and the dataset's name, so overlapping windows agree, as in SPIN's
            protocol); all False without one.
        values: ``[T, N', C]`` original values of the kept nodes (0 where missing), only with ``scaling: window``.
        history_fill: the recipe's ``history_fill``: what the history reads where an entry is hidden or missing
            (:func:`history_reading`).
        patches / patch_context: with ``graph_patch_size``, the patches (positions into ``nodes``,
            :func:`~st_instruct.data.patches.partition_nodes`) and per patch the nearest other patches ``[Q, k]``
            (-1: none) whose summaries go before its nodes; :func:`patch_plan` makes one patch's plan.
        patch / forecast: in a patch's plan, its number and ``[N']`` which of its nodes are forecast (False: a
            summary token, ``node_index`` -1, whose target mask is all False).
    """

    data: STData
    windows: STWindows
    nodes: np.ndarray
    window_index: dict[str, np.ndarray]
    coords: np.ndarray
    nodes_context: list[dict[str, Any]]
    base_context: dict[str, Any]
    period: PeriodText
    scaled: np.ndarray
    observed: np.ndarray
    value_text: np.ndarray | None
    iso: np.ndarray
    task: Task
    seed: int
    hidden: np.ndarray
    values: np.ndarray | None = None
    history_fill: str = "none"
    patches: list[np.ndarray] | None = None
    patch_context: np.ndarray | None = None
    patch: int | None = None
    forecast: np.ndarray | None = None


def plan_source(data: STData, config: DataConfig, windows: STWindows | None = None) -> SourcePlan:
    """Window ``data`` per ``config``, pick its nodes and windows (seeded by ``sample_seed`` and the dataset name).
    ``windows``: already cut windows of ``data`` instead (a forecast's, :func:`~st_instruct.data.windows.windows_at`).
    """
    if windows is None:
        windows = build_windows(data, config.history, config.horizon, config.split, config.stride)
    name_seed = zlib.crc32(data.name.encode())
    nodes = _subsample(data.num_nodes, config.node_sample, (config.sample_seed, name_seed, 0))
    window_index = {split: _subsample(windows.num_windows(split), config.window_sample,
                                      (config.sample_seed, name_seed, 1 + i)) for i, split in enumerate(SPLITS)}
    timestamps = data.time_index()
    base = dataset_context(data, config.history, config.horizon, config.values_in_text)
    base.update(granularity=config.granularity, dataset_num_nodes=data.num_nodes,
                num_nodes=len(nodes) if config.granularity == "graph" else 1,
                missing_text=MissingPattern.parse(config.missing_pattern).describe() if config.missing_pattern else "")
    observed = windows.observed[:, nodes]
    hidden = series_hidden(windows, config.missing_pattern, config.sample_seed)[:, nodes]
    value_text = None
    if config.values_in_text:  # the text says what the arrays hold (history_reading)
        shown, readable = data.values[:, nodes], observed & ~hidden
        if config.history_fill == "forward":
            shown, readable = forward_fill(shown, readable)
        value_text = format_values(shown, readable, config.values_decimals)
    if timestamps is None:
        iso = np.full(data.num_steps, "", dtype=object)
    else:  # local wall-clock time, like the prompt text
        wall = timestamps.tz_localize(None) if timestamps.tz is not None else timestamps
        iso = np.datetime_as_string(wall.to_numpy(), unit="s").astype(object)
    return SourcePlan(
        data=data, windows=windows, nodes=nodes, window_index=window_index,
        coords=sample_coordinates(data, config)[nodes],
        nodes_context=[node_context(data, int(i)) for i in nodes], base_context=base,
        period=PeriodText(timestamps, data.freq), scaled=np.ascontiguousarray(windows.scaled[:, nodes]),
        observed=np.ascontiguousarray(observed), value_text=value_text, iso=iso, task=get_task(config.task),
        seed=config.sample_seed, hidden=hidden,
        values=np.nan_to_num(data.values[:, nodes]).astype(np.float32) if config.scaling == "window" else None,
        history_fill=config.history_fill, **_patching(data, nodes, config))


def _patching(data: STData, nodes: np.ndarray, config: DataConfig) -> dict[str, Any]:
    """``{patches, patch_context}`` of :class:`SourcePlan` for ``config.graph_patch_size`` (empty without it):
    partitioned on the dataset's coordinates (the graph's without them), neighbours by the same coordinates (the
    sample coordinates without them)."""
    if config.graph_patch_size is None:
        return {}
    where = None if data.coords is None else np.asarray(data.coords, dtype=np.float64)[nodes]
    adjacency = None if data.adjacency is None else data.adjacency[nodes][:, nodes]
    patches = partition_nodes(where, adjacency, config.graph_patch_size)
    if where is None:
        where = sample_coordinates(data, config)[nodes]
    context = (neighbour_patches(patches, where, config.graph_patch_context) if config.graph_patch_context
               else np.zeros((len(patches), 0), dtype=np.int64))
    return {"patches": patches, "patch_context": context}


def patch_plan(plan: SourcePlan, patch: int) -> SourcePlan:
    """The plan of patch ``patch`` of ``plan``: a summary token per neighbouring patch (the mean of its nodes'
    readable scaled values per step and channel, read where any is; their mean coordinates; ``node_index`` -1; never
    forecast), then the patch's nodes, ascending."""
    members = plan.patches[patch]
    context = [int(c) for c in plan.patch_context[patch] if c >= 0]
    readable = plan.observed & ~plan.hidden

    def summaries(values: np.ndarray) -> np.ndarray:  # [T, k, C] over the context patches
        out = [(values[:, plan.patches[c]] * readable[:, plan.patches[c]]).sum(1)
               / np.maximum(readable[:, plan.patches[c]].sum(1), 1) for c in context]
        return np.stack(out, axis=1).astype(values.dtype) if out else values[:, :0]

    def joined(values: np.ndarray | None, summary: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else np.concatenate([summary, values[:, members]], axis=1)

    seen = np.stack([readable[:, plan.patches[c]].any(1) for c in context], axis=1) if context else \
        readable[:, :0]
    coords = np.concatenate([np.stack([plan.coords[plan.patches[c]].mean(0) for c in context])
                             if context else plan.coords[:0], plan.coords[members]])
    facets = plan.nodes_context[int(members[0])]["facets"]
    labels = [{"index": -1, "name": "", "label": f"area {c}", "description": "", "location": "", "facets": facets}
              for c in context]
    return dataclasses.replace(
        plan, nodes=np.concatenate([np.full(len(context), -1), plan.nodes[members]]), coords=coords.astype(np.float32),
        nodes_context=labels + [plan.nodes_context[int(j)] for j in members],
        base_context={**plan.base_context, "num_nodes": len(context) + len(members)},
        scaled=joined(plan.scaled, summaries(plan.scaled)), observed=joined(plan.observed, seen),
        hidden=joined(plan.hidden, np.zeros_like(seen)),
        values=joined(plan.values, None if plan.values is None else summaries(plan.values)),
        patches=None, patch_context=None, patch=patch,
        forecast=np.concatenate([np.zeros(len(context), bool), np.ones(len(members), bool)]))


def window_samples(plan: SourcePlan, split: str, window_index: np.ndarray, template: PromptTemplate,
                   granularity: str) -> Iterator[dict[str, Any]]:
    """:func:`sample_columns` of windows ``window_index``: once, or with patches once per patch (each of the
    windows' samples of that patch)."""
    if plan.patches is None:
        yield sample_columns(plan, split, window_index, template, granularity)
        return
    for patch in range(len(plan.patches)):
        yield sample_columns(patch_plan(plan, patch), split, window_index, template, granularity)


def history_reading(plan: SourcePlan, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(mask, scaled, values)`` at the input ``steps`` [B, L]: what the model reads there, each ``[B, L, N', C]``
    (``values`` None without ``scaling: window``). ``history_fill: none``: the observed entries not hidden, the
    others flagged off (their values are the caller's to zero); ``forward``: every such entry takes its series' last
    readable value at or before its step (:func:`~st_instruct.data.missing.forward_fill`, computed on the series up
    to the last step read, so nothing after a window's history is read) and counts as read."""
    readable = plan.observed & ~plan.hidden
    if plan.history_fill == "none":
        return readable[steps], plan.scaled[steps], None if plan.values is None else plan.values[steps]
    end = int(steps.max()) + 1
    scaled, available = forward_fill(plan.scaled[:end], readable[:end])
    values = None if plan.values is None else forward_fill(plan.values[:end], readable[:end])[0][steps]
    return available[steps], scaled[steps], values


def series_hidden(windows: STWindows, missing_pattern: str | None, seed: int) -> np.ndarray:
    """``[T, N, C]`` the observed entries of the windowed dataset that ``missing_pattern`` hides (all False for
    None), drawn over the whole series and every node with ``seed`` and the dataset's name: the builder's samples and
    the imputation baselines see the same gaps."""
    if missing_pattern is None:
        return np.zeros_like(windows.observed)
    name_seed = zlib.crc32(windows.data.name.encode())
    return hide(windows.observed, MissingPattern.parse(missing_pattern), (seed, name_seed, 2))


# ---------------------------------------------------------------------------------------------------- samples
def _history_values(plan: SourcePlan, start: int, length: int, j: int) -> list[dict[str, str]]:
    """``[{channel, unit, text}]`` of kept node ``j`` over steps ``start .. start + length - 1``."""
    block = plan.value_text[start:start + length, j]
    return [{"channel": ch, "unit": unit, "text": ", ".join(block[:, c])}
            for c, (ch, unit) in enumerate(zip(plan.data.channels, plan.data.units, strict=True))]


def _window_messages(plan: SourcePlan, start: int, template: PromptTemplate, granularity: str,
                     ) -> list[list[dict[str, str]]]:
    """Chat messages of every sample of the window starting at ``start`` (one per node, or one for the graph)."""
    L, P = plan.windows.history, plan.windows.horizon
    context = dict(plan.base_context)
    targets = plan.task.target_steps(L, P)  # the horizon after the history, or (imputation) the history itself
    context.update(history_period=plan.period.period(start, L),
                   target_period=plan.period.period(start + int(targets[0]), len(targets)),
                   time_start=plan.iso[start], window_start=start)
    with_values = plan.value_text is not None
    if granularity == "graph":
        if with_values:
            nodes = [{**n, "history_values": _history_values(plan, start, L, j)}
                     for j, n in enumerate(plan.nodes_context)]
        else:
            nodes = [{**n, "history_values": []} for n in plan.nodes_context]
        context["nodes"] = nodes
        out = [template.render(context)]
        _check_slots(out[0], len(nodes), template, plan.data.name, start)
        return out
    out = []
    for j, node in enumerate(plan.nodes_context):
        context["node"] = {**node, "history_values": _history_values(plan, start, L, j) if with_values else []}
        out.append(template.render(context))
        _check_slots(out[-1], 1, template, plan.data.name, start)
    return out


def _check_slots(messages: list[dict[str, str]], nodes: int, template: PromptTemplate, dataset: str,
                 start: int) -> None:
    """One ``<st_his>`` per node in the prompt and one ``<st_pre>`` per node in the answer: the model's contract; or
    none in the answer at all (node-as-token, ``forecast_graph_tokens``: the head reads each node's ``<st_his>``)."""
    his = sum(m["content"].count(ST_HIS) for m in messages if m["role"] != "assistant")
    pre = sum(m["content"].count(ST_PRE) for m in messages if m["role"] == "assistant")
    if his != nodes or pre not in (0, nodes):
        raise TemplateError(
            f"prompt template {template.path} wrote {his} {ST_HIS} in the prompt and {pre} {ST_PRE} in the answer "
            f"for a sample of {nodes} node(s) ({dataset}, window at step {start}); it must write one {ST_HIS} per "
            f"node in the system/user turns and one {ST_PRE} per node in the assistant turn (or none: node-as-token)")


def sample_columns(plan: SourcePlan, split: str, window_index: np.ndarray, template: PromptTemplate,
                   granularity: str) -> dict[str, Any]:
    """Column arrays of the samples of windows ``window_index`` of ``split``: ``S = B * N'`` (node) or ``B``.

    Arrays come flat in sample order with their per-sample shape (``history`` ``[S, L, N', C]``, ...); strings
    and messages as Python lists.
    """
    w = plan.windows
    L, P, C = w.history, w.horizon, plan.data.num_channels
    starts = w.starts[split][window_index]
    B, n = len(starts), len(plan.nodes)
    hist = starts[:, None] + plan.task.input_steps(L, P)[None, :]
    fut = starts[:, None] + plan.task.target_steps(L, P)[None, :]
    history_mask, history_scaled, history_values = history_reading(plan, hist)
    arrays = {"history_mask": history_mask,  # [B, L, n, C]
              "target_mask": plan.task.target_mask(plan.observed[fut], plan.hidden[fut])}
    if plan.forecast is not None:  # a patch's summary tokens are read, never forecast
        arrays["target_mask"] = arrays["target_mask"] & plan.forecast[None, None, :, None]
    if plan.values is None:  # scaling: train
        arrays.update(history=np.where(history_mask, history_scaled, 0.0).astype(np.float32),
                      target=plan.scaled[fut])
        mean = np.broadcast_to(w.scaler.mean.astype(np.float32), (B * n if granularity == "node" else B, C))
        std = np.broadcast_to(w.scaler.std.astype(np.float32), mean.shape)
    else:  # scaling: window, statistics of each sample's history only
        window_mean, window_std = window_statistics(history_values, history_mask,
                                                    (1,) if granularity == "node" else (1, 2))  # [B, 1, n or 1, C]
        for key, read in (("history", history_values), ("target", plan.values[fut])):
            scaled = (read - window_mean) / window_std
            arrays[key] = np.where(arrays[f"{key}_mask"], scaled, 0.0).astype(np.float32)
        mean, std = window_mean[:, 0].reshape(-1, C), window_std[:, 0].reshape(-1, C)  # sample order: window, node
    calendar = {"history_tod": w.time_of_day[hist], "history_dow": w.day_of_week[hist],
                "target_tod": w.time_of_day[fut], "target_dow": w.day_of_week[fut]}
    messages = [m for s in starts.tolist() for m in _window_messages(plan, s, template, granularity)]
    name = plan.data.name
    if granularity == "node":
        S = B * n
        arrays = {k: v.transpose(0, 2, 1, 3).reshape(S, v.shape[1], 1, C) for k, v in arrays.items()}
        calendar = {k: np.repeat(v, n, axis=0) for k, v in calendar.items()}
        node_index = np.tile(plan.nodes, B).reshape(S, 1)
        coords = np.tile(plan.coords, (B, 1)).reshape(S, 1, -1)
        sample_starts = np.repeat(starts, n)
        sample_ids = [f"{name}/{split}/w{s:06d}/n{i:03d}" for s in starts.tolist() for i in plan.nodes.tolist()]
    else:
        S = B
        node_index = np.tile(plan.nodes, (B, 1))
        coords = np.broadcast_to(plan.coords, (B, *plan.coords.shape))
        sample_starts = starts
        part = "all" if plan.patch is None else f"p{plan.patch:04d}"
        sample_ids = [f"{name}/{split}/w{s:06d}/{part}" for s in starts.tolist()]
    columns: dict[str, Any] = {
        "sample_id": sample_ids, "dataset": [name] * S, "city": [plan.data.city] * S, "split": [split] * S,
        "window_start": sample_starts.astype(np.int64), "time_start": plan.iso[sample_starts].tolist(),
        "template": [template.spec] * S,
        "messages": messages, "node_index": node_index.astype(np.int32), **arrays,
        "scaler_mean": mean, "scaler_std": std,
        "coords": coords.astype(np.float32, copy=False),
        **{k: v.astype(np.int32) for k, v in calendar.items()},
        "steps_per_day": np.full(S, w.steps_per_day if w.data.freq is not None else 0, dtype=np.int32),
    }
    return columns


def _nested_list(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """``values [S, d1, ..., dk]`` -> an Arrow list<...list<x>> array of ``S`` rows, built from the flat buffer."""
    shape = values.shape
    array = pa.array(np.ascontiguousarray(values).reshape(-1), type=arrow_type)
    for level in range(len(shape) - 1, 0, -1):
        lists = int(np.prod(shape[:level]))
        offsets = np.arange(lists + 1, dtype=np.int32) * shape[level]
        array = pa.ListArray.from_arrays(pa.array(offsets), array)
    return array


def _messages_array(messages: list[list[dict[str, str]]]) -> pa.Array:
    counts = np.fromiter((len(m) for m in messages), dtype=np.int32, count=len(messages))
    flat = [turn for m in messages for turn in m]
    struct = pa.StructArray.from_arrays(
        [pa.array([t["role"] for t in flat], pa.string()), pa.array([t["content"] for t in flat], pa.string())],
        names=["role", "content"])
    offsets = np.zeros(len(messages) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), struct)


def record_batch(columns: dict[str, Any], schema: pa.Schema) -> pa.RecordBatch:
    """Arrow record batch of :func:`sample_columns` output, in ``schema`` (``sample_features().arrow_schema``)."""
    arrays = []
    for f in schema:
        value = columns[f.name]
        if f.name == "messages":
            arrays.append(_messages_array(value))
        elif isinstance(value, list):
            arrays.append(pa.array(value, f.type))
        elif value.ndim == 1:
            arrays.append(pa.array(value, f.type))
        else:
            leaf = f.type
            while pa.types.is_list(leaf):
                leaf = leaf.value_type
            arrays.append(_nested_list(value, leaf))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _chunks(plan: SourcePlan, split: str, granularity: str) -> Iterator[np.ndarray]:
    per_window = len(plan.nodes) if granularity == "node" else 1 if plan.patches is None else len(plan.patches)
    step = max(1, CHUNK_SAMPLES // per_window)
    index = plan.window_index[split]
    for lo in range(0, len(index), step):
        yield index[lo:lo + step]


def iter_split_batches(plans: list[SourcePlan], split: str, template: PromptTemplate, granularity: str,
                       ) -> Iterator[pa.RecordBatch]:
    """The samples of ``split`` of every source, in order, as Arrow record batches of at most about
    :data:`CHUNK_SAMPLES` samples, rendered one batch at a time."""
    schema = sample_features().arrow_schema
    for plan in plans:
        for chunk in _chunks(plan, split, granularity):
            for columns in window_samples(plan, split, chunk, template, granularity):
                yield record_batch(columns, schema)


def build_split_table(plans: list[SourcePlan], split: str, template: PromptTemplate, granularity: str) -> pa.Table:
    """All samples of ``split`` of every source, concatenated, as one Arrow table in memory: for small builds
    (few-shot sets, tests); :func:`build_dataset` streams the batches to disk instead (:func:`write_split`)."""
    return pa.Table.from_batches(list(iter_split_batches(plans, split, template, granularity)),
                                 schema=sample_features().arrow_schema)


def write_split(plans: list[SourcePlan], split: str, template: PromptTemplate, granularity: str,
                path: str | Path) -> int:
    """Write the samples of ``split`` to ``path`` as an Arrow IPC stream (the format of ``datasets``' cache files),
    one record batch at a time as it is rendered, so that memory holds one batch, not the split. Returns the number
    of samples written."""
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, sample_features().arrow_schema) as writer:
        for batch in iter_split_batches(plans, split, template, granularity):
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _split_dataset(plans: list[SourcePlan], split: str, template: PromptTemplate, granularity: str,
                   directory: Path, fingerprint: str) -> datasets.Dataset:
    """:func:`write_split` into ``directory/<split>.arrow``, opened as a memory-mapped ``datasets.Dataset`` with
    ``fingerprint`` (explicit: without one, ``datasets`` derives it from the file's path)."""
    path = directory / f"{split}.arrow"
    write_split(plans, split, template, granularity, path)
    return datasets.Dataset(MemoryMappedTable.from_file(str(path)), split=datasets.Split(split),
                            fingerprint=fingerprint)


def iter_split_samples(plans: list[SourcePlan], split: str, template: PromptTemplate, granularity: str,
                       ) -> Iterator[dict[str, Any]]:
    """Samples of ``split`` one by one, as dicts of the schema's columns (numpy arrays), in the Arrow build's order."""
    for plan in plans:
        for chunk in _chunks(plan, split, granularity):
            for columns in window_samples(plan, split, chunk, template, granularity):
                for i in range(len(columns["sample_id"])):
                    yield {key: value[i] for key, value in columns.items()}


# ---------------------------------------------------------------------------------------------------- fingerprint
def _data_hash(data: STData) -> str:
    """xxh3-128 of the values, clock, graph, coordinates and text of ``data``."""
    h = xxhash.xxh3_128()
    h.update(np.ascontiguousarray(data.values))
    meta = {k: getattr(data, k) for k in ("name", "city", "freq", "channels", "units", "node_names",
                                           "node_descriptions", "coord_kind", "null_value", "grid_shape",
                                           "description")}
    meta["start"] = None if data.start is None else str(data.start)
    for key in ("sensors", "node_units"):  # prompt text too; left out when unknown, so older fingerprints hold
        if getattr(data, key):
            meta[key] = getattr(data, key)
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    if data.timestamps is not None:
        h.update(np.ascontiguousarray(data.timestamps.to_numpy().astype("datetime64[ns]")))
    if data.coords is not None:
        h.update(np.ascontiguousarray(data.coords))
    if data.adjacency is not None:
        if sp.issparse(data.adjacency):
            adj = sp.csr_array(data.adjacency)
            for part in (adj.data, adj.indices, adj.indptr):
                h.update(np.ascontiguousarray(part))
        else:
            h.update(np.ascontiguousarray(data.adjacency))
    return h.hexdigest()


def _fingerprint(config: DataConfig, series: list[STData], template: PromptTemplate, teacher: Any) -> str:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_FINGERPRINTED}
    payload = {"builder_version": BUILDER_VERSION, "config": fields, "data": [_data_hash(d) for d in series],
               "template": hashlib.sha256(template.source.encode()).hexdigest()}
    if teacher is not None:  # the teacher's prompt version and settings decide the rationales
        payload["rationale_teacher"] = teacher.identity
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def dataset_fingerprint(config: DataConfig, teacher: Any = None) -> str:
    """Hex digest of what determines the built dataset: the config fields that matter, the data content (values,
    clock, graph, metadata), the template file text, the rationale teacher's identity and :data:`BUILDER_VERSION`.
    Loads the datasets to hash them."""
    return _fingerprint(config, load_series(config), load_template(config.template),
                        rationale_teacher(config, teacher))


def rationale_teacher(config: DataConfig, teacher: Any = None) -> Any:
    """The teacher that writes ``config``'s rationales: ``None`` without ``rationale_teacher``; ``teacher`` when
    given (it must be the one the key names); the analytic teacher for ``analytic``. A language-model teacher loads
    a model, which is the models layer's part: it is built by :func:`st_instruct.models.backbones.build_teacher`
    and passed in (``st-instruct train`` and ``build-data`` do)."""
    name = config.rationale_teacher
    if name == "none":
        return None
    if teacher is not None:
        if teacher.name not in (name, f"llm:{name}"):
            raise ValueError(f"rationale_teacher is {name!r}, but the teacher given is {teacher.name!r}")
        return teacher
    if name == "analytic":
        return AnalyticTeacher()
    raise ValueError(f"rationale_teacher: {name} is a language model; build it with "
                     "st_instruct.models.backbones.build_teacher and pass it as teacher= (st-instruct train and "
                     "build-data do)")


def built_cache_root(config: DataConfig) -> Path:
    """``config.dataset_cache_dir``, else :func:`~st_instruct.data.registry.cache_dir` ``("built")``."""
    if config.dataset_cache_dir:
        return Path(config.dataset_cache_dir).expanduser()
    return cache_dir("built")


# ---------------------------------------------------------------------------------------------------- build
def _complete_build(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file()


def _generate_split(config_json: str, split: str) -> Iterator[dict[str, Any]]:
    """Generator of a streaming split: loads and windows the data when iteration starts, from a JSON config, so the
    generator is cheap to hash and to pickle (DataLoader workers) and holds no data until it runs."""
    config = DataConfig(**json.loads(config_json))
    plans = [plan_source(data, config) for data in load_series(config)]
    yield from iter_split_samples(plans, split, load_template(config.template), config.granularity)


def _build_into(partial: Path, plans: list[SourcePlan], series: list[STData], config: DataConfig,
                template: PromptTemplate, teacher: Any, fingerprint: str) -> None:
    """Build every split into the staged cache folder ``partial`` (``save_to_disk`` layout) without holding a split:
    each split's record batches are streamed to an Arrow file in ``partial/.stream`` (:func:`write_split`), which is
    memory-mapped, given the rationales, saved beside it and removed."""
    scratch = partial / ".stream"  # inside the staged folder: a killed build leaves nothing elsewhere
    scratch.mkdir()
    # An explicit fingerprint: without one, datasets would derive it from the scratch file's path.
    built = datasets.DatasetDict({split: _split_dataset(plans, split, template, config.granularity, scratch,
                                                        f"{fingerprint}-{split}") for split in SPLITS})
    if teacher is not None:  # beside the built datasets (a test's dataset_cache_dir keeps its rationales too)
        built = add_rationales(built, series, config, teacher, built_cache_root(config).parent / "rationales")
    built.save_to_disk(str(partial))
    del built  # unmaps the scratch files
    shutil.rmtree(scratch)


def build_dataset(config: DataConfig, tokenizer: Any = None, teacher: Any = None,
                  ) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Build (or load from the fingerprint cache) the instruction dataset described by ``config``.

    Returns a ``DatasetDict`` with ``train`` / ``validation`` / ``test`` (schema in the module docstring), read
    from ``<cache root>/<fingerprint>`` (:func:`built_cache_root`), where a first build saves it. With
    ``config.streaming`` an ``IterableDatasetDict`` of the same samples, generated lazily (the data are loaded
    when iteration starts; rendered samples never pile up in memory) and not cached. With a
    ``tokenizer``, ``st_instruct.samples.tokenize.tokenize_dataset`` adds the token columns (after the cache).
    ``teacher`` writes the rationales of a recipe with ``rationale_teacher`` (:func:`rationale_teacher`).
    """
    teacher = rationale_teacher(config, teacher)
    template = load_template(config.template)
    if config.streaming:
        config_json = json.dumps(dataclasses.asdict(config))
        result: Any = datasets.IterableDatasetDict({split: datasets.IterableDataset.from_generator(
            _generate_split, features=sample_features(), gen_kwargs={"config_json": config_json, "split": split})
            for split in SPLITS})
    else:
        series = load_series(config)
        fingerprint = _fingerprint(config, series, template, teacher)
        path = built_cache_root(config) / fingerprint
        clean_stale_siblings(path.parent)  # partial copies of killed builds, of any fingerprint
        if not _complete_build(path):
            plans = [plan_source(data, config) for data in series]
            # one rename into place; a complete copy another process (rank) saved meanwhile is kept, as it may be
            # loading it right now; a broken leftover is replaced
            with staged_output(path, keep=_complete_build) as partial:
                _build_into(partial, plans, series, config, template, teacher, fingerprint)
        result = datasets.load_from_disk(str(path))
    if tokenizer is not None:
        result = tokenize_dataset(result, tokenizer, max_length=None)
    return result


def push_dataset(dataset_dict: datasets.DatasetDict, repo_id: str, token: str | None = None,
                 private: bool | None = None) -> None:
    """Upload a built dataset to the Hugging Face Hub (``DatasetDict.push_to_hub``)."""
    dataset_dict.push_to_hub(repo_id, token=token, private=private)
