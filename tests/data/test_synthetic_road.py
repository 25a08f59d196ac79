"""Road cities of LargeST's shape (``ca`` 8,600 sensors, ``gla`` 3,834, ``sd`` 716; 15-minute flow): the road graph,
a sparse adjacency end to end, the series' structure on the smallest, and memory and time on the largest."""

import re
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse import csgraph

from st_instruct.data.loaders import get_dataset, list_datasets
from st_instruct.data.registry import is_registered_name, synthetic_names
from st_instruct.data.synthetic import SYNTHETIC_CITIES, SyntheticCitySpec, generate_synthetic, synthetic_graph
from st_instruct.data.windows import calendar_features

LARGEST = {"ca": 8600, "gla": 3834, "sd": 716}


@pytest.fixture(scope="module")
def sd():
    return generate_synthetic("sd", seed=0)


def _off_diagonal(adjacency):
    off = sp.csr_array(adjacency, copy=True)
    off.setdiag(0)
    off.eliminate_zeros()
    return off


def _tow_residuals(data):
    """``[T, N]`` log residual from the per-node time-of-week mean (0 where missing), centred per node."""
    tod, dow = calendar_features(data)
    tow = dow * data.steps_per_day + tod
    observed = data.mask()[:, :, 0]
    x = np.log1p(data.values[:, :, 0].astype(np.float64))
    total = np.zeros((7 * data.steps_per_day, data.num_nodes))
    count = np.zeros_like(total)
    np.add.at(total, tow, np.where(observed, x, 0.0))
    np.add.at(count, tow, observed)
    res = np.where(observed, x - (total / np.maximum(count, 1))[tow], np.nan)
    return np.where(np.isnan(res), 0.0, res - np.nanmean(res, axis=0)), observed


# ---------------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize(("key", "nodes"), sorted(LARGEST.items()))
def test_road_cities_have_largest_shape(key, nodes):
    spec = SYNTHETIC_CITIES[key]
    assert spec.num_nodes == nodes and spec.graph == "road" and spec.freq == "15min"
    assert spec.channels == ("flow",) and spec.units == ("vehicles/15min",) and spec.node_label == "Sensor"
    assert spec.steps_per_day == 96 and spec.num_steps == spec.num_weeks * 7 * 96
    assert spec.num_steps * spec.num_nodes <= 25_000_000  # memory stays low: at most ~4 weeks of ca
    name = f"synthetic-{key}"
    assert name in synthetic_names() and is_registered_name(name)
    row = {r["name"]: r for r in list_datasets()}[name]
    assert row["shape"] == [spec.num_steps, nodes, 1] and row["freq"] == "15min"


def test_a_road_city_needs_enough_sensors():
    with pytest.raises(ValueError, match="a road city needs at least 50 sensors, found num_nodes=20"):
        SyntheticCitySpec(city="x", description="x", num_nodes=20, graph="road", freq="15min", num_weeks=1,
                          channels=("flow",), units=("n",), level=1.0)


# ---------------------------------------------------------------------------------------------------- graph
@pytest.mark.parametrize("key", sorted(LARGEST))
def test_road_graph_is_sparse_symmetric_connected_and_road_like(key):
    coords, adjacency = synthetic_graph(key)
    n = LARGEST[key]
    assert isinstance(adjacency, sp.csr_array) and adjacency.shape == (n, n) and adjacency.dtype == np.float32
    assert abs(adjacency - adjacency.T).max() == 0
    np.testing.assert_array_equal(adjacency.diagonal(), 1.0)  # Gaussian kernel convention, as the other cities
    off = _off_diagonal(adjacency)
    assert off.data.min() >= 0.05 and off.data.max() <= 1.0
    degree = np.diff(off.indptr)
    assert 2.0 <= degree.mean() <= 4.0 and degree.min() >= 1 and degree.max() <= 8, np.bincount(degree)
    assert adjacency.nnz <= 6 * n  # sparse: a few neighbours per node
    assert csgraph.connected_components(off, directed=False)[0] <= 3
    assert coords.shape == (n, 2) and np.isfinite(coords).all()
    assert len(np.unique(coords, axis=0)) == n  # no two sensors at one place
    rows, cols = off.nonzero()
    length = np.hypot(*(coords[rows] - coords[cols]).T)
    extent = np.ptp(coords, axis=0).max()
    assert np.median(length) < 0.02 * extent  # links join nearby sensors, not far corners of the region
    # the node order says nothing about position (shuffled, as in real sensor lists)
    assert np.median(np.hypot(*np.diff(coords, axis=0).T)) > 10 * np.median(length)


def test_the_state_sized_city_spans_hundreds_of_km():
    coords, _ = synthetic_graph("ca")
    assert 500 < np.ptp(coords, axis=0).max() < 1000
    sd_coords, _ = synthetic_graph("sd")
    assert np.ptp(sd_coords, axis=0).max() < 150


def test_road_layout_is_deterministic_and_seeded():
    a, b, c = synthetic_graph("sd", seed=5), synthetic_graph("sd", seed=5), synthetic_graph("sd", seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert (a[1] != b[1]).nnz == 0
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------------------------------------------- series (sd)
def test_sd_generates_its_declared_dataset(sd):
    spec = SYNTHETIC_CITIES["sd"]
    assert sd.name == "synthetic-sd" and sd.city == spec.city and sd.freq == "15min"
    assert sd.values.shape == (4 * 7 * 96, 716, 1) and sd.values.dtype == np.float32
    assert sd.time_index()[1] - sd.time_index()[0] == pd.Timedelta("15min")
    assert sp.issparse(sd.adjacency) and sd.coord_kind == "xy"
    v = sd.values
    assert (v >= 0).all() and np.array_equal(v, np.round(v))
    assert 0.005 < (~sd.mask()).mean() < 0.06
    assert 100 < np.median(v[sd.mask()]) < 2000  # vehicles per 15 minutes on a freeway
    assert len(set(sd.node_names)) == 716
    assert all(re.fullmatch(r"Sensor \d+ \((I-\d+ corridor|SR-\d+|[A-Za-z ]+ Beltway) km \d+\)", name)
               for name in sd.node_names), sd.node_names[:5]
    assert all(d.startswith("loop detector on ") and "centre" in d for d in sd.node_descriptions)
    assert sd.summary()["graph"]["isolated nodes"] == 0
    towns, roads = sd.meta["towns"], sd.meta["roads"]
    assert len(towns) >= 3 and {r["kind"] for r in roads} >= {"interstate", "state route"}
    assert all(r["length_km"] > 0 for r in roads)
    assert sd.meta["graph"] == "road" and len(sd.meta["node_types"]) == 716


def test_road_series_are_deterministic():
    a, b = generate_synthetic("sd", seed=2, num_steps=200), generate_synthetic("sd", seed=2, num_steps=200)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.node_names == b.node_names and a.meta["incidents"] == b.meta["incidents"]
    assert not np.array_equal(a.values, generate_synthetic("sd", seed=3, num_steps=200).values)


def test_sd_daily_cycle(sd):
    total = np.where(sd.mask(), sd.values, 0).sum(axis=(1, 2))
    x = total - total.mean()

    def autocorr(lag):
        return float((x[lag:] * x[:-lag]).mean() / x.var())

    assert autocorr(96) > 0.6 and autocorr(48) < 0.0


def test_sd_residuals_correlate_along_the_roads(sd):
    res, _ = _tow_residuals(sd)
    cov = res.T @ res
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    linked = _off_diagonal(sd.adjacency).toarray() > 0
    far = ~linked
    np.fill_diagonal(far, False)
    assert corr[linked].mean() > corr[far].mean() + 0.1


def test_sd_incidents_move_their_sensor_and_its_neighbours(sd):
    res, _ = _tow_residuals(sd)
    off = _off_diagonal(sd.adjacency)
    effect = {"own": {True: [], False: []}, "neighbours": {True: [], False: []}}
    for inc in sd.meta["incidents"]:
        if inc["length"] < 4:
            continue
        steps = slice(inc["start"] + 2, inc["start"] + inc["length"])
        drop = inc["factor"] < 1
        row = off[[inc["node"]]].toarray()[0]
        effect["own"][drop].append(res[steps, inc["node"]].mean())
        if (row > 0.3).any():
            effect["neighbours"][drop].append(res[steps][:, row > 0.3].mean())
    for who, gap in (("own", 0.8), ("neighbours", 0.2)):
        drops, spikes = np.mean(effect[who][True]), np.mean(effect[who][False])
        assert drops < 0 < spikes and spikes - drops > gap, (who, drops, spikes)


def test_registry_name_loads_the_road_city():
    data = get_dataset("synthetic-sd")
    assert data.name == "synthetic-sd" and data.num_nodes == 716 and sp.issparse(data.adjacency)


# ---------------------------------------------------------------------------------------------------- ca: memory
def _generate_traced(city, num_steps=None):
    tracemalloc.start()
    try:
        data = generate_synthetic(city, num_steps=num_steps)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return data, peak


def test_ca_has_8600_sensors_every_15_minutes_and_stays_small_in_memory():
    data, peak = _generate_traced("ca", num_steps=96)  # a day: the graph, the text and the dynamics' burn-in
    assert data.values.shape == (96, 8600, 1) and data.freq == "15min" and data.name == "synthetic-ca"
    assert sp.issparse(data.adjacency) and data.adjacency.nnz < 6 * 8600
    degree = np.diff(_off_diagonal(data.adjacency).indptr)
    assert 2.0 <= degree.mean() <= 4.0
    assert len(set(data.node_names)) == 8600
    # a dense [N, N] float64 matrix alone would be 592 MB; the generator's per-day arrays are small
    assert peak < 450 * 2**20, peak / 2**20


@pytest.mark.slow
def test_full_ca_generates_under_a_gib():
    data, peak = _generate_traced("ca")  # 2,688 steps x 8,600 sensors: about 7 s of CPU, 0.45 GB traced
    assert data.values.shape == (2688, 8600, 1)
    assert peak < 2**30, peak / 2**20
    assert 0.005 < (~data.mask()).mean() < 0.06


# ---------------------------------------------------------------------------------------------------- sparse = dense
def test_sparse_dynamics_match_the_dense_model():
    """The streamed sparse path (road cities) is the dense model in another draw order: incident spreading is
    identical, the latent deviation has the same spread and the same correlation along the graph."""
    from st_instruct.data import synthetic

    _, adjacency = synthetic_graph("large")  # 181 zones, dense
    off = adjacency.astype(np.float64)
    np.fill_diagonal(off, 0.0)
    walk = off / off.sum(1, keepdims=True)
    effect_dense, inc_dense = synthetic._incidents(500, 181, off, 1.0, np.random.default_rng(0))
    effect_sparse, inc_sparse = synthetic._incidents(500, 181, sp.csr_array(off), 1.0, np.random.default_rng(0))
    assert inc_dense == inc_sparse
    np.testing.assert_allclose(effect_sparse, effect_dense, atol=1e-12)

    T, C = 2000, 2
    dense = synthetic._latent(T, 181, C, walk, 1.0, np.random.default_rng(1))
    streamed = np.zeros((T, 181, C))
    synthetic._latent_sparse(streamed, sp.csr_array(walk), 1.0, np.random.default_rng(1))
    assert abs(streamed.std() / dense.std() - 1) < 0.15
    rows, cols = off.nonzero()

    def neighbour_corr(z):
        z = z[:, :, 0] - z[:, :, 0].mean(0)
        cov = z.T @ z
        return (cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))))[rows, cols].mean()

    def channel_corr(z):
        return np.corrcoef(np.diff(z[:, :, 0], axis=0).ravel(), np.diff(z[:, :, 1], axis=0).ravel())[0, 1]

    assert abs(neighbour_corr(streamed) - neighbour_corr(dense)) < 0.1
    assert abs(channel_corr(streamed) - channel_corr(dense)) < 0.1
