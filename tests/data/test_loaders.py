"""get_dataset: the named datasets of ../shared/data with their documented values, and the generic file loaders."""

import numpy as np
import pandas as pd
import pytest
from real_data import require_real_data

from st_instruct.configs import DataConfig
from st_instruct.data import registry
from st_instruct.data.loaders import WIND_DEGREES, get_dataset, list_datasets, load_series
from st_instruct.data.registry import DatasetNotFoundError, UnknownDatasetError
from st_instruct.data.stdata import STDataError


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """Real data come from $ST_INSTRUCT_DATA or ../shared/data, never from the user's download cache."""
    for var in ("ST_INSTRUCT_DOWNLOAD_BASE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ST_INSTRUCT_CACHE", str(tmp_path / "empty-cache"))


@pytest.fixture(scope="module")
def beijing():
    """Loaded once: reading the 12 station CSVs is the slowest step of this file (about a second)."""
    require_real_data("beijing-air")
    return get_dataset("beijing-air")


# ------------------------------------------------------------------------------------------------ named
def test_nyc_bike_documented_values():
    require_real_data("nyc-bike")
    d = get_dataset("nyc-bike")
    v = d.values
    assert v.shape == (17544, 69, 2) and v.dtype == np.float32
    assert v.min() == 0 and v.max() == 677 and v.mean() == pytest.approx(25.46, abs=0.01)
    assert int((v == 0).sum()) == 572964
    assert d.channels == ["inflow", "outflow"] and d.units == ["rides/hour"] * 2 and d.null_value == 0
    ts = d.time_index()
    assert ts[0] == pd.Timestamp("2019-01-01 00:00") and ts[-1] == pd.Timestamp("2020-12-31 23:00")
    adj = d.dense_adjacency()
    assert np.array_equal(adj, adj.T) and int((adj == 1).sum()) == 332 and set(np.unique(adj)) == {0, 1}
    assert d.node_names[0] == "Alphabet City" and d.node_descriptions[0].startswith("Manhattan taxi zone 4 'Alphabet")
    assert d.coords is None and d.city == "New York City (Manhattan)"


def test_nyc_taxi_documented_values():
    require_real_data("nyc-taxi")
    d = get_dataset("nyc-taxi")
    assert d.values.shape == (17544, 69, 2) and d.values.max() == 2267
    assert d.values.mean() == pytest.approx(80.50, abs=0.01) and int((d.values == 0).sum()) == 367885
    assert d.units == ["trips/hour"] * 2


def test_los_loop_documented_values():
    require_real_data("los-loop")
    d = get_dataset("los-loop")
    v = d.values
    assert v.shape == (2016, 207, 1) and v.min() == 1 and v.max() == 70 and (v == 0).sum() == 0
    assert v.mean() == pytest.approx(58.89, abs=0.01)
    assert d.node_names[:2] == ["773869", "767541"] and d.freq == "5min" and d.null_value == 0
    assert d.time_index()[-1] == pd.Timestamp("2012-03-07 23:55")
    adj = d.dense_adjacency()
    assert int((adj != 0).sum()) == 2833 and np.allclose(adj, adj.T)


def test_nycbike1_grid_round_trips_to_the_tchw_array():
    root = require_real_data("nycbike1-grid")
    d = get_dataset("nycbike1-grid")
    with np.load(root / "nycbike1_stssl/NYCBike1_valtest_grid_TCHW.npz") as z:
        grid = z["data"]
    assert d.values.shape == (1296, 128, 2) and d.grid_shape == (16, 8)
    assert np.array_equal(d.as_grid(), grid)
    assert d.values.min() == 0 and d.values.max() == 239 and d.values.mean() == pytest.approx(10.20, abs=0.01)
    assert d.coord_kind == "grid" and d.node_names[9] == "cell (1, 1)" and tuple(d.coords[9]) == (1, 1)
    assert np.array_equal(d.values[:, 9, 0], grid[:, 0, 1, 1])  # node = row * 8 + col
    with np.load(root / "nycbike1_stssl/adj_mx.npz") as z:
        assert np.array_equal(d.dense_adjacency(), z["adj_mx"])
    assert d.time_index()[-1] == pd.Timestamp("2014-09-30 23:00")


def test_beijing_air_documented_values(beijing):
    d = beijing
    assert d.values.shape == (35064, 12, 12) and d.null_value is None
    assert d.node_names[0] == "Aotizhongxin" and d.node_names == sorted(d.node_names)
    ch = d.channels.index
    assert d.channels[-1] == "wd_deg" and d.channels[-2] == "WSPM"
    assert np.isnan(d.values[:, 0, ch("PM2.5")]).sum() == 925
    assert np.isnan(d.values[:, 0, ch("WSPM")]).sum() == 14 and np.isnan(d.values[:, 0, ch("CO")]).sum() == 1776
    assert np.nanmax(d.values[:, 0, ch("WSPM")]) == pytest.approx(11.2)
    assert d.values[0, 0, ch("wd_deg")] == 337.5  # first row: "NNW"
    assert set(np.unique(d.values[..., ch("wd_deg")][~np.isnan(d.values[..., ch("wd_deg")])])) <= set(
        WIND_DEGREES.values())
    ts = d.time_index()
    assert ts[0] == pd.Timestamp("2013-03-01") and ts[-1] == pd.Timestamp("2017-02-28 23:00")
    assert d.coord_kind == "latlon" and d.coords[0].tolist() == [39.982, 116.397]
    adj = d.dense_adjacency()
    assert np.allclose(adj, adj.T) and np.all(np.diag(adj) == 1) and d.meta["adjacency_sigma_km"] > 0


def test_pedalme_london():
    require_real_data("pedalme-london")
    d = get_dataset("pedalme-london")
    assert d.values.shape == (35, 15, 1) and d.freq == "7D" and d.start is None and not d.has_calendar
    assert np.allclose(d.dense_adjacency(), d.dense_adjacency().T) and d.city == "London"


def test_pems_series_is_not_in_shared_data(monkeypatch):
    monkeypatch.delenv("ST_INSTRUCT_DATA", raising=False)
    shared = [d for d in registry.shared_data_dirs() if not (d / "pems04/PEMS04.npz").exists()]
    monkeypatch.setattr(registry, "shared_data_dirs", lambda: shared)
    with pytest.raises(DatasetNotFoundError, match=r"PEMS04.npz\) is not in ../shared/data.*data download pems04"):
        get_dataset("pems04")


def _fake_pems08(root, num_nodes=170, steps=24):
    """A small stand-in with the real layout (the real series is not in ../shared/data)."""
    (root / "pems08").mkdir(parents=True)
    values = np.random.default_rng(0).uniform(0, 500, (steps, num_nodes, 3))
    np.savez(root / "pems08/PEMS08.npz", data=values)
    rows = "".join(f"{i},{i + 1},{100.0 + i}\n" for i in range(169))
    (root / "pems08/PEMS08.csv").write_text("from,to,cost\n" + rows)
    return values


def test_pems_loader_on_a_fabricated_file(tmp_path):
    values = _fake_pems08(tmp_path)
    d = get_dataset("pems08", data_dir=tmp_path)
    assert d.values.shape == (24, 170, 3) and np.allclose(d.values, values)
    assert d.channels == ["flow", "occupancy", "speed"] and d.freq == "5min" and d.null_value == 0
    assert d.start == pd.Timestamp("2016-07-01")
    adj = d.dense_adjacency()
    assert np.allclose(adj, adj.T) and adj[0, 1] > 0 and adj[0, 2] == 0
    flow = get_dataset("pems08", data_dir=tmp_path, channels=["flow"], null_value=float("nan"), freq="10min")
    assert flow.channels == ["flow"] and flow.null_value is None and flow.freq == "10min"


def test_pems_loader_rejects_a_wrong_node_count(tmp_path):
    _fake_pems08(tmp_path, num_nodes=100)
    with pytest.raises(STDataError, match=r"PEMS08.npz: key 'data' must be \[T, 170, 3\], found \(24, 100, 3\)"):
        get_dataset("pems08", data_dir=tmp_path)


def test_unknown_name_suggests_names_and_paths():
    with pytest.raises(UnknownDatasetError, match=r"'nyc-txi'; did you mean 'nyc-taxi'.*Known: .*los-loop.*path"):
        get_dataset("nyc-txi")
    assert issubclass(UnknownDatasetError, ValueError)


def test_synthetic_names():
    synthetic = pytest.importorskip("st_instruct.data.synthetic")
    d = get_dataset("synthetic")
    assert d.values.ndim == 3 and d.num_nodes > 1
    city = next(iter(synthetic.SYNTHETIC_CITIES))
    assert get_dataset(f"synthetic-{city}").values.ndim == 3
    with pytest.raises(UnknownDatasetError, match="synthetic-atlantis"):
        get_dataset("synthetic-atlantis")


def test_list_datasets_reports_availability(tmp_path):
    rows = {r["name"]: r for r in list_datasets()}
    assert set(registry.DATASETS) <= set(rows)
    assert rows["pems04"]["shape"] == [16992, 307, 3] and rows["pems04"]["freq"] == "5min"
    for name in registry.DATASETS:
        assert rows[name]["available"] == (registry.find_dataset_dir(name) is not None)
    assert rows["synthetic"]["where"] == "generated" or "synthetic" not in rows


# ------------------------------------------------------------------------------------------------ a corpus
def test_a_name_with_channels_in_brackets_loads_those_channels_of_that_dataset_only():
    config = DataConfig(dataset_names=["synthetic-small[outflow]", "synthetic-grid"], dataset_channels=["inflow"])
    small, grid = load_series(config)
    assert small.name == "synthetic-small" and small.channels == ["outflow"] and small.values.shape == (1344, 12, 1)
    np.testing.assert_array_equal(small.values[..., 0], get_dataset("synthetic-small").values[..., 1])
    assert grid.name == "synthetic-grid" and grid.channels == ["inflow"]  # the plain entry: dataset_channels
    every = load_series(config, every_channel=True)  # what AirGPT's wind graph reads
    assert [data.channels for data in every] == [["inflow", "outflow"]] * 2
    with pytest.raises(STDataError, match=r"unknown channel 'PM2.5'; available channels: \['inflow', 'outflow'\]"):
        load_series(DataConfig(dataset_names=["synthetic-small[PM2.5]"]))


def test_leave_out_is_never_read(datasets_read):
    read = datasets_read
    names = ["synthetic-small", "synthetic-grid[inflow]", "synthetic-motorway"]
    assert [d.name for d in load_series(DataConfig(dataset_names=names))] == [
        "synthetic-small", "synthetic-grid", "synthetic-motorway"]
    assert read == ["synthetic-small", "synthetic-grid", "synthetic-motorway"]  # the recorder sees every read
    read.clear()
    assert [d.name for d in load_series(DataConfig(dataset_names=names, leave_out="synthetic-grid"))] == [
        "synthetic-small", "synthetic-motorway"]
    assert read == ["synthetic-small", "synthetic-motorway"]


# ------------------------------------------------------------------------------------------------ generic files
def test_npz_with_data_key_and_with_one_array(tmp_path):
    np.savez(tmp_path / "a.npz", data=np.ones((6, 4, 2)), other=np.zeros(3))
    np.savez(tmp_path / "b.npz", whatever=np.ones((6, 4)))
    a, b = get_dataset(str(tmp_path / "a.npz")), get_dataset(tmp_path / "b.npz")
    assert a.values.shape == (6, 4, 2) and a.name == "a" and b.values.shape == (6, 4, 1)
    assert a.freq is None and a.start is None and not a.has_calendar and "calendar is unknown" in a.description


def test_npz_with_several_arrays_lists_the_keys(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.ones((6, 4)), y=np.ones((6, 4)))
    with pytest.raises(STDataError, match=r"x.npz holds several arrays \['x', 'y'\].*'data'"):
        get_dataset(str(tmp_path / "x.npz"))


def test_corrupt_npz_names_the_file(tmp_path):
    (tmp_path / "x.npz").write_text("this is not a zip")
    with pytest.raises(STDataError, match=rf"cannot read {tmp_path}/x.npz as .npz"):
        get_dataset(str(tmp_path / "x.npz"))


def test_npy_and_wrong_rank(tmp_path):
    np.save(tmp_path / "ok.npy", np.arange(12.0).reshape(4, 3))
    d = get_dataset(str(tmp_path / "ok.npy"), freq="5min", series_start="2024-01-01")
    assert d.values.shape == (4, 3, 1) and d.time_index()[-1] == pd.Timestamp("2024-01-01 00:15")
    np.save(tmp_path / "grid.npy", np.zeros((4, 2, 3, 3)))
    with pytest.raises(STDataError, match=r"grid.npy: expected an array \[T, N\] or \[T, N, C\], found rank 4"):
        get_dataset(str(tmp_path / "grid.npy"))


def test_h5_metr_la_style_uses_timestamps_and_names(tmp_path):
    h5py = pytest.importorskip("h5py")
    ts = pd.date_range("2012-03-01", periods=10, freq="5min")
    with h5py.File(tmp_path / "metr.h5", "w") as f:
        f["df/block0_values"] = np.arange(30.0).reshape(10, 3)
        f["df/axis1"] = ts.as_unit("ns").asi8
        f["df/axis0"] = np.array([b"773869", b"767541", b"767542"])
    d = get_dataset(str(tmp_path / "metr.h5"))
    assert d.values.shape == (10, 3, 1) and d.node_names == ["773869", "767541", "767542"]
    assert d.time_index().equals(ts) and pd.Timedelta(d.freq) == pd.Timedelta("5min")
    with h5py.File(tmp_path / "plain.hdf5", "w") as f:
        f["data"] = np.ones((5, 2, 2))
    assert get_dataset(str(tmp_path / "plain.hdf5")).values.shape == (5, 2, 2)
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(STDataError, match=r"cannot read .*bad.h5 as .h5"):
        get_dataset(str(tmp_path / "bad.h5"))


def test_csv_with_header_and_timestamps(tmp_path):
    (tmp_path / "s.csv").write_text("time,a,b\n2024-01-01 00:00,1,2\n2024-01-01 00:30,3,\n2024-01-01 01:00,5,6\n")
    d = get_dataset(str(tmp_path / "s.csv"))
    assert d.values.shape == (3, 2, 1) and d.node_names == ["a", "b"] and np.isnan(d.values[1, 1, 0])
    assert pd.Timedelta(d.freq) == pd.Timedelta("30min") and d.start == pd.Timestamp("2024-01-01")
    (tmp_path / "nohead.csv").write_text("2024-01-01 00:00,1,2\n2024-01-01 00:05,3,4\n2024-01-01 00:10,5,6\n")
    n = get_dataset(str(tmp_path / "nohead.csv"))
    assert n.values.shape == (3, 2, 1) and n.values[0, 0, 0] == 1 and pd.Timedelta(n.freq) == pd.Timedelta("5min")
    (tmp_path / "plain.csv").write_text("1,2,3\n4,5,6\n")
    p = get_dataset(str(tmp_path / "plain.csv"))
    assert p.values.shape == (2, 3, 1) and p.node_names is None and p.values[0, 0, 0] == 1


def test_csv_non_monotonic_timestamps_are_rejected_naming_the_file(tmp_path):
    (tmp_path / "s.csv").write_text("time,a\n2024-01-01 01:00,1\n2024-01-01 00:00,2\n2024-01-01 02:00,3\n")
    with pytest.raises(STDataError, match=r"s.csv: .*strictly increasing"):
        get_dataset(str(tmp_path / "s.csv"))


def test_csv_with_text_cell_names_file_and_cell(tmp_path):
    (tmp_path / "s.csv").write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(STDataError, match=r"s.csv: cell at data row 2, column 2 is 'oops'"):
        get_dataset(str(tmp_path / "s.csv"))


def test_unsupported_extension_and_directory(tmp_path):
    (tmp_path / "s.txt").write_text("1,2\n")
    with pytest.raises(STDataError, match=r"unsupported file type '.txt' for .*s.txt"):
        get_dataset(str(tmp_path / "s.txt"))
    with pytest.raises(STDataError, match="is a directory"):
        get_dataset(str(tmp_path))


# ------------------------------------------------------------------------------------------------ adjacency files
@pytest.fixture
def series(tmp_path):
    np.save(tmp_path / "s.npy", np.ones((5, 3)))
    return str(tmp_path / "s.npy")


def test_adjacency_matrix_files(tmp_path, series):
    m = np.array([[0, 1, 0], [1, 0, 2], [0, 2, 0]], dtype=float)
    np.save(tmp_path / "a.npy", m)
    np.savez(tmp_path / "a.npz", adj_mx=m)
    pd.DataFrame(m).to_csv(tmp_path / "noheader.csv", header=False, index=False)
    pd.DataFrame(m, columns=["x", "y", "z"]).to_csv(tmp_path / "named.csv", index=False)
    pd.DataFrame(m).to_csv(tmp_path / "indexheader.csv", index=False)  # header row 0,1,2 like W_adj_matrix.csv
    for f in ("a.npy", "a.npz", "noheader.csv", "named.csv", "indexheader.csv"):
        d = get_dataset(series, adjacency=str(tmp_path / f))
        assert np.array_equal(d.dense_adjacency(), m), f
        assert d.meta["adjacency_source"].endswith(f)
    assert np.array_equal(get_dataset(series, adjacency=m).dense_adjacency(), m)


def test_adjacency_edge_lists(tmp_path, series):
    (tmp_path / "edges.csv").write_text("from,to,cost\n0,1,10\n1,2,30\n")
    adj = get_dataset(series, adjacency=str(tmp_path / "edges.csv")).dense_adjacency()
    assert np.allclose(adj, adj.T) and adj[0, 1] > adj[1, 2] > 0 and adj[0, 2] == 0
    (tmp_path / "pairs.csv").write_text("0,1\n1,2\n2,0\n0,2\n")  # 4 rows != 3 nodes, 2 columns: an edge list
    pairs = get_dataset(series, adjacency=str(tmp_path / "pairs.csv")).dense_adjacency()
    assert pairs[0, 1] == pairs[1, 0] == pairs[0, 2] == 1 and pairs[1, 1] == 0
    (tmp_path / "far.csv").write_text("from,to,cost\n0,7,1\n")
    with pytest.raises(STDataError, match=r"far.csv \(read as a from,to\[,cost\] edge list\).*outside 0..2"):
        get_dataset(series, adjacency=str(tmp_path / "far.csv"))


def test_adjacency_shape_mismatch_names_the_file(tmp_path, series):
    np.save(tmp_path / "big.npy", np.eye(4))
    with pytest.raises(STDataError, match=r"adjacency file .*big.npy has shape \(4, 4\) but the dataset has N=3"):
        get_dataset(series, adjacency=str(tmp_path / "big.npy"))


def test_adjacency_with_nan_names_the_file(tmp_path, series):
    (tmp_path / "nan.csv").write_text("0,1,0\n1,0,nan\n0,1,0\n")
    with pytest.raises(STDataError, match=r"adjacency file .*nan.csv contains NaN or inf \(first at row 1, column 2"):
        get_dataset(series, adjacency=str(tmp_path / "nan.csv"))


def test_start_cannot_move_timestamps(tmp_path):
    (tmp_path / "s.csv").write_text("time,a\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 02:00,3\n")
    with pytest.raises(STDataError, match="has its own timestamps.*--series-start"):
        get_dataset(str(tmp_path / "s.csv"), series_start="2020-01-01")
    with pytest.raises(STDataError, match="timestamps every 1h; --freq \\(dataset_freq\\) 15min contradicts"):
        get_dataset(str(tmp_path / "s.csv"), freq="15min")
    assert get_dataset(str(tmp_path / "s.csv"), freq="H").freq == "1h"  # agrees with the timestamps


@pytest.mark.parametrize("freq,rows", [("h", 60), ("D", 60)])
def test_hourly_and_daily_csv_timestamps_give_a_canonical_freq(tmp_path, freq, rows):
    from st_instruct.data.windows import build_windows

    stamps = pd.date_range("2024-01-01", periods=rows, freq=freq)
    lines = "".join(f"{t},{i % 7},{i % 5}\n" for i, t in enumerate(stamps))
    (tmp_path / "s.csv").write_text("time,a,b\n" + lines)
    d = get_dataset(str(tmp_path / "s.csv"))
    assert d.freq == {"h": "1h", "D": "1D"}[freq] and pd.Timedelta(d.freq) == pd.Timedelta(stamps.freq)
    assert d.steps_per_day == {"h": 24, "D": 1}[freq]
    build_windows(d, 3, 2)  # was "unit abbreviation w/o a number" (pd.Timedelta("h"))
