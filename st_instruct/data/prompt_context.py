"""The priors UniST's memory prompts are queried with (:mod:`st_instruct.models.memory_prompts`), made per batch.

For each sample's window (history steps ``s .. s + L - 1``, forecast steps ``s + L .. s + L + P - 1``) and node:

- ``prompt_neighbours`` [L, C]: the mean over the node's neighbours of their observed values in the history window
  (spatial closeness: UniST's 3x3 kernel). Neighbours: a grid's 8 surrounding cells; else the graph's neighbours;
  else the 4 nearest nodes by coordinates; a dataset with none of these gets zeros.
- ``prompt_region`` [L, C]: the same over a wider neighbourhood (spatial hierarchy: UniST's 5x5 kernel): the 5x5
  block of a grid, the neighbours and their neighbours in a graph, the 12 nearest nodes.
- ``prompt_period`` [2, P, C]: the node's values at the forecast steps one day and one week earlier (temporal
  period). A lag shorter than the horizon would reach into the forecast's own future, so it is left out (zeros), as
  is a step before the series starts or unobserved.

Every prior is in the sample's own scale (``(value - scaler_mean) / scaler_std``: the same statistics as its
history, so strict zero-shot scaling still uses the input window only), zero where nothing was observed. Only
values up to the last history step are read: no target value can enter. Temporal closeness (the latest steps) is
the model's own history input. Nothing is stored in the Arrow rows: like
:class:`~st_instruct.data.air_graphs.WindowGraphs`, :class:`WindowPriors` is given to the collator.

A channel-independent recipe's series (``n * C + c``, :meth:`~st_instruct.data.stdata.STData.series_view`) get the
priors of channel ``c`` of node ``n``: the neighbours are the same channel at the neighbouring nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from st_instruct.data.loaders import load_series
from st_instruct.data.stdata import STData

PERIOD_DAYS = (1, 7)
NEAREST = {"neighbours": 4, "region": 12}


def _grid_weights(height: int, width: int, reach: int) -> sp.csr_array:
    """Cells within Chebyshev distance ``reach`` of each cell, itself excluded."""
    rows, cols = np.divmod(np.arange(height * width), width)
    near = (np.abs(rows[:, None] - rows[None, :]) <= reach) & (np.abs(cols[:, None] - cols[None, :]) <= reach)
    np.fill_diagonal(near, False)
    return sp.csr_array(near.astype(np.float32))


def _nearest_weights(coords: np.ndarray, count: int) -> sp.csr_array:
    """The ``count`` nearest other nodes of each node (Euclidean on the coordinates as given)."""
    nodes = len(coords)
    distance = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
    np.fill_diagonal(distance, np.inf)
    keep = np.argsort(distance, axis=1)[:, :min(count, nodes - 1)]
    near = np.zeros((nodes, nodes), np.float32)
    np.put_along_axis(near, keep, 1.0, axis=1)
    return sp.csr_array(near)


def neighbourhoods(data: STData) -> dict[str, sp.csr_array]:
    """``{"neighbours", "region"}`` -> ``[N, N]`` 0/1 matrices (row ``i``: what node ``i`` averages over)."""
    nodes = data.num_nodes
    if data.grid_shape is not None:
        return {"neighbours": _grid_weights(*data.grid_shape, 1), "region": _grid_weights(*data.grid_shape, 2)}
    if data.adjacency is not None:
        linked = sp.csr_array(data.adjacency, dtype=np.float32)
        linked = sp.csr_array((linked != 0).astype(np.float32))
        linked.setdiag(0)
        linked.eliminate_zeros()
        wider = sp.csr_array(((linked + linked @ linked) != 0).astype(np.float32))
        wider.setdiag(0)
        wider.eliminate_zeros()
        return {"neighbours": linked, "region": wider}
    if data.coords is not None and nodes > 1:
        coords = np.asarray(data.coords, np.float64)
        return {key: _nearest_weights(coords, count) for key, count in NEAREST.items()}
    empty = sp.csr_array((nodes, nodes), dtype=np.float32)
    return {"neighbours": empty, "region": empty}


def _mean_over(weights: sp.csr_array, values: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([T, N, C] mean of the observed values of each node's weighted nodes, [T, N, C] whether any was)``."""
    steps, nodes, channels = values.shape
    flat = lambda a: a.transpose(1, 0, 2).reshape(nodes, steps * channels)  # noqa: E731
    total = weights @ flat(np.where(observed, values, 0.0))
    count = weights @ flat(observed.astype(np.float32))
    back = lambda a: a.reshape(nodes, steps, channels).transpose(1, 0, 2)  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1e-12), 0.0)
    return back(mean).astype(np.float32), back(count > 0)


@dataclasses.dataclass
class DatasetPriors:
    """One dataset's ``[T, N', C']`` neighbour and region means and values with their masks, laid out as the samples'
    nodes (series ``n * C + c`` for a channel-independent recipe), and the period lags in steps (0: left out)."""

    neighbours: np.ndarray
    neighbours_observed: np.ndarray
    region: np.ndarray
    region_observed: np.ndarray
    values: np.ndarray
    observed: np.ndarray
    lags: tuple[int, ...]


def dataset_priors(data: STData, horizon: int, as_series: bool) -> DatasetPriors:
    """The priors of ``data`` (a dataset as loaded, channels kept, before any series view)."""
    observed = data.mask()
    values = np.where(observed, data.values, 0.0).astype(np.float32)
    weights = neighbourhoods(data)
    neighbours, neighbours_observed = _mean_over(weights["neighbours"], values, observed)
    region, region_observed = _mean_over(weights["region"], values, observed)
    steps_per_day = data.steps_per_day if data.freq is not None else 0
    lags = tuple(days * steps_per_day if days * steps_per_day >= horizon else 0 for days in PERIOD_DAYS)

    def layout(array: np.ndarray) -> np.ndarray:
        return array.reshape(array.shape[0], -1, 1) if as_series else array

    return DatasetPriors(layout(neighbours), layout(neighbours_observed), layout(region), layout(region_observed),
                         layout(values), layout(observed), lags)


class WindowPriors:
    """The priors of any sample of an instruction dataset, made per batch by the collator (module docstring).

    ``batch(samples, nodes)`` gives ``prompt_neighbours`` / ``prompt_region`` ``[B, L, nodes, C]`` and
    ``prompt_period`` ``[B, 2, P, nodes, C]`` float32 over each sample's ``node_index`` (zero-padded to
    ``nodes``), scaled by its ``scaler_mean`` / ``scaler_std``."""

    def __init__(self, datasets: dict[str, DatasetPriors], history: int, horizon: int) -> None:
        self.datasets, self.history, self.horizon = datasets, history, horizon

    def batch(self, samples: list[dict[str, Any]], nodes: int) -> dict[str, np.ndarray]:
        L, P = self.history, self.horizon
        channels = len(np.asarray(samples[0]["scaler_mean"]).reshape(-1))
        out = {"prompt_neighbours": np.zeros((len(samples), L, nodes, channels), np.float32),
               "prompt_region": np.zeros((len(samples), L, nodes, channels), np.float32),
               "prompt_period": np.zeros((len(samples), len(PERIOD_DAYS), P, nodes, channels), np.float32)}
        for b, sample in enumerate(samples):
            name = sample["dataset"]
            if name not in self.datasets:
                raise ValueError(f"no UniST priors for dataset {name!r}: they were set up for "
                                 f"{sorted(self.datasets)}; batch samples of the datasets the recipe names")
            priors = self.datasets[name]
            index = np.asarray(sample["node_index"], dtype=np.int64)
            count = len(index)
            mean = np.asarray(sample["scaler_mean"], np.float32).reshape(-1)
            std = np.asarray(sample["scaler_std"], np.float32).reshape(-1)
            start = int(sample["window_start"])
            steps = np.arange(start, start + L)
            for key in ("neighbours", "region"):
                values = getattr(priors, key)[steps][:, index]
                seen = getattr(priors, f"{key}_observed")[steps][:, index]
                out[f"prompt_{key}"][b, :, :count] = np.where(seen, (values - mean) / std, 0.0)
            for k, lag in enumerate(priors.lags):
                past = np.arange(start + L, start + L + P) - lag
                if lag == 0 or past[0] < 0:
                    continue
                values, seen = priors.values[past][:, index], priors.observed[past][:, index]
                out["prompt_period"][b, k, :, :count] = np.where(seen, (values - mean) / std, 0.0)
        return out


def build_window_priors(config: Any, series: list[STData] | None = None) -> WindowPriors:
    """:class:`WindowPriors` for every dataset of the :class:`~st_instruct.configs.DataConfig` ``config``;
    ``series``: these :class:`~st_instruct.data.stdata.STData` instead of the recipe's (a forecast's own data, with
    the model's channels and not as a series view: neighbours are nodes, not series)."""
    if series is None:  # the datasets as loaded, before the series view
        series = load_series(dataclasses.replace(config, channel_independent=False))
    return WindowPriors({data.name: dataset_priors(data, config.horizon, config.channel_independent)
                         for data in series}, config.history, config.horizon)
