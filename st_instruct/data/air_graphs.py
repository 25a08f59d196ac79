"""AirGPT's two graphs of air-quality stations: a static distance graph and a dynamic wind graph.

AirGPT (Li, Chen, Xu, Information Fusion 2025) fuses a static graph of how far apart the stations are with a
dynamic graph of where the wind carries pollution at each step:

- static: ``A_ij = exp(-d_ij^2 / 2 sigma^2)`` with ``d`` the haversine distance (km) between stations
  (:func:`static_distance_graph`, the Gaussian kernel of :mod:`st_instruct.data.graph`, kept dense);
- dynamic: ``A_t,ij = exp(-d_ij^2 / 2 (sigma0 + alpha v_t,i)^2) * max(cos dphi_t,ij, 0)`` where ``v_t,i`` is the wind
  speed at station ``i`` and ``dphi`` the angle between the direction the wind at ``i`` blows *towards* and the
  bearing from ``i`` to ``j`` (:func:`wind_graph`): a stronger wind reaches further, and only stations downwind of
  ``i`` receive from it. Meteorological wind direction (``wd_deg`` in beijing-air) is where the wind comes *from*
  (0 = from the north), so it blows towards ``wd + 180``.

Choices the paper leaves open, made here: the self-loop ``A_t,ii`` is 1 (a station keeps its own state; a bearing
to itself is undefined); a station whose wind speed or direction is missing (NaN) at ``t`` sends nothing at ``t``
(its row is 0 but the self-loop), so no NaN ever enters a graph; calm air (speed 0) still reaches ``sigma0``.
"""

from __future__ import annotations

import numpy as np

from st_instruct.data.graph import gaussian_kernel_adjacency, haversine_km
from st_instruct.data.loaders import load_series

WIND_SPEED_CHANNELS = ("WSPM", "wind_speed", "wspd")
WIND_DIRECTION_CHANNELS = ("wd_deg", "wind_direction", "wdir")


def bearing_deg(latlon: np.ndarray) -> np.ndarray:
    """``[N, N]`` initial great-circle bearing from station ``i`` to ``j`` in degrees clockwise from north
    (0 = north, 90 = east); 0 on the diagonal. ``latlon`` [N, 2] in degrees, latitude first."""
    latlon = np.asarray(latlon, dtype=np.float64)
    haversine_km(latlon)  # validates the shape and ranges
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    dlon = lon[None, :] - lon[:, None]
    y = np.sin(dlon) * np.cos(lat)[None, :]
    x = np.cos(lat)[:, None] * np.sin(lat)[None, :] - np.sin(lat)[:, None] * np.cos(lat)[None, :] * np.cos(dlon)
    bearing = np.degrees(np.arctan2(y, x)) % 360.0
    np.fill_diagonal(bearing, 0.0)
    return bearing


def static_distance_graph(latlon: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """``[N, N]`` float32 ``exp(-d^2 / 2 sigma^2)`` of the haversine distances (km), dense (no threshold); ``sigma``
    defaults to the standard deviation of the off-diagonal distances."""
    return gaussian_kernel_adjacency(haversine_km(latlon), sigma=sigma, threshold=0.0)


def wind_graph(latlon: np.ndarray, wind_speed: np.ndarray, wind_from_deg: np.ndarray, sigma0: float,
               alpha: float) -> np.ndarray:
    """``[T, N, N]`` float32 dynamic wind graphs (module docstring) from ``wind_speed`` / ``wind_from_deg``
    ``[T, N]`` (m/s, meteorological degrees; NaN = missing), ``sigma0`` > 0 km and ``alpha`` >= 0 km per m/s."""
    if sigma0 <= 0 or alpha < 0:
        raise ValueError(f"the wind graph needs sigma0 > 0 and alpha >= 0, found {sigma0}, {alpha}")
    speed, direction = np.asarray(wind_speed, np.float64), np.asarray(wind_from_deg, np.float64)
    distances = haversine_km(latlon)
    if speed.shape != direction.shape or speed.ndim != 2 or speed.shape[1] != len(distances):
        raise ValueError(f"wind_speed and wind_from_deg must both be [T, N] with N = {len(distances)} stations, "
                         f"found {speed.shape} and {direction.shape}")
    missing = np.isnan(speed) | np.isnan(direction)
    speed, direction = np.where(missing, 0.0, np.maximum(speed, 0.0)), np.where(missing, 0.0, direction)
    towards = np.radians(direction + 180.0)  # [T, N]
    angle = towards[:, :, None] - np.radians(bearing_deg(latlon))[None]  # [T, N, N]
    reach = sigma0 + alpha * speed  # [T, N]
    graph = np.exp(-np.square(distances)[None] / (2 * np.square(reach)[:, :, None])) * np.maximum(np.cos(angle), 0)
    graph[missing] = 0.0
    eye = np.eye(len(distances), dtype=bool)
    graph[:, eye] = 1.0
    return graph.astype(np.float32)


def wind_channels(channels: list[str], dataset: str) -> tuple[int, int]:
    """Indices of the wind speed and direction channels; a clear error naming what is missing otherwise."""
    speed = next((channels.index(name) for name in WIND_SPEED_CHANNELS if name in channels), None)
    direction = next((channels.index(name) for name in WIND_DIRECTION_CHANNELS if name in channels), None)
    missing = [what for what, found in (("wind speed (one of " + ", ".join(WIND_SPEED_CHANNELS) + ")", speed),
                                        ("wind direction in degrees (one of " + ", ".join(WIND_DIRECTION_CHANNELS)
                                         + ")", direction)) if found is None]
    if missing:
        raise ValueError(f"dataset {dataset!r} has no {' and no '.join(missing)} channel, which the wind graph "
                         f"needs (its channels: {', '.join(channels)}); use the static graph only, or add them")
    return speed, direction


GRAPH_KINDS = ("none", "static", "static_wind")


class WindowGraphs:
    """AirGPT's graphs of any sample of an instruction dataset, made when asked (per batch, by the collator), like
    the images of :class:`~st_instruct.samples.render.WindowImages`: nothing is stored in the Arrow rows.

    ``batch(samples, nodes)`` gives ``static_graph`` and (``kind == "static_wind"``) ``wind_graph``, each
    ``[B, nodes, nodes]`` float32 over the sample's ``node_index`` (zero-padded to ``nodes``). Both are laid out for
    aggregation: row ``i`` holds what station ``i`` *receives*, so the wind graph is the transpose of
    :func:`wind_graph`'s "``i`` sends to ``j``". The wind graph of a sample is the mean of the hourly graphs over its
    history window (the ST encoder gives one token per station, so one graph per window); the future's wind is
    never read.
    """

    def __init__(self, static: dict[str, np.ndarray], wind_cumsum: dict[str, np.ndarray] | None,
                 history: int) -> None:
        self.static, self.wind_cumsum, self.history = static, wind_cumsum, history

    @property
    def kind(self) -> str:
        return "static" if self.wind_cumsum is None else "static_wind"

    def batch(self, samples: list[dict], nodes: int) -> dict[str, np.ndarray]:
        keys = ["static_graph"] + ([] if self.wind_cumsum is None else ["wind_graph"])
        out = {key: np.zeros((len(samples), nodes, nodes), np.float32) for key in keys}
        for b, sample in enumerate(samples):
            name = sample["dataset"]
            if name not in self.static:
                raise ValueError(f"no graphs for dataset {name!r}: they were set up for {sorted(self.static)}; batch "
                                 "samples of the datasets the recipe names")
            index = np.asarray(sample["node_index"], dtype=np.int64)
            pick = np.ix_(index, index)
            count = len(index)
            out["static_graph"][b, :count, :count] = self.static[name][pick]
            if self.wind_cumsum is not None:
                start = int(sample["window_start"])
                cumsum = self.wind_cumsum[name]
                mean = (cumsum[start + self.history] - cumsum[start]) / self.history
                out["wind_graph"][b, :count, :count] = mean[pick]
        return out


def build_window_graphs(config, kind: str, sigma0_km: float, alpha_km: float, series: list | None = None
                        ) -> WindowGraphs | None:
    """:class:`WindowGraphs` of ``kind`` (:data:`GRAPH_KINDS`; ``none`` gives ``None``) for every dataset of the
    :class:`~st_instruct.configs.DataConfig` ``config``. The wind is read from the dataset's wind channels even when
    the recipe keeps only other channels (``dataset_channels`` or a ``NAME[ch]`` entry), so a PM2.5 forecaster still
    gets its wind graph. A dataset without lat/lon coordinates, or (``static_wind``) without wind channels, is refused
    in one line. ``series``: these :class:`~st_instruct.data.stdata.STData` (all their channels) instead of the
    recipe's."""
    if kind not in GRAPH_KINDS:
        raise ValueError(f"the graph kind must be one of {GRAPH_KINDS}, found {kind!r}")
    if kind == "none":
        return None
    static, cumsums = {}, {}
    for data in series if series is not None else load_series(config, every_channel=True):
        if data.coords is None or data.coord_kind != "latlon":
            raise ValueError(f"dataset {data.name!r} has {data.coord_kind or 'no'} node coordinates, but AirGPT's "
                             "graphs are built from station latitude/longitude; use st_graph: none")
        static[data.name] = static_distance_graph(data.coords).T.copy()
        if kind == "static_wind":
            speed, direction = wind_channels(list(data.channels), data.name)
            hourly = wind_graph(data.coords, data.values[:, :, speed], data.values[:, :, direction], sigma0_km,
                                alpha_km).transpose(0, 2, 1)
            cumsum = np.zeros((len(hourly) + 1, *hourly.shape[1:]), np.float64)
            np.cumsum(hourly, axis=0, dtype=np.float64, out=cumsum[1:])
            cumsums[data.name] = cumsum
    return WindowGraphs(static, cumsums if kind == "static_wind" else None, config.history)
