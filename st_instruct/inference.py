"""Use a trained forecaster on new data: ``load_forecaster(DIR_OR_REPO_ID)``, then ``.forecast(history, timestamps)``.

    from st_instruct import load_forecaster

    forecaster = load_forecaster("outputs/demo_sft")          # a folder, or a Hub repo id (downloaded and cached)
    result = forecaster.forecast(history, timestamps)          # history [L', N, C] raw values, or a DataFrame
    result.values                                              # [W, P, N, C] in the data's own units
    result.to_frame()                                          # a row per (window, time, node), a column per channel

A forecast reads what evaluation reads: the recipe's prompt, windowing and coordinates, and -- from the folder's data
profile (:mod:`st_instruct.data.profile`) -- the training dataset's name, city, nodes, graph and, for ``scaling:
train``, its train-split statistics. An input with the training dataset's nodes and channels is that dataset's new
data: whatever it does not say itself (node names, coordinates, adjacency, units, city) comes from the profile, so the
prompt is the one the model was trained and evaluated on, and the forecast of a test window equals the one
``st-instruct evaluate`` scored, bit for bit (a test checks it). An input of another node set is forecast zero-shot: it
brings its own metadata, and every window is z-scored with its own history statistics (``scaling: window``, evaluate's
zero-shot protocol); ``Forecast.scaling`` says which applied.

Each window's ``history`` steps end where its forecast starts. By default only the last window is forecast (the
``horizon`` steps after the input); ``every_window=True`` forecasts every window of the input with the recipe's stride
-- the last ``horizon`` of them reach past its end. The same call serves every model kind: text forecasters, VLM
forecasters (images rendered from the input as in training, coloured on the training range) and the no-LLM control in
one forward pass; a rationale-trained forecaster with ``rationale=True`` also returns the text it writes.

New values are checked where they enter (:mod:`st_instruct.data.input_checks`): an irregular clock, unknown channel
names and values far outside the training range are refused naming the culprit, named channels are put in the model's
order, and a window whose history is mostly unobserved gets no forecast (NaN, listed in ``Forecast.withheld``).
``Forecast.routing`` says which profile was used, or why the input was forecast zero-shot."""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from st_instruct.console import datasets_progress_bars
from st_instruct.data.files import infer_freq
from st_instruct.data.input_checks import (
    DEFAULT_MIN_OBSERVED,
    check_timestamps,
    check_value_range,
    observed_fractions,
    order_channels,
    regular_clock,
)
from st_instruct.data.profile import profile_adjacency, profile_coords, read_data_profiles
from st_instruct.data.stdata import STData, STDataError
from st_instruct.data.windows import StandardScaler, windows_at
from st_instruct.evaluation.predict import scatter_predictions
from st_instruct.model_dir import trained_data_config
from st_instruct.models.collators import build_collator
from st_instruct.models.rationale import generate_forecast
from st_instruct.models.saving import download_model, read_backbone_source
from st_instruct.models.saving import load_forecaster as load_saved
from st_instruct.outputs import check_output_file, staged_file
from st_instruct.protocols.evaluate import require_rationale_training
from st_instruct.samples.builder import plan_source, record_batch, sample_features, window_samples
from st_instruct.samples.prompts import load_template
from st_instruct.samples.tokenize import tokenize_dataset

FORECAST_SUFFIXES = (".csv", ".npz")
SCALING_TEXT = {"train": "values z-scored with its train-split statistics",
                "window": "each window z-scored with its own history's statistics"}


@dataclass
class ForecastInputs:
    """What the collator of a forecast reads besides the samples: the input with all its channels (AirGPT's wind
    graph reads wind channels the model may not forecast), with the model's channels (not as series: UniST's
    priors), its windows and the training colour ranges (VLM)."""

    full_data: STData
    model_data: STData
    windows: Any
    image_value_ranges: dict[str, tuple[float, float]]


@dataclass
class Forecast:
    """Forecasts of ``W`` windows.

    Attributes:
        values: ``[W, P, N, C]`` float32 in the data's own units.
        times: ``[W, P]`` time of every forecast step (``datetime64``; the step index without a calendar).
        issued: ``[W]`` time (or step index) of each window's last history step.
        window_starts: ``[W]`` index of each window's first history step in the input.
        node_names / channels / units: one per node / channel.
        scaling: ``train`` (the training dataset's statistics) or ``window`` (each window's own history).
        profile: the training dataset whose profile completed the input, or ``None`` (a zero-shot input).
        routing: one sentence: which profile completed the input and why, or why it was forecast zero-shot.
        observed: ``[W]`` the share of each window's history that was observed.
        withheld: indices of the windows not forecast (their ``values`` NaN): less than ``min_observed`` of their
            history observed.
        rationales: with ``rationale=True``, one ``{"window", "node", "text"}`` per forecast sample (``node`` is
            ``None`` for a graph-level recipe, whose one sample covers every node).
    """

    values: np.ndarray
    times: np.ndarray
    issued: np.ndarray
    window_starts: np.ndarray
    node_names: list[str]
    channels: list[str]
    units: list[str]
    scaling: str
    profile: str | None
    routing: str
    observed: np.ndarray
    withheld: list[int]
    min_observed: float
    rationales: list[dict[str, Any]] | None = None

    def to_frame(self) -> pd.DataFrame:
        """Long table: columns ``window``, ``issued``, ``time``, ``step`` (1 .. P), ``node`` and one per channel."""
        W, P, N, C = self.values.shape
        frame = pd.DataFrame({
            "window": np.repeat(np.arange(W), P * N),
            "issued": np.repeat(self.issued, P * N),
            "time": np.repeat(self.times.reshape(-1), N),
            "step": np.tile(np.repeat(np.arange(1, P + 1), N), W),
            "node": np.tile(np.asarray(self.node_names, dtype=object), W * P),
        })
        for c, name in enumerate(self.channels):
            frame[name] = self.values[..., c].reshape(-1)
        return frame

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``.csv`` (:meth:`to_frame`) or ``.npz`` (``values``, ``times`` / ``issued`` as ISO text or step
        indices, ``window_starts``, ``node_names``, ``channels``, ``units``, ``scaling``, ``observed``,
        ``withheld``); returns the path. Staged (:func:`~st_instruct.outputs.staged_file`): an existing file is
        refused unless ``overwrite``, and is replaced only once the new one is complete."""
        def text(times: np.ndarray) -> np.ndarray:
            return np.datetime_as_string(times, unit="s") if np.issubdtype(times.dtype, np.datetime64) else times

        path = check_forecast_output(path, overwrite)
        with staged_file(path, overwrite) as staged:
            if path.suffix == ".csv":
                self.to_frame().to_csv(staged, index=False)
            else:
                with open(staged, "wb") as file:  # a file object: np.savez appends .npz to a name without it
                    np.savez(file, values=self.values, times=text(self.times), issued=text(self.issued),
                             window_starts=self.window_starts, node_names=np.asarray(self.node_names),
                             channels=np.asarray(self.channels), units=np.asarray(self.units),
                             scaling=np.asarray(self.scaling), observed=self.observed,
                             withheld=np.asarray(self.withheld, dtype=np.int64))
        return path


def check_forecast_output(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` if a forecast can be written there (``.csv`` or ``.npz``; :func:`~st_instruct.outputs.
    check_output_file`), checked before any slow work; else one error naming it."""
    path = Path(path)
    if path.suffix not in FORECAST_SUFFIXES:
        raise ValueError(f"--output {path}: the forecast is written as .csv or .npz, not "
                         f"{path.suffix or 'a file without extension'}")
    return check_output_file(path, overwrite)


@dataclass
class Imputed:
    """A series with its gaps filled by an imputation model (:meth:`Forecaster.impute_data`).

    Attributes:
        values: ``[T, N, C]`` the input in its own units, every observed value as it was read (bit for bit), the
            gaps (NaN or the null value) filled -- except those of windows with nothing observed (NaN still).
        filled: ``[T, N, C]`` bool, the entries the model filled.
        missing: ``[T, N, C]`` bool, the input's gaps (NaN, or its null value).
        unfilled_windows: start steps of the windows left as they were: nothing observed in them to read.
        times: ``[T]`` timestamps (``datetime64``), or None without a calendar.
        node_names / channels / units: one per node / channel; routing: as :attr:`Forecast.routing`.
        squeeze: the input was ``[T, N]`` (one channel): written back so.
    """

    values: np.ndarray
    filled: np.ndarray
    missing: np.ndarray
    unfilled_windows: list[int]
    times: np.ndarray | None
    node_names: list[str]
    channels: list[str]
    units: list[str]
    routing: str
    squeeze: bool = False

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the filled series in the input's layout: ``.npz`` (``data`` ``[T, N(, C)]``, ``filled``, the node,
        channel and unit names and ISO ``times``) or ``.csv`` (one channel: a time column if the input had one, a
        column per node). Staged like :meth:`Forecast.save`."""
        path = check_forecast_output(path, overwrite)
        values, filled = self.values, self.filled
        if self.squeeze:
            values, filled = values[..., 0], filled[..., 0]
        if path.suffix == ".csv" and values.ndim == 3:
            raise ValueError(f"--output {path}: a .csv holds one channel per node, the series has "
                             f"{len(self.channels)} ({', '.join(self.channels)}); write .npz")
        with staged_file(path, overwrite) as staged:
            if path.suffix == ".csv":
                frame = pd.DataFrame(values, columns=self.node_names)
                if self.times is not None:
                    frame.insert(0, "time", self.times)
                frame.to_csv(staged, index=False, na_rep="NaN")
            else:
                times = np.asarray([]) if self.times is None else np.datetime_as_string(self.times, unit="s")
                with open(staged, "wb") as file:
                    np.savez(file, data=values, filled=filled, times=times, node_names=np.asarray(self.node_names),
                             channels=np.asarray(self.channels), units=np.asarray(self.units))
        return path


class Forecaster:
    """A loaded forecaster (:func:`load_forecaster`): the model, its tokenizer, its recipe and its data profiles."""

    def __init__(self, directory: Path, model: Any, tokenizer: Any, data_config: Any, backbone_name: str) -> None:
        self.directory, self.model, self.tokenizer = directory, model, tokenizer
        self.data_config, self.backbone_name = data_config, backbone_name
        self._profiles: dict[str, dict[str, Any]] | None = None

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """``{training dataset: profile}`` (read once, when first needed)."""
        if self._profiles is None:
            self._profiles = read_data_profiles(self.directory, self.data_config, self.model.st_config.channels)
        return self._profiles

    @property
    def history(self) -> int:
        return self.data_config.history

    @property
    def horizon(self) -> int:
        return self.data_config.horizon

    def forecast(self, history: np.ndarray | pd.DataFrame, timestamps: Any = None, *, freq: str | None = None,
                 node_names: list[str] | None = None, coordinates: np.ndarray | None = None,
                 coord_kind: str | None = None, adjacency: Any = None, channels: list[str] | None = None,
                 units: list[str] | None = None, name: str | None = None, city: str | None = None,
                 every_window: bool = False, batch_size: int | None = None, rationale: bool = False,
                 max_new_tokens: int = 384, progress: bool = False, min_observed: float = DEFAULT_MIN_OBSERVED,
                 fill_gaps: bool = False) -> Forecast:
        """Forecast the ``horizon`` steps after ``history`` (module docstring).

        Args:
            history: ``[L', N, C]`` (or ``[L', N]``) raw values, NaN where missing, ``L' >= history``; or a
                DataFrame indexed by time whose columns are the nodes (one channel) or ``(node, channel)`` pairs.
            timestamps: ``[L']`` times of the steps (a DataFrame's ``DatetimeIndex`` by default); required by a
                forecaster trained with a calendar (its prompts and time features read them).
            freq: the step (``"1h"``), when ``timestamps`` cannot tell it (fewer than 3, or irregular); the
                training dataset's step by default.
            node_names / coordinates (``[N, 2]``, ``coord_kind`` ``latlon`` | ``xy`` | ``grid``) / adjacency
                (``[N, N]``) / channels / units / city: the input's own metadata; what is not given comes from the
                training dataset's profile when the input has its nodes and channels. Named channels are matched to
                the model's by name (and reordered); unnamed ones are read by position.
            name: the training dataset this input belongs to (default: the one whose node and channel counts it
                has); another name forecasts it zero-shot under that name.
            every_window: forecast every window of the input (stride of the recipe), not only the last.
            batch_size: samples per forward pass; ``None``: as many as a quarter of the free memory holds
                (:func:`memory_batch_size`).
            rationale: a rationale-trained (AirGPT) forecaster writes its rationale first and the forecast is read
                after it; the texts come back in ``Forecast.rationales``.
            min_observed: windows with a smaller share of their history observed get no forecast (NaN, listed in
                ``Forecast.withheld``); a window with nothing observed never does. All windows withheld: an error.
            fill_gaps: insert steps missing from ``timestamps`` as unobserved instead of refusing the input.
        """
        values, timestamps, frame_nodes, frame_channels = _history_array(history, timestamps)
        if timestamps is not None:
            timestamps = check_timestamps(timestamps)
            freq = freq or infer_freq(timestamps)
        data = STData(values=values, name=name or "input", city=city or "", freq=freq,
                      timestamps=timestamps,
                      no_calendar=timestamps is None,
                      channels=list(channels or frame_channels or []), units=list(units or []),
                      node_names=list(node_names or frame_nodes) if (node_names or frame_nodes) else None,
                      coords=coordinates, coord_kind=coord_kind if coordinates is not None else None,
                      adjacency=adjacency)
        return self.forecast_data(data, every_window=every_window, batch_size=batch_size, rationale=rationale,
                                  max_new_tokens=max_new_tokens, progress=progress, profile_name=name,
                                  min_observed=min_observed, fill_gaps=fill_gaps)

    def forecast_data(self, data: STData, *, every_window: bool = False, batch_size: int | None = None,
                      rationale: bool = False, max_new_tokens: int = 384, progress: bool = False,
                      profile_name: str | None = None, min_observed: float = DEFAULT_MIN_OBSERVED,
                      fill_gaps: bool = False) -> Forecast:
        """:meth:`forecast` of an :class:`STData` (e.g. a file read by :func:`~st_instruct.data.loaders.get_dataset`,
        what ``st-instruct predict`` does). A field the input leaves at its default (channels ``ch0, ...``, empty
        units or city, no node names, coordinates or graph) is taken from the training dataset's profile when the
        input is that dataset's (:meth:`_match_profile`); what the input says is kept."""
        L, P = self.history, self.horizon
        if rationale:
            require_rationale_training(self.directory, self.data_config, "--rationale (rationale=True)")
        if not 0 <= min_observed <= 1:
            raise ValueError(f"--min-observed (min_observed) is a share of the history, in [0, 1]; found "
                             f"{min_observed}")
        full, model_data, profile, scaling, scaler, routing = self._prepared(data, profile_name, fill_gaps)
        T = full.num_steps
        every = np.arange(0, T - L + 1, self.data_config.stride, dtype=np.int64) if every_window else \
            np.array([T - L], np.int64)
        observed = observed_fractions(model_data, every, L)
        kept = (observed >= min_observed) & (observed > 0)
        if not kept.any():
            raise STDataError(_nothing_to_forecast(observed, min_observed, L, every_window))
        starts = every[kept]
        extended_full = _extend(full, int(every[-1]) + L + P)
        extended = self._model_channels(extended_full)
        samples, collator, config = self._samples(extended_full, profile, scaling, scaler, starts, P, progress)
        universal = self.data_config.channel_independent  # every channel its own series, identified by its name
        texts: list[str] = []
        predict = None
        if rationale:
            def predict(batch: dict[str, Any]) -> Any:
                found, forecast = generate_forecast(self.model, self.tokenizer, batch, max_new_tokens=max_new_tokens)
                texts.extend(found)
                return forecast
        if batch_size is None:
            batch_size = memory_batch_size(self.model, max(len(ids) for ids in samples["input_ids"]))
        pred, _, _ = scatter_predictions(self.model, collator, samples, starts, extended.num_nodes, batch_size,
                                         predict=predict, progress=progress, desc="forecasting")
        if universal:  # series n * C + c back at node n, channel c of the input
            extended = self._model_channels(extended_full, as_series=False)
            pred = pred.reshape(len(pred), P, extended.num_nodes, extended.num_channels)
        values = np.full((len(every), *pred.shape[1:]), np.nan, dtype=np.float32)
        values[kept] = pred
        index = extended.time_index()
        steps = every[:, None] + L + np.arange(P)[None, :]
        times = steps if index is None else index.to_numpy()[steps]
        issued = every + L - 1 if index is None else index.to_numpy()[every + L - 1]
        rationales = None
        if rationale:
            nodes = [None] if config.granularity == "graph" else list(range(extended.num_nodes))
            forecast_windows = np.flatnonzero(kept)
            rationales = [{"window": int(w), "node": n, "text": text}
                          for (w, n), text in zip(((w, n) for w in forecast_windows for n in nodes), texts,
                                                  strict=True)]
        return Forecast(values=values, times=times, issued=issued, window_starts=every,
                        node_names=extended.node_names or [f"node {i}" for i in range(extended.num_nodes)],
                        channels=list(extended.channels), units=list(extended.units), scaling=scaling,
                        profile=None if profile is None else profile["name"], routing=routing, observed=observed,
                        withheld=np.flatnonzero(~kept).tolist(), min_observed=min_observed,
                        rationales=rationales)

    def impute_data(self, data: STData, *, batch_size: int = 16, progress: bool = False,
                    profile_name: str | None = None, fill_gaps: bool = False) -> Imputed:
        """Fill the gaps of ``data`` (NaN or its null value) with an imputation model (``task: imputation``; what
        ``st-instruct predict --task imputation`` does). The series is cut into windows of the model's ``history``
        (the last one ending at the last step), each read with every observed value and its gaps as they are (the
        recipe's missing pattern is a training device, nothing is hidden here), each gap filled from the first
        window holding it. Observed values come back bit for bit, in the input's layout (a ``[T, N]`` file's series
        is written back so). ``ValueError`` (one line) for a forecasting model or an input without a gap."""
        if self.data_config.task != "imputation":
            raise ValueError(f"the model in {self.directory} is trained for {self.data_config.task}, not imputation; "
                             "fill gaps with an imputation model (recipes/llm4hrs_impute.yaml), or forecast without "
                             "--task imputation")
        L = self.history
        squeeze = (data.meta or {}).get("file_rank") == 2
        full, model_data, profile, scaling, scaler, routing = self._prepared(data, profile_name, fill_gaps)
        gaps = ~full.mask()
        if not gaps.any():
            raise ValueError(f"the input {full.name!r} has no gap (no NaN, nor its null value "
                             f"{full.null_value!r}): nothing to fill, nothing written")
        T = full.num_steps
        every = np.unique(np.r_[np.arange(0, T - L + 1, L), T - L]).astype(np.int64)
        readable = observed_fractions(model_data, every, L) > 0
        starts = every[readable]
        samples, collator, _ = self._samples(full, profile, scaling, scaler, starts, 0, progress, hide=False)
        pred, _, _ = scatter_predictions(self.model, collator, samples, starts, model_data.num_nodes, batch_size,
                                         progress=progress, desc="imputing")
        pred = pred.reshape(len(starts), L, full.num_nodes, full.num_channels)  # universal: series back per node
        values = full.values.copy()
        filled = np.zeros_like(gaps)
        for start, window in zip(starts[::-1], pred[::-1], strict=True):  # the first window holding a step wins
            span = slice(int(start), int(start) + L)
            values[span] = np.where(gaps[span], window, values[span])
            filled[span] |= gaps[span]
        index = full.time_index()
        return Imputed(values=values, filled=filled, missing=gaps, unfilled_windows=every[~readable].tolist(),
                       times=None if index is None else index.to_numpy(),
                       node_names=full.node_names or [f"node {i}" for i in range(full.num_nodes)],
                       channels=list(full.channels), units=list(full.units), routing=routing,
                       squeeze=squeeze and full.num_channels == 1)

    def _prepared(self, data: STData, profile_name: str | None, fill_gaps: bool
                  ) -> tuple[STData, STData, dict[str, Any] | None, str, StandardScaler, str]:
        """``(full, model_data, profile, scaling, scaler, routing)`` of an input: completed from the training
        dataset's profile it matches (:meth:`_match_profile`), its channels in the model's order, its clock checked
        against the training calendar; ``model_data`` has only the model's channels; ``scaler`` the statistics a
        ``train``-scaled recipe reads (unused with window scaling)."""
        if data.num_steps < self.history:
            raise STDataError(f"the input has {data.num_steps} steps, but the model reads a history of "
                              f"{self.history} (input shape [T, N, C] = {list(data.values.shape)}); give at least "
                              f"{self.history} steps")
        profile, why = self._match_profile(data, profile_name)
        universal = self.data_config.channel_independent  # every channel its own series, identified by its name
        if not universal and not any(isinstance(c, str) for c in self.data_config.dataset_channels or []):
            # (a recipe selecting channels by name reads them by name, among others: AirGPT's wind channels)
            if profile is not None:
                data = order_channels(data, profile["channels"], f"the training dataset {profile['name']!r}")
            else:
                data = order_channels(data, self.training_channels, "the forecaster's training data")
        full = regular_clock(_complete(data, profile), fill_gaps)
        trained_calendar = any(p["freq"] is not None and not p["no_calendar"] for p in self.profiles.values())
        if trained_calendar and full.time_index() is None:
            raise STDataError(f"the forecaster in {self.directory} was trained with a calendar (its prompts name the "
                              "period, its ST features the time of day): give the input's timestamps (a DataFrame's "
                              "DatetimeIndex, timestamps=, or a file with a time column / --series-start and --freq)")
        check_value_range(full, profile)
        model_data = self._model_channels(full)
        scaling = self.data_config.scaling if profile is not None else "window"
        routing = (f"the profile of the training dataset {profile['name']!r} ({why}), {SCALING_TEXT[scaling]}"
                   if profile is not None else f"zero-shot, {SCALING_TEXT[scaling]}: {why}")
        if profile is not None and scaling == "train":
            scaler = StandardScaler(mean=np.asarray(profile["scaler_mean"], np.float32),
                                    std=np.asarray(profile["scaler_std"], np.float32))
        else:  # window scaling reads each window's own statistics; this scaler only fills the unused series
            scaler = StandardScaler(mean=np.zeros(model_data.num_channels, np.float32),
                                    std=np.ones(model_data.num_channels, np.float32))
        return full, model_data, profile, scaling, scaler, routing

    def _samples(self, extended_full: STData, profile: dict[str, Any] | None, scaling: str, scaler: StandardScaler,
                 starts: np.ndarray, horizon: int, progress: bool, hide: bool = True) -> tuple[Any, Any, Any]:
        """``(samples, collator, config)``: the tokenised samples of the windows at ``starts`` of
        ``extended_full`` (which holds every step they read), and the collator that batches them. ``hide`` False:
        no entry is hidden by the recipe's missing pattern (an imputation model filling a file's own gaps)."""
        extended = self._model_channels(extended_full)
        windows = windows_at(extended, self.history, horizon, starts, scaler, self.data_config.stride)
        config = self.data_config.for_one_dataset(extended.name, scaling=scaling, node_sample=None,
                                                  window_sample=None, streaming=False, rationale_teacher="none")
        plan = plan_source(extended, config, windows=windows)
        if not hide:
            plan = dataclasses.replace(plan, hidden=np.zeros_like(plan.hidden))
        template = load_template(config.template)
        schema = sample_features().arrow_schema
        batches = [record_batch(columns, schema) for lo in range(0, len(starts), 256)
                   for columns in window_samples(plan, "test", np.arange(lo, min(lo + 256, len(starts))), template,
                                                 config.granularity)]
        with datasets_progress_bars(progress):
            samples = tokenize_dataset(datasets.Dataset(pa.Table.from_batches(batches, schema=schema)),
                                       self.tokenizer)
        ranges = {}
        if profile is not None and profile.get("image_value_range") is not None:
            ranges[extended.name] = tuple(profile["image_value_range"])
        inputs = ForecastInputs(full_data=extended_full, model_data=self._model_channels(extended_full, False),
                                windows=windows, image_value_ranges=ranges)
        collator = build_collator(config, self.model, self.tokenizer, self.backbone_name, forecast_inputs=inputs)
        return samples, collator, config

    @property
    def training_channels(self) -> list[str] | None:
        """The channel names of the training datasets where they all have the same (``None``: they differ, and
        named channels of a zero-shot input cannot be matched by name)."""
        names = {tuple(profile["channels"]) for profile in self.profiles.values()}
        return list(names.pop()) if len(names) == 1 else None

    def _match_profile(self, data: STData, name: str | None) -> tuple[dict[str, Any] | None, str]:
        """``(profile, why)``: the training dataset profile ``data`` belongs to -- ``name``'s, else the one with its
        node count and channels (the model's, or all of the profile's) -- and why; ``None`` and the reason for a
        zero-shot input."""
        profiles = self.profiles
        shape = f"{data.num_nodes} nodes and {data.num_channels} channel(s)"
        if name is not None and name not in profiles:
            close = difflib.get_close_matches(name, list(profiles), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return None, f"{name!r} is not a training dataset of this forecaster ({', '.join(profiles)}){hint}"
        candidates = [profiles[name]] if name is not None else list(profiles.values())
        wanted = [c for c in self.data_config.dataset_channels or [] if isinstance(c, str)]
        fits = [p for p in candidates if p["num_nodes"] == data.num_nodes and (
            data.num_channels == len(p["channels"]) or (wanted and set(wanted) <= set(data.channels)))]
        if name is not None and not fits:
            profile = profiles[name]
            raise STDataError(f"the input has {shape}, but {name!r}, the training dataset it was named after, has "
                              f"{profile['num_nodes']} nodes and channels {profile['channels']}; give its data, or "
                              "another name (zero-shot)")
        if len(fits) == 1:
            return fits[0], "named by --name (name=)" if name is not None else f"the input has its {shape}"
        if fits:
            return None, (f"{len(fits)} training datasets have the input's {shape} "
                          f"({', '.join(p['name'] for p in fits)}); give --name (name=) to use one's profile")
        trained = "; ".join(f"{p['name']}: {p['num_nodes']} nodes, {len(p['channels'])} channel(s)"
                            for p in profiles.values())
        return None, f"no training dataset has the input's {shape} ({trained})"

    def _model_channels(self, data: STData, as_series: bool = True) -> STData:
        """``data`` with the channels the model forecasts: the recipe's ``dataset_channels`` when the input has
        more (all of a dataset's channels, some of which only feed the graphs); the channel count checked. A
        channel-independent model forecasts any channels, each as a series (``as_series``: their
        :meth:`~st_instruct.data.stdata.STData.series_view`)."""
        wanted = self.data_config.dataset_channels
        if self.data_config.channel_independent:
            return data.series_view() if as_series else data
        if wanted and data.num_channels != self.model.st_config.channels:
            missing = [c for c in wanted if not isinstance(c, int) and c not in data.channels]
            if missing:
                raise STDataError(f"the forecaster reads the channels {wanted}; the input has {data.channels}")
            data = data.select_channels(wanted)
        if data.num_channels != self.model.st_config.channels:
            raise STDataError(f"the input has {data.num_channels} channel(s) {data.channels}, the forecaster in "
                              f"{self.directory} forecasts {self.model.st_config.channels}; give [T, N, "
                              f"{self.model.st_config.channels}] values")
        return data


MAX_AUTO_BATCH = 256  # beyond this a bigger batch no longer speeds a pass up, on a CPU or a GPU


def memory_batch_size(model: Any, tokens: int, free_bytes: int | None = None) -> int:
    """Samples of ``tokens`` tokens per forward pass that fit in a quarter of ``free_bytes`` (default: the free
    memory of the model's device: CUDA's free memory, else the machine's available memory), by the model's
    :meth:`~st_instruct.models.forecaster.STForecaster.prediction_bytes`; 1 to :data:`MAX_AUTO_BATCH`."""
    if free_bytes is None:
        device = next(model.parameters()).device
        free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    return int(min(MAX_AUTO_BATCH, max(1, free_bytes // 4 // max(model.prediction_bytes(tokens), 1))))


def available_memory() -> int:
    """Bytes of memory this machine can give without swapping: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else
    the free physical pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _nothing_to_forecast(observed: np.ndarray, min_observed: float, history: int, every_window: bool) -> str:
    """Why no window of an input is forecast: the share of their histories observed is too small."""
    rule = (f"below the {min_observed:.0%} a forecast needs (--min-observed / min_observed; a history with nothing "
            "observed is never forecast)")
    if not every_window:
        return (f"the input's last {history} steps, the history of the forecast, have {observed[0]:.0%} of their "
                f"values observed (not NaN, not the null value), {rule}: give a history with observed values")
    return (f"none of the input's {len(observed)} windows has enough of its history observed (at best "
            f"{observed.max():.0%}), {rule}: give a history with observed values")


def _numbers(frame: pd.DataFrame) -> np.ndarray:
    """The DataFrame's cells as float64; a cell that is not a number (nor missing) is refused, naming its row and
    column."""
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy() & frame.notna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise STDataError(f"the DataFrame's cell at row {frame.index[r]!r}, column {frame.columns[c]!r} is "
                          f"{frame.iat[r, c]!r}, not a number; give numbers (NaN where nothing was observed)")
    return numeric.to_numpy(dtype=np.float64)


def _history_array(history: Any, timestamps: Any) -> tuple[np.ndarray, Any, list[str] | None, list[str] | None]:
    """``(values [T, N, C], timestamps, node names, channel names)`` of an array or a DataFrame input."""
    if isinstance(history, pd.DataFrame):
        frame = history
        if timestamps is None and isinstance(frame.index, pd.DatetimeIndex):
            timestamps = frame.index
        if isinstance(frame.columns, pd.MultiIndex):
            if frame.columns.nlevels != 2:
                raise STDataError(f"a DataFrame input has one column per node, or per (node, channel); found "
                                  f"{frame.columns.nlevels} column levels")
            nodes = list(dict.fromkeys(frame.columns.get_level_values(0)))
            channels = list(dict.fromkeys(frame.columns.get_level_values(1)))
            try:
                frame = frame.reindex(columns=pd.MultiIndex.from_product([nodes, channels]))
            except ValueError as err:
                raise STDataError(f"a DataFrame input's (node, channel) columns must be unique: {err}") from err
            values = _numbers(frame).reshape(len(frame), len(nodes), len(channels))
            return values, timestamps, [str(n) for n in nodes], [str(c) for c in channels]
        values = _numbers(frame)[:, :, None]
        return values, timestamps, [str(c) for c in frame.columns], None
    values = np.asarray(history)
    if values.ndim not in (2, 3):
        raise STDataError(f"history must be a [T, N, C] (or [T, N]) array or a DataFrame, found shape "
                          f"{list(values.shape)}")
    if timestamps is not None and len(timestamps) != len(values):
        raise STDataError(f"timestamps has {len(timestamps)} entries but history has {len(values)} steps")
    return values, timestamps, None, None


def _complete(data: STData, profile: dict[str, Any] | None) -> STData:
    """``data`` with what it does not say (fields at their defaults) taken from ``profile`` (module docstring); a
    step that contradicts the profile's is refused."""
    if profile is None:
        return data
    if profile["freq"] is not None and data.freq is not None and data.freq != profile["freq"]:
        raise STDataError(f"the input's step is {data.freq}, the forecaster was trained on {profile['name']!r} with "
                          f"steps of {profile['freq']}; resample the input")
    changes: dict[str, Any] = {"name": profile["name"], "description": data.description or profile["description"]}
    if not data.city:
        changes["city"] = profile["city"]
    if data.num_channels == len(profile["channels"]):
        if data.channels == [f"ch{i}" for i in range(data.num_channels)]:
            changes["channels"] = list(profile["channels"])
        if not any(data.units):
            changes["units"] = list(profile["units"])
    if not data.sensors and profile.get("sensors"):  # keyed by channel name: only the channels the input has
        channels = changes.get("channels", data.channels)
        changes["sensors"] = {k: v for k, v in profile["sensors"].items() if k in channels}
    if data.node_names is None and profile["node_names"] is not None:
        changes["node_names"] = list(profile["node_names"])
    if data.node_descriptions is None and profile["node_descriptions"] is not None:
        changes["node_descriptions"] = list(profile["node_descriptions"])
    if data.coords is None and profile["coords"] is not None:
        changes.update(coords=profile_coords(profile), coord_kind=profile["coord_kind"])
    if data.adjacency is None:
        changes["adjacency"] = profile_adjacency(profile)
    if data.grid_shape is None and profile["grid_shape"] is not None:
        changes["grid_shape"] = tuple(profile["grid_shape"])
    if data.null_value is None:
        changes["null_value"] = profile["null_value"]
    if data.freq is None and profile["freq"] is not None and data.timestamps is not None:
        changes["freq"] = profile["freq"]
    return dataclasses.replace(data, **changes)


def _extend(data: STData, steps: int) -> STData:
    """``data`` continued with unknown (NaN) steps up to ``steps``: the future a window forecasts."""
    extra = steps - data.num_steps
    if extra <= 0:
        return data
    values = np.concatenate([data.values, np.full((extra, *data.values.shape[1:]), np.nan, np.float32)])
    index = data.time_index()
    if index is None:
        if data.has_calendar:
            raise STDataError(f"dataset {data.name!r}: the calendar of the forecast steps is unknown")
        return dataclasses.replace(data, values=values)
    if data.freq is None:
        raise STDataError("the input's step is unknown (irregular or too few timestamps); give freq= (e.g. '1h') "
                          "so the forecast steps can be dated")
    future = pd.date_range(index[-1], periods=extra + 1, freq=data.freq)[1:]
    return dataclasses.replace(data, values=values, timestamps=index.append(future), start=None)


def load_forecaster(source: str | Path, *, revision: str | None = None, token: str | None = None,
                    cache_dir: str | Path | None = None) -> Forecaster:
    """A saved forecaster ready to :meth:`~Forecaster.forecast`: a folder written by ``st-instruct train`` (or one
    of its ``checkpoint-N`` folders), or a Hub repo id pushed by ``st-instruct push``, downloaded through
    ``huggingface_hub`` into its cache (``HF_HUB_OFFLINE=1`` uses the cached copy and never the network)."""
    directory = Path(source).expanduser()
    if directory.is_symlink() and not directory.exists():
        raise FileNotFoundError(f"{directory} is a symbolic link to {os.readlink(directory)}, which does not exist or "
                                "leads back to itself (a loop); point it at a trained forecaster folder")
    if not directory.exists():
        directory = download_model(str(source), revision, token, cache_dir)
    model, tokenizer = load_saved(directory, token=token, cache_dir=cache_dir)  # an attribute adapter's base too
    return Forecaster(directory, model, tokenizer, trained_data_config(directory),
                      read_backbone_source(directory)[0].model_name_or_path)

