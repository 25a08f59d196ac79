"""Masked metrics against hand-computed values (docs/design.md §5)."""

import math

import numpy as np
import pytest

from st_instruct.tasks.metrics import horizon_metrics, masked_metrics


def test_hand_computed_case():
    y = np.array([1.0, 2.0, 4.0, 0.0])
    p = np.array([2.0, 2.0, 1.0, 5.0])
    m = np.array([True, True, True, False])  # the 0 is a declared null
    out = masked_metrics(p, y, m)
    assert out["MAE"] == pytest.approx((1 + 0 + 3) / 3)
    assert out["RMSE"] == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    assert out["MAPE"] == pytest.approx(100 * (1 / 1 + 0 / 2 + 3 / 4) / 3)
    assert out["WAPE"] == pytest.approx(100 * 4 / 7)


def test_all_masked_is_nan_not_zero():
    y = np.ones((2, 3))
    out = masked_metrics(y + 1, y, np.zeros_like(y, dtype=bool))
    assert all(math.isnan(v) for v in out.values())


def test_nan_targets_are_excluded_even_if_mask_says_observed():
    y = np.array([1.0, np.nan])
    out = masked_metrics(np.array([2.0, 100.0]), y, np.array([True, True]))
    assert out["MAE"] == pytest.approx(1.0)


def test_mape_skips_zero_targets_but_mae_counts_them():
    y = np.array([0.0, 2.0])
    out = masked_metrics(np.array([1.0, 1.0]), y, np.array([True, True]))
    assert out["MAE"] == pytest.approx(1.0)
    assert out["MAPE"] == pytest.approx(50.0)


def test_nan_prediction_at_observed_target_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        masked_metrics(np.array([np.nan]), np.array([1.0]), np.array([True]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        masked_metrics(np.zeros(3), np.zeros(4), np.ones(4, dtype=bool))


def test_per_horizon_and_average():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 10, size=(5, 3, 4, 2))
    p = y + np.arange(1, 4)[None, :, None, None]  # error h at horizon h
    m = np.ones_like(y, dtype=bool)
    m[:, 2] = False  # horizon 3 fully missing
    out = horizon_metrics(p, y, m)
    assert out["per_horizon"]["1"]["MAE"] == pytest.approx(1.0)
    assert out["per_horizon"]["2"]["RMSE"] == pytest.approx(2.0)
    assert math.isnan(out["per_horizon"]["3"]["MAE"])
    assert out["MAE"] == pytest.approx(1.5)
    assert set(out) == {"MAE", "RMSE", "MAPE", "WAPE", "per_horizon"}


def test_wape_of_an_all_zero_series_is_undefined_with_the_reason_not_infinite():
    y = np.zeros((2, 3, 4, 1))
    out = horizon_metrics(y + 1, y, np.ones_like(y, dtype=bool))
    assert out["MAE"] == pytest.approx(1.0) and math.isnan(out["WAPE"]) and math.isnan(out["MAPE"])
    assert all(math.isnan(step["WAPE"]) for step in out["per_horizon"].values())
    assert out["undefined"] == {"MAPE": "no observed target has |truth| > 1e-06",
                                "WAPE": "the sum of |truth| over the observed entries is 0"}
    empty = horizon_metrics(y, y + 1, np.zeros_like(y, dtype=bool))
    assert set(empty["undefined"]) == {"MAE", "RMSE", "MAPE", "WAPE"}
