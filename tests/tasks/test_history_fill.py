"""Forecasting from a sparse history, directly or after impute-then-forecast (issue 25, must-show 4): the recipe's
``history_fill`` and ``evaluate --history-fill``. The fill is causal (a window never reads a value from after its own
history), the forecaster and the baselines read the same filled history, and the targets stay the dense truth."""

import numpy as np
import pytest
from tiny import train_smoke

from st_instruct.configs import DataConfig, RecipeError
from st_instruct.configs.data import HISTORY_FILL_NAMES
from st_instruct.data.missing import HISTORY_FILLS, forward_fill
from st_instruct.samples.builder import build_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _columns(split, *keys):
    table = split.with_format("numpy")
    return [np.stack(list(table[key])) for key in keys]


def test_the_recipe_mirrors_the_fill_names():
    assert HISTORY_FILL_NAMES == HISTORY_FILLS


def test_forward_fill_carries_the_last_readable_value_and_never_reads_later_steps():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 3, 2))
    readable = rng.random(values.shape) < 0.3
    filled, available = forward_fill(values, readable)
    for t, node, channel in np.ndindex(values.shape):
        before = np.flatnonzero(readable[:t + 1, node, channel])
        assert available[t, node, channel] == (len(before) > 0)
        if len(before):
            assert filled[t, node, channel] == values[before[-1], node, channel]
    later = values.copy()
    later[30:] = 1e6  # changing the steps after 29 changes nothing up to 29
    np.testing.assert_array_equal(forward_fill(later, readable)[0][:30], filled[:30])
    with pytest.raises(ValueError, match="same shape"):
        forward_fill(values, readable[:10])


def test_bad_history_fill_recipes_are_one_line():
    with pytest.raises(RecipeError, match="history_fill"):
        DataConfig(history_fill="backward")
    with pytest.raises(RecipeError, match="fills the gaps itself"):
        DataConfig(task="imputation", horizon=0, missing_pattern="point:0.5", history_fill="forward")


@pytest.mark.parametrize("scaling", ["train", "window"])
def test_forward_filled_samples_read_the_last_value_where_the_pattern_hides_one(tmp_path, scaling):
    base = dict(dataset_names=["synthetic-small"], window_sample=6, dataset_cache_dir=str(tmp_path),
                missing_pattern="point:0.6", scaling=scaling)
    direct, filled = (build_dataset(DataConfig(**base, history_fill=fill))["test"] for fill in ("none", "forward"))
    (mask, history, target, target_mask), (fmask, fhistory, ftarget, ftarget_mask) = (
        _columns(split, "history_mask", "history", "target", "target_mask") for split in (direct, filled))
    np.testing.assert_array_equal(target_mask, ftarget_mask)  # the targets are the same either way
    assert fmask.sum() > 1.5 * mask.sum() and not (mask & ~fmask).any()
    if scaling == "train":  # window scaling re-centres each sample on its (now filled) history
        np.testing.assert_array_equal(target, ftarget)
        np.testing.assert_array_equal(fhistory[mask], history[mask])  # what was read is read unchanged
    gained = (fmask & ~mask)[:, 1:]  # filled inside the window: the value of the step before
    assert gained.any()
    np.testing.assert_allclose(fhistory[:, 1:][gained], fhistory[:, :-1][gained])


def test_impute_then_forecast_feeds_the_forecaster_and_the_baselines_the_same_filled_history(
        tmp_path_factory, tiny_backbone_dir):
    """A forecaster trained on the dense series, evaluated with 80 % of its test histories hidden: directly, and
    with ``history_fill: forward``. The last-value baseline reads the forward-filled last value (checked by hand),
    the forecaster's input changes with the fill, and both are scored on the same dense targets."""
    from st_instruct.protocols.baselines import prepare_windows
    from st_instruct.protocols.evaluate import evaluate_forecaster
    from st_instruct.samples.builder import series_hidden

    dense = train_smoke(tmp_path_factory, tiny_backbone_dir)
    runs = {fill: evaluate_forecaster(dense, "synthetic-small", max_windows=4, models=["window_last_value"],
                                      progress=False, missing_pattern="point:0.8", history_fill=fill)
            for fill in ("none", "forward")}
    (report, arrays), (filled_report, filled_arrays) = runs["none"], runs["forward"]
    assert report["history_fill"] == "none" and filled_report["history_fill"] == "forward"
    np.testing.assert_array_equal(arrays["mask"], filled_arrays["mask"])
    np.testing.assert_array_equal(arrays["target"], filled_arrays["target"])
    assert not np.allclose(arrays["predictions"]["st_forecaster"], filled_arrays["predictions"]["st_forecaster"])

    windows = prepare_windows("synthetic-small", 12, 12, "7:1:2")
    hidden = series_hidden(windows, "point:0.8", 0)  # the smoke recipe's sample_seed
    readable = windows.observed & ~hidden
    values, available = forward_fill(np.nan_to_num(windows.data.values), readable)
    last = arrays["starts"] + windows.history - 1
    assert available[last].all()
    np.testing.assert_allclose(filled_arrays["predictions"]["window_last_value"][:, 0], values[last], rtol=1e-5)
    assert not np.allclose(filled_arrays["predictions"]["window_last_value"][:, 0],
                           np.nan_to_num(windows.data.values[last]))

