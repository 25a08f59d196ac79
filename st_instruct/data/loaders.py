"""``get_dataset``: the one entry point from a dataset name or a file path to an :class:`STData` ``[T, N, C]``.

Named datasets (:data:`~st_instruct.data.registry.DATASETS`, see ``../shared/data/README.md``) each have a
small private loader below; their directory is found by the resolution order of
:func:`~st_instruct.data.registry.resolve_dataset_dir`. ``synthetic`` and ``synthetic-<city>`` come from
:func:`~st_instruct.data.synthetic.generate_synthetic`. Anything else that names a file goes to the generic
loaders of :mod:`st_instruct.data.files`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from st_instruct.configs import DATASET_SPEC_KEYS, DataConfig
from st_instruct.data.files import SERIES_SUFFIXES, load_adjacency_file, load_nodes_file, load_series_file
from st_instruct.data.graph import edge_list_to_dense, gaussian_kernel_adjacency, grid_coordinates, haversine_km
from st_instruct.data.registry import (
    BEIJING_STATIONS,
    DATASETS,
    UnknownDatasetError,
    find_dataset_dir,
    resolve_dataset_dir,
    synthetic_names,
    unknown_name_message,
)
from st_instruct.data.stdata import STData, STDataError, normalize_freq, parse_timestamp
from st_instruct.data.synthetic import SYNTHETIC_CITIES, generate_synthetic

# 16 compass points, clockwise from north in 22.5 degree steps (the convention of the UCI files' `wd` column).
WIND_DEGREES = {p: 22.5 * i for i, p in enumerate(
    ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW"))}


def _spec_fields(name: str) -> dict:
    """The STData fields every named loader takes straight from the registry."""
    s = DATASETS[name]
    return {"name": name, "city": s.city, "freq": s.freq, "start": s.start, "channels": list(s.channels),
            "units": list(s.units), "null_value": s.null_value, "description": s.description,
            "sensors": dict(zip(s.channels, s.sensors, strict=True)) if s.sensors else {},
            "meta": {"files": [f.path for f in s.files], "sha256": {f.path: f.sha256 for f in s.files}}}


def _npz_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z[key])
    except Exception as err:
        raise STDataError(f"cannot read {path} as .npz with key {key!r}: {type(err).__name__}: {err}") from err


def _check_shape(path: Path, array: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    if array.shape != expected:
        raise STDataError(f"{path} has shape {array.shape}, expected {expected}; is it the file the registry "
                          "describes (see ../shared/data/README.md)?")
    return array


def _load_nyc(name: str, root: Path) -> STData:
    """``[17544, 69, 2]`` hourly in/out flow of the Manhattan zones (channel 0 = inflow)."""
    spec = DATASETS[name]
    series_path = root / spec.files[0].path
    values = _check_shape(series_path, _npz_array(series_path, "arr_0"), spec.shape)
    zones = pd.read_csv(root / "nyc_manhattan_bike_taxi/manhattan_zones.csv").sort_values("graph_id")
    if zones["graph_id"].tolist() != list(range(values.shape[1])):
        raise STDataError(f"{root / 'nyc_manhattan_bike_taxi/manhattan_zones.csv'}: graph_id must run 0..68")
    adj_path = root / "nyc_manhattan_bike_taxi/W_adj_matrix.csv"
    adjacency = _check_shape(adj_path, pd.read_csv(adj_path, header=0).to_numpy(np.float32), (69, 69))
    kind = "taxi" if name == "nyc-taxi" else "bike"
    return STData(values=values, node_names=zones["zone_name"].tolist(),
                  node_descriptions=[f"Manhattan taxi zone {z} '{n}' ({kind} flows)"
                                     for z, n in zip(zones["zone_id"], zones["zone_name"], strict=True)],
                  adjacency=adjacency, **_spec_fields(name))


def _load_los_loop(root: Path) -> STData:
    """``[2016, 207, 1]`` speed (mph), 5-minute; node names are the METR-LA sensor ids of the csv header."""
    speed = pd.read_csv(root / "los_loop/los_speed.csv")
    adj_path = root / "los_loop/los_adj.csv"
    adjacency = _check_shape(adj_path, pd.read_csv(adj_path, header=None).to_numpy(np.float32), (207, 207))
    return STData(values=speed.to_numpy(np.float32), node_names=[str(c) for c in speed.columns],
                  node_descriptions=[f"Los Angeles County highway loop detector {c}" for c in speed.columns],
                  adjacency=adjacency, **_spec_fields("los-loop"))


def _load_nycbike1_grid(root: Path) -> STData:
    """``[1296, 128, 2]`` from the ``[T, C, 16, 8]`` grid file, node = row * 8 + col; ``as_grid()`` gives it back."""
    grid_path = root / "nycbike1_stssl/NYCBike1_valtest_grid_TCHW.npz"
    grid = _check_shape(grid_path, _npz_array(grid_path, "data"), (1296, 2, 16, 8))
    T, C, H, W = grid.shape
    values = grid.transpose(0, 2, 3, 1).reshape(T, H * W, C)
    adj_path = root / "nycbike1_stssl/adj_mx.npz"
    adjacency = _check_shape(adj_path, _npz_array(adj_path, "adj_mx"), (H * W, H * W))
    coords = grid_coordinates(H, W)
    names = [f"cell ({int(r)}, {int(c)})" for r, c in coords]
    return STData(values=values, coords=coords, coord_kind="grid", grid_shape=(H, W), node_names=names,
                  node_descriptions=[f"NYC bike grid {n} of the {H}x{W} grid" for n in names],
                  adjacency=adjacency, **_spec_fields("nycbike1-grid"))


def _load_beijing_air(root: Path) -> STData:
    """``[35064, 12, 12]`` hourly air quality + weather (NaN = missing); wind direction as degrees ``wd_deg``."""
    numeric = ["PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM"]
    blocks, clock = [], None
    station_files = [f for f in DATASETS["beijing-air"].files if "PRSA_Data_" in f.path]
    for f in tqdm(station_files, desc="beijing-air stations", leave=False):
        path = root / f.path
        df = pd.read_csv(path, usecols=["year", "month", "day", "hour", *numeric, "wd"])
        ts = pd.DatetimeIndex(pd.to_datetime(df[["year", "month", "day", "hour"]]))
        bad = np.asarray(ts[1:] - ts[:-1] != pd.Timedelta("1h"))
        if bad.any():
            i = int(np.argmax(bad))
            raise STDataError(f"{path}: timestamps are not consecutive hours; row {i + 2} is {ts[i + 1]} after "
                              f"{ts[i]} (rows must run hourly from year/month/day/hour without gaps)")
        if clock is None:
            clock = ts
        elif not ts.equals(clock):
            raise STDataError(f"{path}: its hours ({ts[0]} .. {ts[-1]}, {len(ts)} rows) differ from the first "
                              f"station's ({clock[0]} .. {clock[-1]}, {len(clock)} rows)")
        unknown = set(df["wd"].dropna()) - set(WIND_DEGREES)
        if unknown:
            raise STDataError(f"{path}: unknown wind directions {sorted(unknown)}; expected 16 compass points")
        wd = df["wd"].map(WIND_DEGREES).astype(np.float64)
        blocks.append(np.column_stack([df[numeric].to_numpy(np.float64), wd.to_numpy()]))
    stations = pd.read_csv(root / "beijing_air/stations.csv").set_index("station")
    coords = stations.loc[list(BEIJING_STATIONS), ["latitude", "longitude"]].to_numpy(np.float64)
    dist = haversine_km(coords)
    # sigma = std of the off-diagonal distances (about 16 km here), DCRNN's default; entries below 0.1 drop.
    sigma = float(dist[~np.eye(len(dist), dtype=bool)].std())
    fields = _spec_fields("beijing-air")
    fields["meta"].update(adjacency_sigma_km=sigma, adjacency_threshold=0.1)
    fields["description"] += f" Adjacency sigma = {sigma:.2f} km (std of the station distances), threshold 0.1."
    return STData(values=np.stack(blocks, axis=1), timestamps=clock, coords=coords, coord_kind="latlon",
                  node_names=list(BEIJING_STATIONS),
                  node_descriptions=[f"Beijing air-quality monitoring station {s}" for s in BEIJING_STATIONS],
                  adjacency=gaussian_kernel_adjacency(dist, sigma=sigma, threshold=0.1), **fields)


def _load_pedalme(root: Path) -> STData:
    """``[35, 15, 1]`` weekly delivery demand; dense weighted graph from the file's edges and weights."""
    path = root / "pedalme_london/pedalme_london.json"
    try:
        raw = json.loads(path.read_text())
        x, edges, weights = np.asarray(raw["X"], np.float64), np.asarray(raw["edges"]), np.asarray(raw["weights"])
    except (ValueError, KeyError) as err:
        raise STDataError(f"cannot read {path} as the PyG-Temporal json (keys X, edges, weights): {err}") from err
    if x.ndim != 2:
        raise STDataError(f"{path}: X must be [T, N], found shape {x.shape}")
    adjacency = np.zeros((x.shape[1], x.shape[1]), np.float32)
    adjacency[edges[:, 0], edges[:, 1]] = weights
    # the file carries no dates: the registry declares it calendar-free rather than inventing a start
    return STData(values=x, adjacency=adjacency, node_names=[f"location {i}" for i in range(x.shape[1])],
                  no_calendar=True, **_spec_fields("pedalme-london"))


def _load_pems(name: str, root: Path) -> STData:
    """``[T, N, 3]`` flow / occupancy / speed, 5-minute (PEMS04: 307 nodes, PEMS08: 170 nodes).

    The series (``PEMS0x.npz``) is not in ../shared/data; tests exercise this loader on a small fabricated
    npz with the same layout, so only its format, not the real file, is checked there.
    """
    spec = DATASETS[name]
    series_path, edges_path = root / spec.files[0].path, root / spec.files[1].path
    values = _npz_array(series_path, "data")
    if values.ndim != 3 or values.shape[1:] != spec.shape[1:]:
        raise STDataError(f"{series_path}: key 'data' must be [T, {spec.shape[1]}, 3], found {values.shape}")
    edges = pd.read_csv(edges_path)
    try:
        adjacency = edge_list_to_dense(edges[["from", "to", "cost"]].to_numpy(np.float64), values.shape[1])
    except (KeyError, ValueError) as err:
        raise STDataError(f"{edges_path}: cannot build the graph from the from,to,cost edge list: {err}") from err
    return STData(values=values, adjacency=adjacency, node_names=[f"sensor {i}" for i in range(values.shape[1])],
                  **_spec_fields(name))


_LOADERS: dict[str, Callable[[Path], STData]] = {
    "nyc-taxi": lambda root: _load_nyc("nyc-taxi", root),
    "nyc-bike": lambda root: _load_nyc("nyc-bike", root),
    "los-loop": _load_los_loop,
    "nycbike1-grid": _load_nycbike1_grid,
    "beijing-air": _load_beijing_air,
    "pedalme-london": _load_pedalme,
    "pems04": lambda root: _load_pems("pems04", root),
    "pems08": lambda root: _load_pems("pems08", root),
}


def _load_synthetic(name: str) -> STData:
    city = "default" if name == "synthetic" else name.removeprefix("synthetic-")
    if city not in SYNTHETIC_CITIES:
        raise UnknownDatasetError(unknown_name_message(name))
    return generate_synthetic(city)


def spec_flag(key: str) -> str:
    """``"series_start"`` -> ``"--series-start (dataset_series_start)"``: how errors name a spec key."""
    return f"--{key.replace('_', '-')} (dataset_{key})"


def dataset_spec(config: object) -> dict:
    """The :data:`DATASET_SPEC_KEYS` set in a config with ``dataset_<key>`` fields (a ``DataConfig``), as
    :func:`get_dataset` keyword arguments; unset (``None`` / ``False``) keys are left out."""
    values = {key: getattr(config, f"dataset_{key}") for key in DATASET_SPEC_KEYS}
    return {key: value for key, value in values.items() if value is not None and value is not False}


def parse_null_value(value: float | str | None) -> float | None:
    """``None`` (keep the dataset's own), a number, or NaN (``"nan"``: no declared null besides NaN)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise STDataError(f"{spec_flag('null_value')} {value!r} is not a number; give the value that means "
                          "'not observed' (e.g. 0), or nan for none besides NaN") from err


def get_dataset(name_or_path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                freq: str | None = None, series_start: str | pd.Timestamp | None = None,
                adjacency: str | os.PathLike | np.ndarray | None = None, null_value: float | str | None = None,
                channel_names: list[str] | None = None, nodes: str | os.PathLike | None = None,
                no_calendar: bool = False, channels: list[str] | list[int] | None = None) -> STData:
    """Load a named dataset or a file as an :class:`STData` with values ``[T, N, C]``.

    The keyword arguments from ``freq`` to ``no_calendar`` are the one dataset specification
    (:data:`DATASET_SPEC_KEYS`); errors name the CLI flag and the recipe key of a bad one.

    Args:
        name_or_path: a registered name (``nyc-taxi``, ``los-loop``, ...), ``synthetic`` / ``synthetic-<city>``,
            or a path to a ``.npz`` / ``.npy`` / ``.h5`` / ``.hdf5`` / ``.csv`` series (:mod:`.files`).
        data_dir: directory laid out like ``../shared/data`` to read a named dataset from (else the resolution
            order of :func:`~st_instruct.data.registry.resolve_dataset_dir`).
        freq: the step (``"15min"``, ``"1h"``, ``"H"``, ``"D"``...); for data with regular timestamps it must
            agree with them.
        series_start: timestamp of ``values[0]`` for data without timestamps of their own.
        adjacency: an ``[N, N]`` array or a file (:func:`~st_instruct.data.files.load_adjacency_file`) that
            replaces the dataset's graph.
        null_value: a declared null besides NaN (e.g. 0 for flows); ``None`` keeps the dataset's own, and
            NaN (``"nan"``) declares none.
        channel_names: one name per channel, replacing ``ch0, ch1, ...`` (applied before ``channels``).
        nodes: a nodes ``.csv`` (:func:`~st_instruct.data.files.load_nodes_file`): node names and coordinates.
        no_calendar: run without a calendar: drop the dataset's clock (time features zero, calendar baselines
            skipped). Without it an unknown calendar is refused wherever one is needed, never assumed.
        channels: keep these channels (names or indices), in this order.
    """
    key = os.fspath(name_or_path)
    if no_calendar and series_start is not None:
        raise STDataError(f"{spec_flag('series_start')} and {spec_flag('no_calendar')} contradict each other; "
                          "give one of them")
    if freq is not None:
        freq = normalize_freq(freq, f"frequency {spec_flag('freq')}")
    if series_start is not None:
        series_start = parse_timestamp(series_start, spec_flag("series_start"))
    null_value = parse_null_value(null_value)
    if key in _LOADERS:
        data = _LOADERS[key](resolve_dataset_dir(key, data_dir))
    elif key == "synthetic" or key.startswith("synthetic-"):
        data = _load_synthetic(key)
    elif Path(key).suffix.lower() in SERIES_SUFFIXES or Path(key).exists():
        if Path(key).is_dir():
            raise STDataError(f"{key} is a directory; give a series file, or a dataset name with data_dir={key!r}")
        data = load_series_file(key, freq=freq, series_start=series_start)
    else:
        raise UnknownDatasetError(unknown_name_message(key, "; or give a path to a .npz/.npy/.h5/.csv file"))
    updates: dict = {}
    if freq is not None and freq != data.freq:
        if data.timestamps is not None and pd.infer_freq(data.timestamps) is not None:
            raise STDataError(f"{key} has its own timestamps every {data.freq}; {spec_flag('freq')} {freq} "
                              "contradicts them, leave it out")
        updates["freq"] = freq
    if series_start is not None:
        if data.timestamps is not None:
            raise STDataError(f"{key} has its own timestamps ({data.timestamps[0]} .. {data.timestamps[-1]}); "
                              f"{spec_flag('series_start')} cannot move them, leave it out")
        updates["start"] = series_start
    if no_calendar:
        updates.update(start=None, timestamps=None, no_calendar=True)
    if null_value is not None:
        updates["null_value"] = None if np.isnan(null_value) else null_value
    if adjacency is not None:
        adj = (load_adjacency_file(adjacency, data.num_nodes) if isinstance(adjacency, (str, os.PathLike))
               else np.asarray(adjacency, np.float32))
        updates["adjacency"] = adj
        updates["meta"] = {**data.meta, "adjacency_source": os.fspath(adjacency) if not isinstance(
            adjacency, np.ndarray) else "array"}
    if channel_names is not None:
        names = [str(c) for c in channel_names]
        if len(names) != data.num_channels or len(set(names)) != len(names):
            raise STDataError(f"{spec_flag('channel_names')} gives {len(names)} names {names} but {key} has "
                              f"{data.num_channels} channel(s); give one distinct name per channel")
        renamed = zip(data.channels, names, strict=True)
        updates.update(channels=names, sensors={new: data.sensors[old] for old, new in renamed if old in data.sensors})
    if nodes is not None:
        node_names, coords, coord_kind = load_nodes_file(nodes, data.num_nodes)
        updates.update(node_names=node_names, node_descriptions=None)
        if coords is not None:
            updates.update(coords=coords, coord_kind=coord_kind)
    if updates:
        data = replace(data, **updates)
    return data.select_channels(channels)


def list_datasets() -> list[dict]:
    """One dict per named dataset: name, shape ``[T, N, C]``, freq, city, available locally and where.

    ``where`` is the data directory the resolution order picks (``None`` when the dataset must be downloaded).
    Synthetic cities are listed as always available (``where="generated"``).
    """
    rows = []
    for name, spec in DATASETS.items():
        root = find_dataset_dir(name)
        rows.append({"name": name, "shape": list(spec.shape) if spec.shape else None, "freq": spec.freq,
                     "city": spec.city, "available": root is not None, "where": str(root) if root else None})
    for name in synthetic_names():
        c = SYNTHETIC_CITIES["default" if name == "synthetic" else name.removeprefix("synthetic-")]
        rows.append({"name": name, "shape": [c.num_steps, c.num_nodes, len(c.channels)], "freq": c.freq,
                     "city": c.city, "available": True, "where": "generated"})
    return rows


def load_series(config: DataConfig, every_channel: bool = False) -> list[STData]:
    """The corpus of a :class:`~st_instruct.configs.DataConfig` (:meth:`~st_instruct.configs.DataConfig.corpus`:
    ``dataset_names`` without ``leave_out``, which is never read), one :class:`STData` per entry in that order, each
    with its channels (a ``NAME[ch1,ch2]`` entry's, else ``dataset_channels``) and ``[dataset_start, dataset_end)``.

    ``channel_independent`` reads each as its :meth:`~st_instruct.data.stdata.STData.series_view`.

    ``every_channel``: keep every channel of each dataset instead, not as series (for what reads channels the
    forecast leaves out, e.g. AirGPT's wind graph). The dataset specification keys (``dataset_freq``,
    ``dataset_series_start``, ``dataset_adjacency``, ...; :data:`~st_instruct.data.loaders.DATASET_SPEC_KEYS`) apply
    to each dataset."""
    corpus = config.corpus()
    series = []
    spec = dataset_spec(config)
    for entry in corpus:
        channels = None if every_channel else entry.channels or config.dataset_channels
        try:
            data = get_dataset(entry.name, data_dir=config.dataset_dir, channels=channels, **spec)
        except STDataError as err:
            if spec and len(corpus) > 1:  # one spec for several datasets: say which one it broke
                raise STDataError(f"{err} (the dataset_* specification keys {sorted(spec)} apply to every dataset "
                                  f"of dataset_names; here they do not fit {entry.name!r}: give one path dataset "
                                  "per recipe when they need different specifications)") from err
            raise
        if config.dataset_start is not None or config.dataset_end is not None:
            data = data.slice_time(config.dataset_start, config.dataset_end)
        if config.channel_independent and not every_channel:
            data = data.series_view()
        series.append(data)
    return series
