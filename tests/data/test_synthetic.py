"""The synthetic city generator: determinism, validity, and the structure that makes it a fair stand-in for real
flow data (calendar cycles, diffusion along the graph, incidents, outages, and the ranking of simple baselines)."""

import numpy as np
import pytest

from st_instruct.data.graph import grid_adjacency
from st_instruct.data.synthetic import SYNTHETIC_CITIES, SyntheticCitySpec, generate_synthetic
from st_instruct.data.windows import build_windows, calendar_features
from st_instruct.tasks.metrics import horizon_metrics


@pytest.fixture(scope="module")
def city():
    return generate_synthetic("default", seed=0)


def _time_of_week_profile(data):
    """``[T, N, C]`` mean observed value of each (time-of-week slot, node, channel), read back at every step."""
    tod, dow = calendar_features(data)
    tow = dow * data.steps_per_day + tod
    observed = data.mask()
    total = np.zeros((7 * data.steps_per_day, *data.values.shape[1:]))
    count = np.zeros_like(total)
    np.add.at(total, tow, np.where(observed, data.values, 0.0))
    np.add.at(count, tow, observed)
    return (total / np.maximum(count, 1))[tow]


# ---------------------------------------------------------------------------------------------------- API
def test_determinism():
    a, b = generate_synthetic("small", seed=3), generate_synthetic("small", seed=3)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.adjacency, b.adjacency)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.node_names == b.node_names and a.node_descriptions == b.node_descriptions
    assert a.meta["incidents"] == b.meta["incidents"] and a.meta["outages"] == b.meta["outages"]
    c = generate_synthetic("small", seed=4)
    assert not np.array_equal(a.values, c.values)
    assert not np.array_equal(a.coords, c.coords)


# The road cities of thousands of sensors (gla, ca) are covered in test_synthetic_road.py, without a dense [N, N].
@pytest.mark.parametrize("key", sorted(k for k, spec in SYNTHETIC_CITIES.items() if spec.num_nodes <= 1000))
def test_every_city_generates_its_declared_shape(key):
    spec = SYNTHETIC_CITIES[key]
    data = generate_synthetic(key, seed=1)
    T, N, C = spec.num_weeks * 7 * data.steps_per_day, spec.num_nodes, len(spec.channels)
    assert data.values.shape == (T, N, C) and data.values.dtype == np.float32
    assert data.name == ("synthetic" if key == "default" else f"synthetic-{key}")
    assert data.city == spec.city and data.freq == spec.freq
    assert data.channels == list(spec.channels) and data.units == list(spec.units)
    assert data.start.dayofweek == 0 and data.start.hour == 0  # a Monday at midnight
    assert data.null_value == 0
    assert len(data.node_names) == N and len(set(data.node_names)) == N
    assert all(name.startswith(spec.node_label) for name in data.node_names)
    assert len(data.node_descriptions) == N and all("centre" in d for d in data.node_descriptions)
    assert data.coords.shape == (N, 2) and np.isfinite(data.coords).all()
    adj = data.dense_adjacency()
    assert adj.shape == (N, N) and np.allclose(adj, adj.T) and (adj >= 0).all() and adj.max() <= 1.0
    off = adj - np.diag(np.diag(adj))
    assert ((off > 0).sum(1) >= 1).all(), "a node without neighbours"
    if spec.graph == "grid":
        assert data.coord_kind == "grid" and data.grid_shape == spec.grid_shape
        np.testing.assert_array_equal(adj, grid_adjacency(*spec.grid_shape))
        assert data.as_grid().shape == (T, C, *spec.grid_shape)
    else:
        assert data.coord_kind == "xy" and data.grid_shape is None
        assert (np.diag(adj) == 1).all()  # Gaussian kernel convention (DCRNN)
    assert data.summary()["graph"]["isolated nodes"] == 0


def test_city_specs_are_varied():
    specs = SYNTHETIC_CITIES.values()
    assert {s.graph for s in specs} == {"knn", "ring_radial", "grid", "road"}
    assert len({s.num_nodes for s in specs}) == len(SYNTHETIC_CITIES)
    assert {len(s.channels) for s in specs} == {1, 2}
    assert {s.freq for s in specs} >= {"1h", "5min", "15min"}
    assert SYNTHETIC_CITIES["small"].num_nodes <= 16 and 40 <= SYNTHETIC_CITIES["default"].num_nodes <= 64
    assert SYNTHETIC_CITIES["default"].num_steps >= 8 * 7 * 24


def test_num_steps_override_and_bad_input():
    assert generate_synthetic("small", num_steps=100).values.shape == (100, 12, 2)
    with pytest.raises(ValueError, match="known cities: .*default.*small"):
        generate_synthetic("atlantis")
    with pytest.raises(ValueError, match="num_steps"):
        generate_synthetic("small", num_steps=0)
    with pytest.raises(ValueError, match="grid_shape"):
        SyntheticCitySpec(city="x", description="x", num_nodes=10, graph="grid", freq="1h", num_weeks=1,
                          channels=("flow",), units=("n",), level=1.0, grid_shape=(3, 3))


# ---------------------------------------------------------------------------------------------------- values
def test_counts_are_non_negative_integers_with_masked_outages(city):
    v = city.values
    assert (v >= 0).all() and np.array_equal(v, np.round(v)) and not np.isnan(v).any()
    observed = city.mask()
    np.testing.assert_array_equal(observed, v != 0)
    assert 0.005 < (~observed).mean() < 0.06
    outages = city.meta["outages"]
    assert outages
    for o in outages:
        assert not observed[o["start"] : o["start"] + o["length"], o["node"]].any()


def test_daily_cycle(city):
    total = np.where(city.mask(), city.values, 0).sum(axis=(1, 2))
    x = total - total.mean()
    spd = city.steps_per_day

    def autocorr(lag):
        return float((x[lag:] * x[:-lag]).mean() / x.var())

    assert autocorr(spd) > 0.6
    assert autocorr(spd // 2) < 0.0


def test_weekly_cycle_and_zone_types(city):
    tod, dow = calendar_features(city)
    types = np.array(city.meta["node_types"])
    v = np.where(city.mask(), city.values, np.nan)
    weekend = dow >= 5

    def ratio(kind):
        sel = types == kind
        return np.nanmean(v[weekend][:, sel]) / np.nanmean(v[~weekend][:, sel])

    assert ratio("business") < 0.6  # offices empty at weekends
    assert ratio("residential") < 0.95
    assert abs(np.nanmean(v[weekend]) / np.nanmean(v[~weekend]) - 1) > 0.05
    # Weekday mornings: residents leave (outflow > inflow), offices fill (inflow > outflow).
    morning = ~weekend & (tod >= 7) & (tod <= 9)
    res, bus = types == "residential", types == "business"
    assert np.nanmean(v[morning][:, res, 1]) > 1.5 * np.nanmean(v[morning][:, res, 0])
    assert np.nanmean(v[morning][:, bus, 0]) > 1.5 * np.nanmean(v[morning][:, bus, 1])


def test_residuals_correlate_along_the_graph(city):
    """After removing the time-of-week profile, adjacent nodes move together more than non-adjacent ones."""
    observed = city.mask()
    res = np.where(observed, np.log1p(city.values) - np.log1p(_time_of_week_profile(city)), np.nan)[:, :, 0]
    res = np.where(np.isnan(res), 0.0, res - np.nanmean(res, axis=0))
    cov = res.T @ res
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    adj = city.dense_adjacency() > 0
    np.fill_diagonal(adj, False)
    far = ~adj
    np.fill_diagonal(far, False)
    assert corr[adj].mean() > corr[far].mean() + 0.1


def _mean(a):
    a = np.asarray(a)[np.isfinite(a)]
    return a.mean() if a.size else np.nan


def test_incidents_move_their_node_and_its_neighbours(city):
    observed = city.mask()
    log_ratio = np.where(observed, np.log1p(city.values) - np.log1p(_time_of_week_profile(city)), 0.0)
    count = observed.sum(2)
    log_ratio = np.where(count > 0, log_ratio.sum(2) / np.maximum(count, 1), np.nan)  # [T, N] channel mean
    adj = city.dense_adjacency().copy()
    np.fill_diagonal(adj, 0)
    effect = {"own": {True: [], False: []}, "neighbours": {True: [], False: []}}
    for inc in city.meta["incidents"]:
        if inc["length"] < 2:
            continue
        steps = slice(inc["start"] + 1, inc["start"] + inc["length"])
        drop = inc["factor"] < 1
        effect["own"][drop].append(_mean(log_ratio[steps, inc["node"]]))
        effect["neighbours"][drop].append(_mean(log_ratio[steps][:, adj[inc["node"]] > 0.3]))
    for who, gap in (("own", 0.8), ("neighbours", 0.2)):
        drops, spikes = _mean(effect[who][True]), _mean(effect[who][False])
        assert drops < 0 < spikes and spikes - drops > gap, (who, drops, spikes)


# ---------------------------------------------------------------------------------------------------- ranking
def _ridge(x, y, x_test, lam=1.0):
    """Per-column closed-form ridge with a bias: x ``[B, L, K]`` -> y ``[B, P, K]``."""
    out = np.empty((x_test.shape[0], y.shape[1], x.shape[2]))
    for k in range(x.shape[2]):
        a = np.concatenate([x[:, :, k], np.ones((len(x), 1))], axis=1)
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y[:, :, k])
        out[:, :, k] = np.concatenate([x_test[:, :, k], np.ones((len(x_test), 1))], axis=1) @ w
    return out


def test_simple_baselines_rank_as_on_real_flow_data(city):
    """12 -> 12 hourly, split 7:1:2, on the test windows.

    As on NYC taxi/bike flows: the last value beats the time-of-week mean (HA) one step ahead and loses badly
    twelve steps ahead; the value one week earlier is worse than HA (noise); a per-node ridge on the 12 history
    values beats HA one step ahead but not on average (12 hours of history do not pin down the daily profile);
    the same ridge on the residual from HA beats HA clearly, which is the information beyond the calendar that
    the recent history and the graph carry.
    """
    L = P = 12
    w = build_windows(city, L, P, "7:1:2")
    N, C = city.num_nodes, city.num_channels
    values = np.nan_to_num(city.values).astype(np.float64)
    lo, hi = w.borders["train"]
    tow, slots = w.time_of_week, 7 * w.steps_per_day
    total, count = np.zeros((slots, N, C)), np.zeros((slots, N, C))
    np.add.at(total, tow[lo:hi], np.where(w.observed[lo:hi], values[lo:hi], 0.0))
    np.add.at(count, tow[lo:hi], w.observed[lo:hi])
    profile = (total / np.maximum(count, 1))[tow]  # [T, N, C] train-only time-of-week mean

    test, train = w.batch("test"), w.batch("train")
    hist = test["start"][:, None] + np.arange(L)
    fut = test["start"][:, None] + L + np.arange(P)

    def flat(a):
        return a.reshape(*a.shape[:2], N * C)

    def windows(series, starts):
        return series[starts[:, None] + np.arange(L)], series[starts[:, None] + L + np.arange(P)]

    scale = w.scaler.std  # ridge in scaled units, per channel
    x_tr, y_tr = windows(values / scale, train["start"])
    x_te, _ = windows(values / scale, test["start"])
    ridge = _ridge(flat(x_tr), flat(y_tr), flat(x_te)).reshape(-1, P, N, C) * scale
    resid = (values - profile) / scale
    r_tr, ry_tr = windows(resid, train["start"])
    r_te, _ = windows(resid, test["start"])
    ridge_cal = profile[fut] + _ridge(flat(r_tr), flat(ry_tr), flat(r_te)).reshape(-1, P, N, C) * scale

    preds = {
        "ha": profile[fut],
        "last": np.repeat(values[hist[:, -1:]], P, axis=1),
        "week": values[fut - slots],
        "ridge": ridge,
        "ridge_cal": ridge_cal,
    }
    m = {k: horizon_metrics(p, test["y"], test["y_mask"]) for k, p in preds.items()}

    def mae(k, h=None):
        return m[k]["MAE"] if h is None else m[k]["per_horizon"][str(h)]["MAE"]

    assert mae("last", 1) < 0.9 * mae("ha", 1)
    assert mae("ha", 12) < 0.5 * mae("last", 12)
    assert mae("ha") < 0.9 * mae("week")
    assert mae("ridge", 1) < 0.9 * mae("ha", 1)
    assert mae("ha") < mae("ridge")
    assert mae("ridge_cal") < 0.9 * mae("ha")
    assert mae("ridge_cal", 12) < mae("ha", 12)
    assert mae("ridge_cal", 1) < mae("ridge", 1) < mae("last", 1)
