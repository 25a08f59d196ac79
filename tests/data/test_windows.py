"""Windows, chronological splits and the train-only scaler (docs/design.md §5)."""

import numpy as np
import pandas as pd
import pytest

from st_instruct.data.stdata import STData, STDataError
from st_instruct.data.synthetic import generate_synthetic
from st_instruct.data.windows import build_windows, calendar_features, format_split, parse_split, split_borders


def make_data(T=200, N=3, C=2, null_value=None, freq="1h", start="2024-01-01"):
    values = np.arange(T * N * C, dtype=np.float32).reshape(T, N, C)
    return STData(values=values, name="toy", freq=freq, start=pd.Timestamp(start), null_value=null_value)


@pytest.mark.parametrize("L,P,stride", [(12, 12, 1), (5, 3, 1), (12, 12, 4), (1, 1, 1)])
def test_window_count_per_split(L, P, stride):
    data = make_data(T=300)
    w = build_windows(data, L, P, "7:1:2", stride=stride)
    for split, (lo, hi) in w.borders.items():
        assert w.num_windows(split) == len(range(0, (hi - lo) - L - P + 1, stride))
        if stride == 1:
            assert w.num_windows(split) == (hi - lo) - L - P + 1


def test_no_window_crosses_a_split_border():
    data = make_data(T=300)
    w = build_windows(data, 12, 12, "7:1:2")
    for split, (lo, hi) in w.borders.items():
        b = w.batch(split)
        first_step = b["start"]
        last_step = b["start"] + 12 + 12 - 1
        assert first_step.min() >= lo and last_step.max() <= hi - 1
        # the last possible window ends exactly at the border
        assert last_step.max() == hi - 1
    assert w.borders["train"][1] == w.borders["validation"][0]
    assert w.borders["validation"][1] == w.borders["test"][0]


def test_batch_contents_are_the_series():
    data = make_data(T=100, N=2, C=1)
    w = build_windows(data, 4, 2, "6:2:2")
    b = w.batch("test", np.array([0, 3]))
    s = w.starts["test"][[0, 3]]
    np.testing.assert_array_equal(b["y"][:, :, 0, 0], data.values[s[:, None] + 4 + np.arange(2), 0, 0])
    np.testing.assert_allclose(w.scaler.inverse_transform(b["x"]), data.values[s[:, None] + np.arange(4)], rtol=1e-5)
    assert b["x"].shape == (2, 4, 2, 1) and b["y"].shape == (2, 2, 2, 1)


def test_scaler_fitted_on_train_only():
    data = make_data(T=100, N=2, C=2)
    # a huge value in the test split must not move the scaler
    values = data.values.copy()
    values[-1] = 1e6
    w1 = build_windows(data, 4, 4, "7:1:2")
    w2 = build_windows(STData(values=values, name="toy", freq="1h", start=data.start), 4, 4, "7:1:2")
    np.testing.assert_array_equal(w1.scaler.mean, w2.scaler.mean)
    np.testing.assert_array_equal(w1.scaler.std, w2.scaler.std)
    lo, hi = w1.borders["train"]
    np.testing.assert_allclose(w1.scaler.mean, data.values[lo:hi].reshape(-1, 2).mean(0), rtol=1e-6)


def test_scaler_ignores_nulls_and_masks_them():
    values = np.full((60, 2, 1), 10.0, dtype=np.float32)
    values[::2] = 0.0  # declared nulls
    values[1, 0, 0] = np.nan
    data = STData(values=values, name="toy", freq="1h", start="2024-01-01", null_value=0.0)
    w = build_windows(data, 3, 3, "7:1:2")
    assert w.scaler.mean[0] == pytest.approx(10.0)
    assert not w.observed[0].any() and not w.observed[1, 0, 0] and w.observed[1, 1, 0]
    assert (w.scaled[~w.observed] == 0).all()
    b = w.batch("train")
    assert (b["y_mask"] == w.observed[b["start"][:, None] + 3 + np.arange(3)]).all()


def test_series_shorter_than_window_is_a_clear_error():
    data = make_data(T=20)
    with pytest.raises(STDataError, match="shorter than history \\+ horizon = 12 \\+ 12 = 24"):
        build_windows(data, 12, 12)
    with pytest.raises(STDataError, match="test split has .* shorter than history \\+ horizon"):
        build_windows(make_data(T=100), 12, 12, "5:4:1")


def test_parse_split():
    assert parse_split("7:1:2") == pytest.approx((0.7, 0.1, 0.2))
    assert parse_split((6, 2, 2)) == pytest.approx((0.6, 0.2, 0.2))
    for bad in ("7:3", "a:b:c", "0:1:1", "7:1:0", "-1:1:2"):
        with pytest.raises(ValueError, match="split"):
            parse_split(bad)
    assert format_split(parse_split("7:1:2")) == "7:1:2" and format_split(parse_split("6:2:2")) == "6:2:2"
    assert format_split(parse_split("75:5:20")) == "75:5:20"
    assert split_borders(100, (0.7, 0.1, 0.2)) == {"train": (0, 70), "validation": (70, 80), "test": (80, 100)}


def test_calendar_features():
    data = make_data(T=48, freq="30min", start="2024-01-07 23:00")  # a Sunday
    tod, dow = calendar_features(data)
    assert data.steps_per_day == 48
    assert tod[0] == 46 and dow[0] == 6
    assert tod[2] == 0 and dow[2] == 0  # Monday 00:00
    no_calendar = STData(values=np.zeros((10, 1)), name="x", freq="7D", no_calendar=True)
    tod, dow = calendar_features(no_calendar)
    assert (tod == 0).all() and (dow == 0).all()


@pytest.mark.parametrize("freq,start,missing", [
    (None, None, ["--freq", "--series-start"]), ("15min", None, ["--series-start"]), (None, "2024-03-04", ["--freq"])])
def test_an_unknown_calendar_is_refused_never_assumed(freq, start, missing):
    data = STData(values=np.ones((60, 2)), name="x", freq=freq, start=start)
    assert not data.has_calendar and data.calendar_text().startswith("unknown (give")
    for call in (lambda: calendar_features(data), lambda: build_windows(data, 3, 3)):
        with pytest.raises(STDataError, match="calendar is unknown") as err:
            call()
        assert all(flag in str(err.value) for flag in missing) and "--no-calendar" in str(err.value)
        assert ("--freq" in str(err.value)) == ("--freq" in missing)


def test_no_calendar_windows_have_zero_time_features_without_a_step():
    w = build_windows(STData(values=np.ones((60, 2)), name="x", no_calendar=True), 3, 3)
    assert not w.has_calendar and (w.time_of_day == 0).all() and (w.day_of_week == 0).all()
    with pytest.raises(STDataError, match="--no-calendar"):
        STData(values=np.ones((6, 1)), name="x", freq="1h", start="2024-01-01", no_calendar=True)


def test_all_missing_series_or_split_is_refused():
    values = np.full((60, 2), np.nan)
    with pytest.raises(STDataError, match=r"every one of its 120 values is missing \(NaN\)"):
        build_windows(STData(values=values, name="x", no_calendar=True), 3, 3)
    zeros = np.zeros((60, 2))
    with pytest.raises(STDataError, match=r"missing \(NaN or the null value 0\).*--null-value"):
        build_windows(STData(values=zeros, name="x", no_calendar=True, null_value=0.0), 3, 3)
    values = np.ones((60, 2))
    values[48:] = np.nan  # the test split (steps 48..60) holds nothing to score
    with pytest.raises(STDataError, match=r"the test split \(steps 48..60\) has no observed value"):
        build_windows(STData(values=values, name="x", no_calendar=True), 3, 3, "7:1:2")


def test_first_train_windows_keeps_the_earliest_windows_and_refuses_impossible_counts():
    windows = build_windows(generate_synthetic("small"), 12, 12)
    few = windows.first_train_windows(5)
    np.testing.assert_array_equal(few.starts["train"], windows.starts["train"][:5])
    assert few.borders["train"] == (windows.borders["train"][0], int(windows.starts["train"][4]) + 24)
    np.testing.assert_array_equal(few.starts["test"], windows.starts["test"])
    assert few.scaler is windows.scaler and windows.num_windows("train") > 5  # the original is untouched
    for count in (0, windows.num_windows("train") + 1):
        with pytest.raises(ValueError, match="few-shot train split needs 1"):
            windows.first_train_windows(count)
