"""The imputation task (issue 25) through the task seam: the recipe's missing pattern hides observed entries from the
model, the target is the window itself, and only hidden entries whose truth is known are trained on and scored."""

import numpy as np
import pytest
import torch
from tiny import train_smoke

from st_instruct.configs import DataConfig, RecipeError
from st_instruct.configs.data import MISSING_PATTERN_NAMES, MISSING_PRESET_NAMES
from st_instruct.data.missing import PATTERNS, PRESETS
from st_instruct.models.forecaster import STForecasterConfig
from st_instruct.samples.builder import build_dataset
from st_instruct.tasks import get_task


def _columns(split, *keys):
    table = split.with_format("numpy")
    return [np.stack(list(table[key])) for key in keys]


def test_the_recipe_mirrors_the_pattern_names():
    assert MISSING_PATTERN_NAMES == PATTERNS and set(MISSING_PRESET_NAMES) == set(PRESETS)


@pytest.mark.parametrize("pattern", ["point:0.5", "spin_block"])
def test_imputation_samples_hide_the_pattern_and_score_only_it(tmp_path, pattern):
    config = DataConfig(dataset_names=["synthetic-small"], window_sample=6, task="imputation", horizon=0,
                        missing_pattern=pattern, dataset_cache_dir=str(tmp_path))
    history, history_mask, target, target_mask = _columns(build_dataset(config)["test"], "history", "history_mask",
                                                          "target", "target_mask")
    assert history.shape == target.shape and history.shape[1] == config.history  # the window itself
    assert target_mask.any() and not (target_mask & history_mask).any()  # scored: only what the model was not shown
    assert (history[~history_mask] == 0).all()
    np.testing.assert_array_equal(history[history_mask], target[history_mask])  # the rest: the same values
    if pattern.startswith("point"):
        shown, hidden = history_mask.sum(), target_mask.sum()
        assert abs(hidden / (shown + hidden) - 0.5) < 0.05


def test_forecasting_with_a_missing_pattern_reads_a_sparser_history_and_scores_the_whole_future(tmp_path):
    base = dict(dataset_names=["synthetic-small"], window_sample=6, dataset_cache_dir=str(tmp_path))
    dense = build_dataset(DataConfig(**base))["test"]
    sparse = build_dataset(DataConfig(**base, missing_pattern="point:0.8"))["test"]
    (dense_mask, dense_target_mask), (sparse_mask, sparse_target_mask) = (
        _columns(split, "history_mask", "target_mask") for split in (dense, sparse))
    assert sparse_mask.sum() < 0.3 * dense_mask.sum() and not (sparse_mask & ~dense_mask).any()
    np.testing.assert_array_equal(sparse_target_mask, dense_target_mask)


def test_the_loss_ignores_observed_and_truly_missing_entries():
    """Values at entries the target mask leaves out (shown to the model, or missing from the data) do not move the
    loss: a test changes them and sees the same number."""
    task = get_task("imputation")
    rng = np.random.default_rng(0)
    observed = rng.random((4, 12, 3, 2)) < 0.8
    hidden = observed & (rng.random(observed.shape) < 0.4)
    mask = torch.as_tensor(task.target_mask(observed, hidden))
    prediction, target = torch.randn(4, 12, 3, 2), torch.randn(4, 12, 3, 2)
    changed = torch.where(mask, target, torch.full_like(target, 1e6))
    assert task.loss(prediction, target, mask) == task.loss(prediction, changed, mask)
    scores = task.score(prediction.numpy(), target.numpy(), mask.numpy())
    assert scores == task.score(prediction.numpy(), changed.numpy(), mask.numpy())


def test_bad_imputation_recipes_are_one_line():
    for kwargs, expected in [
        (dict(task="imputation", horizon=0), "needs missing_pattern"),
        (dict(task="imputation", horizon=12, missing_pattern="point:0.5"), "horizon: 0"),
        (dict(horizon=0), "horizon must be >= 1"),
        (dict(missing_pattern="point"), r"rate must be in \(0, 1\)"),
        (dict(missing_pattern="point:1.5"), r"rate must be in \(0, 1\)"),
        (dict(missing_pattern="point:0"), r"rate must be in \(0, 1\)"),
        (dict(missing_pattern="spin_block:0.3"), "preset"),
        (dict(missing_pattern="holes:0.3"), "point, sequence, node"),
    ]:
        with pytest.raises(RecipeError, match=expected):
            DataConfig(**kwargs)


def test_an_imputation_recipe_trains_a_head_over_the_window(tmp_path_factory, tiny_backbone_dir):
    folder = train_smoke(tmp_path_factory, tiny_backbone_dir, "--task", "imputation", "--horizon", "0",
                         "--missing_pattern", "point:0.5")
    assert STForecasterConfig.load(folder).horizon == 12
