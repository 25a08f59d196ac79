"""Named datasets: where their files come from, how they are checked, and where they are found on disk.

Every named dataset is one :class:`DatasetSpec` in the plain dict :data:`DATASETS`. A spec lists its files by
their path inside a *data directory* laid out like ``../shared/data`` (e.g. ``los_loop/los_speed.csv``), each
with its sha256 and the public raw URL it was taken from (GitHub, pinned to a commit where one is known).

Resolution order for a dataset's data directory (:func:`resolve_dataset_dir`): an explicit ``data_dir``
argument (used strictly: if it lacks the files that is an error) -> ``$ST_INSTRUCT_DATA`` -> ``../shared/data``
next to the repository root or next to the current directory -> the user cache (``$ST_INSTRUCT_CACHE``,
else ``$XDG_CACHE_HOME/st_instruct/data``, else ``~/.cache/st_instruct/data``). A directory counts only if it
holds every required file of the dataset. The cache is filled only by :func:`download_dataset`, never as a
side effect of loading.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from st_instruct.data.fetch import (
    ChecksumError,
    DownloadError,
    build_verified,
    fetch_verified,
    remove_empty_dirs,
    sha256_file,
)
from st_instruct.data.stdata import STDataError
from st_instruct.data.synthetic import SYNTHETIC_CITIES

__all__ = [  # ChecksumError, DownloadError and sha256_file live in fetch.py; they are part of this API too
    "ChecksumError", "DATASETS", "DataFile", "DatasetNotFoundError", "DatasetSpec", "DownloadError",
    "UnknownDatasetError", "cache_dir", "data_dir_candidates", "default_cache_dir", "download_dataset",
    "find_dataset_dir", "get_spec", "resolve_dataset_dir", "sha256_file", "shared_data_dirs", "synthetic_names",
]


class UnknownDatasetError(STDataError):
    """A dataset name that is neither registered nor a path."""


class DatasetNotFoundError(STDataError):
    """A registered dataset whose files are in none of the places looked at."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset.

    Args:
        path: path inside the data directory, e.g. ``los_loop/los_speed.csv`` (the local name, which may differ
            from the upstream name).
        sha256: hex digest of the file, ``None`` when no published checksum is known.
        url: public raw URL the file is downloaded from (``None`` for derived files).
        required: needed by the loader (``False`` for files only used to derive another).
        derive: ``build(data_dir, out_path)`` for a file made locally from other files of the same dataset.
    """

    path: str
    sha256: str | None
    url: str | None
    required: bool = True
    derive: Callable[[Path, Path], None] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a named dataset before loading it (shape ``[T, N, C]``, clock, files).

    ``sensors``: what measured each channel, one phrase per channel like ``units`` (``"taxi trip records"``,
    ``"inductive loop detectors"``, ``"weather station"``); loaded into ``STData.sensors`` and read by prompts as the
    ``sensor_kind`` of a facet. Empty when unknown.
    """

    name: str
    files: tuple[DataFile, ...]
    freq: str
    channels: tuple[str, ...]
    units: tuple[str, ...]
    null_value: float | None
    city: str
    description: str
    shape: tuple[int, int, int] | None = None
    start: str | None = None
    not_in_shared: str = ""  # extra hint for the not-found error when ../shared/data lacks the series
    sensors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sensors and len(self.sensors) != len(self.channels):
            raise ValueError(f"dataset spec {self.name!r}: sensors lists {len(self.sensors)} entries for "
                             f"{len(self.channels)} channels {self.channels}")


def _build_nycbike1_grid(root: Path, out: Path) -> None:
    """``NYCBike1_valtest_grid_TCHW.npz`` from ST-SSL's val/test windows, as written in ../shared/data/README.md.

    The windows are consecutive one-step-ahead samples, so the series is the first window's last input step
    followed by every target: ``concat(val.x[0, -1:], val.y[:, 0], test.y[:, 0])`` -> ``[1296, 128, 2]`` ->
    ``[T, 16, 8, 2]`` -> ``[T, C, H, W]`` int16, saved with ``np.savez_compressed(data=...)``.
    """
    with np.load(root / "nycbike1_stssl/val.npz") as val, np.load(root / "nycbike1_stssl/test.npz") as test:
        x = np.concatenate([val["x"], test["x"]])  # [W, 19, 128, 2] windows, one step apart
        y = np.concatenate([val["y"], test["y"]])  # [W, 1, 128, 2] their one-step-ahead targets
    series = np.concatenate([x[0, -1:], y[:, 0]])
    if not np.array_equal(x[1:, -1], y[:-1, 0]):  # window i's last input is window i-1's target
        raise STDataError("nycbike1-grid: val.npz/test.npz windows are not consecutive one-step samples; "
                          "cannot rebuild the grid series from them")
    grid = series.reshape(len(series), 16, 8, 2).transpose(0, 3, 1, 2).astype(np.int16)
    with open(out, "wb") as fh:  # a file object, so numpy does not append ".npz" to the temp name
        np.savez_compressed(fh, data=grid)


# Station -> (latitude, longitude, sha256 of its PRSA csv). The coordinates were transcribed by hand in
# ../shared/data (no public source file exists), so they live here and a download writes stations.csv
# out byte for byte (checked against the recorded sha256).
_BEIJING = {
    "Aotizhongxin": ("39.982", "116.397", "a94fbcfc71708b6ffdc033360163d91efb7f675e496f6b5860929aa96b96351b"),
    "Changping": ("40.217", "116.230", "a2e21402a6d95fb7043f87959e6e3dcbecb957aac356a6f8028a85b047c772e7"),
    "Dingling": ("40.292", "116.220", "3d8dff81f18a80d9f455876a785642bffe1e9b9924ec1e6b7ce8cca790432eeb"),
    "Dongsi": ("39.929", "116.417", "9c0020214425e5ee2a64d42f97a1f632e1d8f6b53ad50edd85a686cc7999f27e"),
    "Guanyuan": ("39.929", "116.339", "59390fee3b032597b387491f5230e7edb90a8558e30217ebd6d9befbe669fbf9"),
    "Gucheng": ("39.914", "116.184", "10ae48801ea55869fee56a48b885fb1127859c130551888d71673f34216ba951"),
    "Huairou": ("40.328", "116.628", "812dcbe848b3ba2c2d25731064797bff803c46eb0c602156a1fa044df136dc26"),
    "Nongzhanguan": ("39.937", "116.461", "572cf87b65ef543cd55d3a711b28474def224a46b0ec3fc8add8aaf13b67a487"),
    "Shunyi": ("40.127", "116.655", "520b59e4ead3b0cfe7f1ed673e30275de8441e999db6f413d5172d2277b8c15a"),
    "Tiantan": ("39.886", "116.407", "0743e34799cf1ee36195b73321b91baa5625276532e7263c588f68cdef3b4daa"),
    "Wanliu": ("39.987", "116.287", "0b1a6d754a07f0def2f55434ddfa3870dcd0063b7f766a6f66b6c11bb05a377a"),
    "Wanshouxigong": ("39.878", "116.352", "ab1d6a356d6997a45f6d657ad47de1e05a4a08d4a7015b38a329a90665ab74d0"),
}


def _write_beijing_stations(root: Path, out: Path) -> None:
    """``beijing_air/stations.csv``: station, latitude, longitude (degrees, 3 decimals)."""
    rows = "".join(f"{s},{lat},{lon}\n" for s, (lat, lon, _) in _BEIJING.items())
    out.write_text("station,latitude,longitude\n" + rows, encoding="utf-8")


_GH = "https://raw.githubusercontent.com"
_NYC = f"{_GH}/Evens1sen/Deep-NYC-Taxi-Bike/097aa2d8177392339b089ed940c6ccc2d469dd97"
_TGCN = f"{_GH}/lehaifeng/T-GCN/219a2346f5bf68d54d91a948e7a41a08f9edc46b/data"
_STSSL = f"{_GH}/Echo-Ji/ST-SSL/b3f3dfc48d12524c207cc89f4e242cb8aac081c0/data/NYCBike1"
_PRSA = f"{_GH}/Peiris94-dev/Beijing-Multi-Site-Air-Quality-Analysis/0aa46c055fcca7da49ebac9329435ffe674b74c3"
_PYGT = f"{_GH}/benedekrozemberczki/pytorch_geometric_temporal/2efcf106caa57b78cfe738c4eaeb61e027d0937d"
_ASTGCN2 = f"{_GH}/sqOsias/ASTGCN-2/bb4466c5f0103e13e03e7fa5939b9b948ddae072/data"
# ASTGNN's branch head is the URL whose bytes public projects verified (sha256 below); no commit is pinned
# because which commits hold the .npz could not be checked here. The checksum pins the content either way.
_ASTGNN = f"{_GH}/guoshnBJTU/ASTGNN/main/data"

BEIJING_STATIONS = tuple(_BEIJING)  # alphabetical, the order of ../shared/data/README.md
BEIJING_CHANNELS = ("PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM", "wd_deg")
_BEIJING_UNITS = ("ug/m3",) * 6 + ("degC", "hPa", "degC", "mm", "m/s", "degrees (0 = from north, clockwise)")
# the UCI files pair each station's pollutants with the nearest China Meteorological Administration station's weather
_BEIJING_SENSORS = ("air-quality monitoring stations",) * 6 + ("weather station",) * 6
_NYC_ZONES = (
    DataFile("nyc_manhattan_bike_taxi/W_adj_matrix.csv",
             "1822444cccf3545b6d2b410c0f36071f495a5f5ba6e65020f15f07359a60f9a9",
             f"{_NYC}/data-NYCZones/adjmatrix/W_adj_matrix.csv"),
    DataFile("nyc_manhattan_bike_taxi/manhattan_zones.csv",
             "8b06eb185812d95c19a84951861b9a40a16672b522694238ff364cd369e850ec",
             f"{_NYC}/data-NYCZones/zones/manhattan_zones.csv"),
)
_NYC_TEXT = ("{mode} in/out flow of the 69 Manhattan zones (TLC taxi zones), hourly 2019-01-01 to 2020-12-31; "
             "channel 0 = inflow (arrivals/drop-offs), 1 = outflow (departures/pick-ups). 2020 holds the COVID-19 "
             "collapse (a strong distribution shift). Source: Evens1sen/Deep-NYC-Taxi-Bike (ITSC 2022), from {raw}.")
_PEMS_TEXT = ("Caltrans PeMS District {d} ({area}) loop detectors as released with ASTGCN/STSGCN: {n} sensors, "
              "5-minute flow (vehicles/5 min), occupancy (fraction) and speed (mph), {period}. Graph: Gaussian "
              "kernel of the road distances in the from,to,cost edge list (sigma = std of the costs).")
_PEMS_MISSING = ("The PEMS0{d} series (PEMS0{d}.npz) is not in ../shared/data, only its edge list is.")

DATASETS: dict[str, DatasetSpec] = {
    "nyc-taxi": DatasetSpec(
        "nyc-taxi",
        (DataFile("nyc_manhattan_bike_taxi/nyctaxi_inoutflow_60min_2019_2020.npz",
                  "9d0734122f8e168e2f7f690ab4a857542c29fd9c888f27fe09fb48890b3f15f5",
                  f"{_NYC}/data-NYCTaxi/60min/201901-202012-NYCtaxi-inoutflow.npz"), *_NYC_ZONES),
        "1h", ("inflow", "outflow"), ("trips/hour", "trips/hour"), 0.0, "New York City (Manhattan)",
        _NYC_TEXT.format(mode="NYC yellow-taxi trip", raw="NYC TLC trip records"), (17544, 69, 2), "2019-01-01",
        sensors=("taxi trip records",) * 2),
    "nyc-bike": DatasetSpec(
        "nyc-bike",
        (DataFile("nyc_manhattan_bike_taxi/nycbike_inoutflow_60min_2019_2020.npz",
                  "ba1f0adafcc9258a6a64007511a4cec5f554a642b145138e1d89c252263cdbbb",
                  f"{_NYC}/data-NYCBike/60min/2019-2020-graph-inoutflow.npz"), *_NYC_ZONES),
        "1h", ("inflow", "outflow"), ("rides/hour", "rides/hour"), 0.0, "New York City (Manhattan)",
        _NYC_TEXT.format(mode="Citi Bike ride", raw="Citi Bike system data"), (17544, 69, 2), "2019-01-01",
        sensors=("bike-share trips",) * 2),
    "los-loop": DatasetSpec(
        "los-loop",
        (DataFile("los_loop/los_speed.csv", "7b732d86ae32b2930595becba28aff39dacbfb2197e250fc0332e1744ce2cbf4",
                  f"{_TGCN}/los_speed.csv"),
         DataFile("los_loop/los_adj.csv", "7a6eb41e10677992b5af50f5ab187c6c05c5c3a92cb973950cfddbf857361e76",
                  f"{_TGCN}/los_adj.csv")),
        "5min", ("speed",), ("mph",), 0.0, "Los Angeles",
        "Los-loop: highway speed of 207 Los Angeles County loop detectors (the METR-LA sensors), 5-minute, "
        "2012-03-01 to 2012-03-07 (T-GCN, Zhao et al. 2019); gaps were filled by linear interpolation upstream. "
        "Source: lehaifeng/T-GCN.", (2016, 207, 1), "2012-03-01", sensors=("inductive loop detectors",)),
    "nycbike1-grid": DatasetSpec(
        "nycbike1-grid",
        (DataFile("nycbike1_stssl/NYCBike1_valtest_grid_TCHW.npz",
                  "4e5781e58353180ba3e8cee80696ab759cdaf93f62119726d5f332261fa4a41b", None,
                  derive=_build_nycbike1_grid),
         DataFile("nycbike1_stssl/adj_mx.npz", "21e7556c2a05cbd41312154fc82ca07539b51be3299a9c53f5d19f676ba487ec",
                  f"{_STSSL}/adj_mx.npz"),
         DataFile("nycbike1_stssl/val.npz", "5a01b775da98029da9e6db10932f85fa295c82d173602c8fe677956fd3a394ac",
                  f"{_STSSL}/val.npz", required=False),
         DataFile("nycbike1_stssl/test.npz", "076c2062e4fc8c8fd14a48262ded5aecb40704cf6969a5c6c7c358da34699378",
                  f"{_STSSL}/test.npz", required=False)),
        "1h", ("inflow", "outflow"), ("rides/hour", "rides/hour"), 0.0, "New York City",
        "NYCBike1 (BikeNYC of ST-ResNet, 2014): Citi Bike in/out flow on a 16x8 grid, hourly; the last 1296 hours "
        "of 2014-04-01..2014-09-30 rebuilt from ST-SSL's validation and test windows (not the training set). "
        "The start (2014-08-08 00:00) is derived from the last step being 2014-09-30 23:00. "
        "Source: Echo-Ji/ST-SSL.", (1296, 128, 2), "2014-08-08", sensors=("bike-share trips",) * 2),
    "beijing-air": DatasetSpec(
        "beijing-air",
        tuple(DataFile(f"beijing_air/PRSA_Data_{s}_20130301-20170228.csv", sha,
                       f"{_PRSA}/PRSA_Data_{s}_20130301-20170228.csv") for s, (_, _, sha) in _BEIJING.items())
        + (DataFile("beijing_air/stations.csv", "dbbadf03a070fbfa5f7e491012bb712d58aedb62e491be6524e9978c0ece4c8e",
                    None, derive=_write_beijing_stations),),
        "1h", BEIJING_CHANNELS, _BEIJING_UNITS, None, "Beijing",
        "Beijing multi-site air quality (UCI, Zhang et al. 2017, CC BY 4.0): 12 monitoring stations, hourly "
        "2013-03-01 to 2017-02-28, six pollutants plus weather; wind direction as degrees (wd_deg). Missing values "
        "are NaN. Station coordinates were transcribed by hand (see _BEIJING). Graph: Gaussian "
        "kernel of haversine distances.", (35064, 12, 12), "2013-03-01", sensors=_BEIJING_SENSORS),
    "pedalme-london": DatasetSpec(
        "pedalme-london",
        (DataFile("pedalme_london/pedalme_london.json",
                  "8c42b893441901fb805c4f0f937543d5bb9297884ac3dec7622a3e9f7c35a79b",
                  f"{_PYGT}/dataset/pedalme_london.json"),),
        "7D", ("demand",), ("transformed deliveries",), None, "London",
        "PedalMe London bicycle-delivery demand at 15 locations over 35 weeks, as shipped by PyTorch Geometric "
        "Temporal (MIT): values are transformed (log-scale) weekly counts, not raw counts. The calendar is "
        "unknown (start None). Dense weighted graph from the file's edges/weights. Only good for smoke tests.",
        (35, 15, 1), None, sensors=("bicycle-delivery records",)),
}
for _d, _n, _t, _area, _period, _start, _sha_npz, _sha_csv in (
    ("4", 307, 16992, "San Francisco Bay Area", "2018-01-01 to 2018-02-28", "2018-01-01",
     "95a3c9b720fffdb85f0330d09bfab41b0b3cad0ca86c0d7d5f3accacb4ac999a",
     "68ffaa80447eb34428a9999dc28363c61406ec0fd714686d0582d2386ac6f5f7"),
    ("8", 170, 17856, "San Bernardino", "2016-07-01 to 2016-08-31", "2016-07-01",
     "e1d03ce74e9fb79149e6e7c37c680214822c4a285baa2f42278cacabcd25c075",
     "859d68e7583ed4e6016588eaaca494d3ece286dae361614c5c1833017f87eaa7"),
):
    DATASETS[f"pems0{_d}"] = DatasetSpec(
        f"pems0{_d}",
        (DataFile(f"pems0{_d}/PEMS0{_d}.npz", _sha_npz, f"{_ASTGNN}/PEMS0{_d}/PEMS0{_d}.npz"),
         DataFile(f"pems0{_d}/PEMS0{_d}.csv", _sha_csv, f"{_ASTGCN2}/PEMS0{_d}/distance.csv")),
        "5min", ("flow", "occupancy", "speed"), ("vehicles/5min", "fraction", "mph"), 0.0, "California",
        _PEMS_TEXT.format(d=_d, area=_area, n=_n, period=_period), (_t, _n, 3), _start, _PEMS_MISSING.format(d=_d),
        sensors=("inductive loop detectors",) * 3)


# ---------------------------------------------------------------------------------------------------- names
def synthetic_names() -> list[str]:
    """``synthetic`` (the default city) plus ``synthetic-<city>`` for every other city of the synthetic generator."""
    return ["synthetic"] + [f"synthetic-{city}" for city in SYNTHETIC_CITIES if city != "default"]


def is_registered_name(name: str) -> bool:
    """Whether ``name`` is a registered dataset or a synthetic city (rather than a path)."""
    return name in DATASETS or name in synthetic_names()


def unknown_name_message(name: str, extra_hint: str = "") -> str:
    """``unknown dataset 'nyc-txi'; did you mean 'nyc-taxi'? Known: ...`` (close names by difflib)."""
    known = list(DATASETS) + synthetic_names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown dataset {name!r}{hint} Known: {', '.join(known)}{extra_hint}"


def get_spec(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` called ``name``; :class:`UnknownDatasetError` with suggestions if none."""
    if name not in DATASETS:
        raise UnknownDatasetError(unknown_name_message(name))
    return DATASETS[name]


# ---------------------------------------------------------------------------------------------------- where
def cache_dir(kind: str) -> Path:
    """Where st_instruct caches ``kind``: ``data`` (downloaded datasets), ``built`` (instruction datasets),
    ``rationales`` (teacher texts) or ``models`` (converted backbones). ``$ST_INSTRUCT_MODEL_CACHE`` is the models'
    folder when set; ``$ST_INSTRUCT_CACHE`` holds the downloads themselves and every other kind in a sub-folder;
    otherwise ``$XDG_CACHE_HOME/st_instruct/<kind>`` (``~/.cache`` without ``$XDG_CACHE_HOME``). The one rule of
    every cache folder."""
    if kind == "models" and os.environ.get("ST_INSTRUCT_MODEL_CACHE"):
        return Path(os.environ["ST_INSTRUCT_MODEL_CACHE"]).expanduser()
    if os.environ.get("ST_INSTRUCT_CACHE"):
        root = Path(os.environ["ST_INSTRUCT_CACHE"]).expanduser()
        return root if kind == "data" else root / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "st_instruct" / kind


def default_cache_dir() -> Path:
    """Where downloaded datasets go: :func:`cache_dir` ``("data")``."""
    return cache_dir("data")


def shared_data_dirs() -> list[Path]:
    """``../shared/data`` relative to the repository root and relative to the current directory (deduplicated)."""
    repo_root = Path(__file__).resolve().parents[2]  # st_instruct/data/registry.py -> the repository root
    dirs: list[Path] = []
    for d in (repo_root.parent / "shared" / "data", Path.cwd().resolve().parent / "shared" / "data"):
        if d not in dirs:
            dirs.append(d)
    return dirs


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(label, directory)`` in resolution order; with an explicit ``data_dir`` only that one."""
    if data_dir is not None:
        return [("data_dir argument", Path(data_dir).expanduser())]
    out: list[tuple[str, Path]] = []
    if os.environ.get("ST_INSTRUCT_DATA"):
        out.append(("$ST_INSTRUCT_DATA", Path(os.environ["ST_INSTRUCT_DATA"]).expanduser()))
    out += [("../shared/data", d) for d in shared_data_dirs()]
    out.append(("user cache", default_cache_dir()))
    return out


def _has_files(root: Path, spec: DatasetSpec) -> bool:
    return all((root / f.path).is_file() for f in spec.files if f.required)


def find_dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first data directory (in resolution order) holding all required files of ``name``, else ``None``."""
    spec = get_spec(name)
    for _, root in data_dir_candidates(data_dir):
        if _has_files(root, spec):
            return root
    return None


def resolve_dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Like :func:`find_dataset_dir` but raises :class:`DatasetNotFoundError` saying where it looked and what to do."""
    root = find_dataset_dir(name, data_dir)
    if root is not None:
        return root
    spec = get_spec(name)
    needed = ", ".join(f.path for f in spec.files if f.required)
    looked = "; ".join(f"{label}: {root}" for label, root in data_dir_candidates(data_dir))
    msg = f"dataset {name!r} not found: no directory holds all of its files ({needed}). Looked in {looked}. "
    if spec.not_in_shared:
        msg += f"{spec.not_in_shared} "
    msg += (f"Run `st-instruct data download {name}` (or download_dataset({name!r})) to fetch it into the cache, "
            "or point $ST_INSTRUCT_DATA / data_dir= at a directory laid out like ../shared/data.")
    raise DatasetNotFoundError(msg)


# ---------------------------------------------------------------------------------------------------- download
@dataclass(frozen=True)
class _Plan:
    file: DataFile
    expected: str | None


def _expected_checksums(spec: DatasetSpec, expected_sha256: str | Mapping[str, str] | None,
                        allow_unverified: bool) -> list[_Plan]:
    """Pair every file with the sha256 it must have; refuse files nobody can vouch for before downloading."""
    if isinstance(expected_sha256, str):
        overrides = {spec.files[0].path: expected_sha256}  # a bare checksum pins the main series file
    else:
        overrides = {}
        by_name = {Path(f.path).name: f.path for f in spec.files}
        for key, value in (expected_sha256 or {}).items():
            path = key if key in {f.path for f in spec.files} else by_name.get(key)
            if path is None:
                raise DownloadError(f"expected_sha256 names {key!r}, which is not a file of dataset {spec.name!r}; "
                                    f"its files are {[f.path for f in spec.files]}")
            overrides[path] = value
    plans = [_Plan(f, overrides.get(f.path, f.sha256)) for f in spec.files]
    unverified = [p.file.path for p in plans if p.expected is None and p.file.derive is None]
    if unverified and not allow_unverified:
        raise DownloadError(
            f"no published sha256 is known for {', '.join(unverified)} of dataset {spec.name!r}, so a download "
            "cannot be verified. Pass the checksum you trust (expected_sha256= / --sha256) or accept the file "
            "unverified (allow_unverified=True / --allow-unverified); the computed sha256 is then printed so "
            "you can pin it.")
    return plans


def download_dataset(name: str, cache_dir: str | os.PathLike | None = None, base_url: str | None = None, *,
                     expected_sha256: str | Mapping[str, str] | None = None, allow_unverified: bool = False) -> Path:
    """Download the files of a named dataset into ``cache_dir`` (default :func:`default_cache_dir`) and verify them.

    Args:
        name: a key of :data:`DATASETS`.
        cache_dir: data directory to fill, laid out like ``../shared/data``.
        base_url: a mirror laid out like ``../shared/data``: file ``p`` is fetched from ``{base_url}/{p}`` instead
            of its public URL (default ``$ST_INSTRUCT_DOWNLOAD_BASE``; tests serve files from 127.0.0.1).
        expected_sha256: a checksum for the main series file, or ``{file path or name: sha256}``; overrides the
            registry (use it to pin a file the registry has no checksum for).
        allow_unverified: accept files with no known checksum; their computed sha256 is printed.
    Returns:
        the data directory, ready to be passed as ``data_dir=`` (it is also found by the resolution order).

    Files already present with the right checksum are kept. Each download streams to a temp file, is hashed,
    and is moved into place only if its sha256 matches; on a mismatch :class:`ChecksumError` names the file and
    both checksums and nothing is left behind. Derived files are rebuilt locally from their (verified) sources.
    """
    spec = get_spec(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base_url = base_url or os.environ.get("ST_INSTRUCT_DOWNLOAD_BASE") or None
    plans = _expected_checksums(spec, expected_sha256, allow_unverified)
    created = [p for p in [root, *root.parents] if not p.exists()]
    created += [d for f in spec.files for d in [root / Path(f.path).parent] if not d.exists() and d not in created]
    try:
        for plan in sorted(plans, key=lambda p: p.file.derive is not None):  # sources before derived files
            target = root / plan.file.path
            if target.is_file() and plan.expected is not None and sha256_file(target) == plan.expected.lower():
                continue
            if plan.file.derive is not None:
                build_verified(plan.file.derive, root, target, plan.expected)
                continue
            url = f"{base_url.rstrip('/')}/{plan.file.path}" if base_url else plan.file.url
            fetch_verified(url, target, plan.expected, plan.file.path)
    except BaseException:
        remove_empty_dirs(created)
        raise
    return root
