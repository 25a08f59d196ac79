"""Imputation baselines: visible values kept, no leakage of hidden values, exact recovery on simple series, and
SAITS / BRITS learning a smooth periodic series."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st_instruct.evaluation.imputation_baselines import (
    IMPUTATION_BASELINES,
    BaselineNotApplicable,
    HistoricalAverage,
    LinearInterpolation,
    MeanImputer,
    NeighbourMean,
    build_imputer,
    run_imputers,
)

NAMES = list(IMPUTATION_BASELINES)
FAST = {"saits": {"epochs": 2}, "brits": {"epochs": 2}}
T, N, C, L, TRAIN = 400, 6, 2, 24, 304


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


def ring(n: int) -> np.ndarray:
    adjacency = np.zeros((n, n))
    i = np.arange(n)
    adjacency[i, (i + 1) % n] = adjacency[i, (i - 1) % n] = 1.0
    return adjacency


def to_windows(x: np.ndarray) -> np.ndarray:
    """``[k * L, ...]`` -> ``[k, L, ...]``."""
    return x.reshape(-1, L, *x.shape[1:])


@pytest.fixture(scope="module")
def data() -> dict:
    """Hourly daily sine + noise, 40 % hidden at random; train = the first 304 steps, windows = the last 96."""
    rng = np.random.default_rng(0)
    t = np.arange(T)
    phase = rng.uniform(0, 2 * np.pi, (N, C))
    values = 20 + 5 * np.sin(2 * np.pi * t[:, None, None] / 24 + phase) + rng.normal(0, 0.5, (T, N, C))
    visible = rng.random((T, N, C)) > 0.4
    slots = t % 168
    return {"train": values[:TRAIN], "train_visible": visible[:TRAIN], "train_slots": slots[:TRAIN],
            "values": to_windows(values[TRAIN:]), "visible": to_windows(visible[TRAIN:]),
            "slots": to_windows(slots[TRAIN:]), "adjacency": ring(N)}


def fit(name: str, data: dict, train: np.ndarray | None = None, seed: int = 0):
    imputer = build_imputer(name, **FAST.get(name, {}))
    return imputer.fit(data["train"] if train is None else train, data["train_visible"],
                       time_of_week=data["train_slots"], adjacency=data["adjacency"], seed=seed)


@pytest.fixture(scope="module")
def fitted(data) -> dict:
    return {name: fit(name, data) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_visible_values_kept_bit_for_bit_and_output_finite(fitted, data, name, dtype):
    values, visible = data["values"].astype(dtype), data["visible"]
    hidden_nan = np.where(visible, values, np.nan)
    out = fitted[name].impute(hidden_nan, visible, time_of_week=data["slots"])
    assert out.shape == values.shape and out.dtype == dtype
    assert np.array_equal(out[visible].view(np.uint8), values[visible].view(np.uint8))
    assert np.isfinite(out).all()
    assert not np.array_equal(out[~visible], values[~visible])  # it did fill something of its own


@pytest.mark.parametrize("name", NAMES)
def test_hidden_window_values_do_not_leak(fitted, data, name):
    values, visible = data["values"], data["visible"]
    outs = [fitted[name].impute(np.where(visible, values, hidden), visible, time_of_week=data["slots"])
            for hidden in (values, 1e6, np.nan, -np.inf)]
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])


@pytest.mark.parametrize("name", NAMES)
def test_hidden_training_values_do_not_leak(fitted, data, name):
    train = np.where(data["train_visible"], data["train"], np.nan)
    out = fit(name, data, train=train).impute(data["values"], data["visible"], time_of_week=data["slots"])
    assert np.array_equal(out, fitted[name].impute(data["values"], data["visible"], time_of_week=data["slots"]))


def test_linear_interpolation_recovers_a_ramp_and_holds_the_ends():
    rng = np.random.default_rng(1)
    slope = rng.normal(size=(3, 2))
    ramp = 7.0 + np.arange(L)[None, :, None, None] * slope  # [1, L, 3, 2]
    visible = rng.random(ramp.shape) > 0.4
    visible[:, [1, L - 1]] = True
    visible[:, 0] = False
    visible[0, L - 6:L - 1, 0, 0] = False
    visible[0, L - 7, 0, 0] = True
    out = LinearInterpolation().fit(ramp[0], np.ones_like(visible[0])).impute(ramp, visible)
    np.testing.assert_allclose(out[:, 1:], ramp[:, 1:], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[:, 0], ramp[:, 1])  # before the first visible step: the nearest visible value
    visible[0, L - 1, 0, 0] = False  # the tail of series (0, 0) is hidden after step L - 7: held at that value
    out = LinearInterpolation().fit(ramp[0], np.ones_like(visible[0])).impute(ramp, visible)
    np.testing.assert_array_equal(out[0, L - 6:, 0, 0], np.full(6, ramp[0, L - 7, 0, 0]))


def test_mean_recovers_a_constant_series_and_falls_back_to_the_training_mean():
    rng = np.random.default_rng(2)
    level = rng.normal(size=(4, 2)) * 10
    values = np.broadcast_to(level, (3, L, 4, 2)).copy()
    visible = rng.random(values.shape) > 0.4
    visible[1, :, 2, 1] = False  # nothing visible in this window's series: the training mean of (2, 1)
    train = np.broadcast_to(level, (50, 4, 2)) + rng.normal(size=(50, 4, 2))
    train_visible = np.ones(train.shape, dtype=bool)
    train_visible[:, 3, 0] = False  # a series never visible in training: the global training mean
    imputer = MeanImputer().fit(train, train_visible)
    out = imputer.impute(values, visible)
    expected = values.copy()
    expected[1, :, 2, 1] = train[:, 2, 1].mean()
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    visible[:, :, 3, 0] = False
    out = imputer.impute(values, visible)
    np.testing.assert_allclose(out[:, :, 3, 0], train[train_visible].mean(), rtol=1e-12)


def test_neighbour_mean_recovers_a_node_equal_to_its_neighbours():
    rng = np.random.default_rng(3)
    series = rng.normal(size=(4, L, 1, 2)) * 3
    values = np.repeat(series, 8, axis=2)  # every node the same series
    visible = rng.random(values.shape) > 0.6
    adjacency = ring(8) * rng.uniform(0.5, 2.0, (8, 8)) + 100.0 * np.eye(8)  # self-loops are ignored
    imputer = NeighbourMean().fit(values[0], np.ones_like(visible[0]), adjacency=adjacency)
    out = imputer.impute(values, visible)
    neighbour_seen = np.roll(visible, 1, axis=2) | np.roll(visible, -1, axis=2)
    np.testing.assert_allclose(out[neighbour_seen], values[neighbour_seen], rtol=1e-12)
    alone = ~visible & ~neighbour_seen
    assert alone.any()
    interpolated = LinearInterpolation().fit(values[0], np.ones_like(visible[0])).impute(values, visible)
    np.testing.assert_array_equal(out[alone], interpolated[alone])


def test_neighbour_mean_weights_visible_neighbours_by_the_adjacency():
    adjacency = np.array([[0.0, 3.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    values = np.array([0.0, 1.0, 5.0]).reshape(1, 1, 3, 1)
    visible = np.array([False, True, True]).reshape(1, 1, 3, 1)
    imputer = NeighbourMean().fit(values[0], visible[0], adjacency=adjacency)
    assert imputer.impute(values, visible)[0, 0, 0, 0] == pytest.approx(2.0)


def test_historical_average_recovers_a_weekly_series_and_falls_back_for_unseen_slots():
    rng = np.random.default_rng(4)
    week = rng.normal(size=(168, 3, 1)) * 5
    t = np.arange(168 * 5)
    values = week[t % 168]
    visible = rng.random(values.shape) > 0.3
    visible[:168] = True  # every slot seen in training but ...
    visible[: 168 * 3, 1, 0][t[: 168 * 3] % 168 == 50] = False  # slot 50 of node 1 never seen in training
    train, train_visible = values[: 168 * 3], visible[: 168 * 3]
    imputer = HistoricalAverage().fit(train, train_visible, time_of_week=t[: 168 * 3] % 168)
    windows, window_visible, slots = (to_windows(x[168 * 3:]) for x in (values, visible, t % 168))
    out = imputer.impute(windows, window_visible, time_of_week=slots)
    node_mean = train[:, 1, 0][train_visible[:, 1, 0]].mean()
    expected = np.where((slots == 50)[..., None, None] & (np.arange(3) == 1)[:, None], node_mean, windows)
    np.testing.assert_allclose(out, np.where(window_visible, windows, expected), rtol=1e-12)
    out = imputer.impute(windows, np.zeros_like(window_visible), time_of_week=slots + 168)  # slots beyond training
    np.testing.assert_allclose(out[0, 0], train.mean(0, where=train_visible), rtol=1e-12)


def test_not_applicable_without_graph_or_calendar(data):
    with pytest.raises(BaselineNotApplicable, match="adjacency"):
        NeighbourMean().fit(data["train"], data["train_visible"])
    with pytest.raises(BaselineNotApplicable, match="time-of-week"):
        HistoricalAverage().fit(data["train"], data["train_visible"])
    imputer = HistoricalAverage().fit(data["train"], data["train_visible"], time_of_week=data["train_slots"])
    with pytest.raises(BaselineNotApplicable, match="time-of-week"):
        imputer.impute(data["values"], data["visible"])
    results = run_imputers(["mean", "neighbour_mean", "historical_average"], data["train"], data["train_visible"],
                           data["values"], data["visible"], train_time_of_week=data["train_slots"])
    assert set(results["neighbour_mean"]) == {"skipped"} and set(results["historical_average"]) == {"skipped"}
    assert set(results["mean"]) == {"pred", "fit_seconds", "predict_seconds"}
    assert results["mean"]["pred"].shape == data["values"].shape


def test_errors_name_the_problem(data):
    with pytest.raises(ValueError, match="unknown imputation baseline 'median'"):
        build_imputer("median")
    with pytest.raises(ValueError, match="unknown imputation baseline"):
        run_imputers(["mean"], data["train"], data["train_visible"], data["values"], data["visible"],
                     options={"saits_": {}})
    with pytest.raises(RuntimeError, match="call fit"):
        MeanImputer().impute(data["values"], data["visible"])
    with pytest.raises(ValueError, match=r"\[B, L, N, C\]"):
        MeanImputer().fit(data["train"], data["train_visible"]).impute(data["train"], data["train_visible"])
    with pytest.raises(ValueError, match="finite where visible"):
        MeanImputer().fit(np.full((5, 1, 1), np.nan), np.ones((5, 1, 1), dtype=bool))


@pytest.mark.parametrize("name", ["saits", "brits"])
def test_learned_imputers_are_seeded_and_leave_global_rngs_alone(fitted, data, name):
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    again = fit(name, data, seed=0).impute(data["values"], data["visible"])
    assert np.array_equal(np.random.get_state()[1], numpy_state) and torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(again, fitted[name].impute(data["values"], data["visible"]))
    other = fit(name, data, seed=1).impute(data["values"], data["visible"])
    assert not np.array_equal(other, again)
    with pytest.raises(ValueError, match="window=12"):
        fitted[name].impute(data["values"][:, :12], data["visible"][:, :12])


def test_learned_imputers_beat_the_mean_on_a_smooth_periodic_series():
    rng = np.random.default_rng(0)
    t = np.arange(2400)
    values = 10 + 5 * np.sin(2 * np.pi * t[:, None, None] / 24 + np.arange(3)[None, :, None])
    values = values + rng.normal(0, 0.1, values.shape)
    visible = rng.random(values.shape) > 0.4
    results = run_imputers(["mean", "saits", "brits"], values[:1920], visible[:1920], to_windows(values[1920:]),
                           to_windows(visible[1920:]), options={"saits": {"epochs": 20}, "brits": {"epochs": 20}})
    hidden = ~to_windows(visible[1920:])
    mae = {name: np.abs(result["pred"] - to_windows(values[1920:]))[hidden].mean() for name, result in results.items()}
    assert mae["saits"] < 0.6 * mae["mean"] and mae["brits"] < 0.6 * mae["mean"], mae


@pytest.mark.parametrize("name", ["saits", "brits"])
def test_learned_imputers_train_on_overlapping_windows_for_a_step_budget(name):
    """Windows every quarter window (``stride``) and ``epochs = steps * batch_size / windows``: a short series gets
    several epochs, an explicit ``epochs`` wins."""
    rng = np.random.default_rng(0)
    values, visible = rng.normal(size=(100, 2, 1)), rng.random((100, 2, 1)) < 0.8
    imputer = build_imputer(name, steps=20, batch_size=8).fit(values, visible)
    assert imputer.stride == 6  # starts 0, 6, ..., 72: 13 windows of 24 steps
    assert imputer.epochs_run == round(20 * 8 / 13)
    assert build_imputer(name, epochs=2).fit(values, visible).epochs_run == 2
