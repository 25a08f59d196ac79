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


def test_forecasting_with_a_missing_pattern_reads_and_trains_on_a_sparser_series(tmp_path):
    base = dict(dataset_names=["synthetic-small"], window_sample=6, dataset_cache_dir=str(tmp_path))
    dense = build_dataset(DataConfig(**base))["test"]
    sparse = build_dataset(DataConfig(**base, missing_pattern="point:0.8"))["test"]
    (dense_mask, dense_target_mask), (sparse_mask, sparse_target_mask) = (
        _columns(split, "history_mask", "target_mask") for split in (dense, sparse))
    assert sparse_mask.sum() < 0.3 * dense_mask.sum() and not (sparse_mask & ~dense_mask).any()
    assert sparse_target_mask.sum() < 0.3 * dense_target_mask.sum()
    assert not (sparse_target_mask & ~dense_target_mask).any()


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


def test_the_task_offers_the_imputation_baselines():
    from st_instruct.evaluation.imputation_baselines import IMPUTATION_BASELINES

    assert get_task("imputation").baselines == tuple(IMPUTATION_BASELINES)


@pytest.fixture(scope="module")
def imputer(tmp_path_factory, tiny_backbone_dir):
    """A tiny imputation model (synthetic-small, point:0.5), trained a few steps."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir, "--task", "imputation", "--horizon", "0",
                       "--missing_pattern", "point:0.5", steps=4)


def test_evaluate_scores_the_hidden_entries_only_beside_the_baselines(imputer):
    from st_instruct.protocols.evaluate import evaluate_forecaster
    from st_instruct.protocols.imputation import imputation_target, readable_windows
    from st_instruct.samples.builder import series_hidden

    names = ["mean", "linear_interpolation", "neighbour_mean", "historical_average"]
    report, arrays = evaluate_forecaster(imputer, "synthetic-small", max_windows=6, models=names, progress=False)
    assert report["task"] == "imputation" and report["missing_pattern"] == "point:0.5"
    assert {"st_forecaster", *names} <= set(report["results"])
    assert all(np.isfinite(report["results"][name]["MAE"]) for name in ["st_forecaster", *names])
    # the scored entries are exactly the hidden, known ones of the evaluated windows
    from st_instruct.protocols.baselines import prepare_windows

    windows = prepare_windows("synthetic-small", 12, 0, "7:1:2")
    hidden = series_hidden(windows, "point:0.5", 0)
    rows, skipped = readable_windows(windows, "test", hidden)
    assert skipped == 0 and report["windows_skipped"] == {"nothing left to read": 0}
    evaluated = np.searchsorted(windows.starts["test"], arrays["starts"])
    target = imputation_target(windows, "test", evaluated, hidden)
    np.testing.assert_array_equal(arrays["mask"], target["y_mask"])
    assert report["scored_entries"] == int(target["y_mask"].sum()) > 0
    # a baseline's filled values equal the input where readable: only the hidden ones can differ from the truth
    filled = arrays["predictions"]["linear_interpolation"]
    np.testing.assert_array_equal(filled[target["visible"]], target["y"][target["visible"]])

    heavier, _ = evaluate_forecaster(imputer, "synthetic-small", max_windows=6, models=["mean"], progress=False,
                                     missing_pattern="point:0.8")
    assert heavier["missing_pattern"] == "point:0.8"
    assert heavier["scored_entries"] > 1.4 * report["scored_entries"]


def test_bad_missing_patterns_on_evaluate_are_one_line(cli, imputer):
    from cli_check import assert_clean_failure

    for pattern in ("point:1.5", "point:0", "holes:0.5"):
        result = cli("evaluate", "--model", imputer, "--dataset", "synthetic-small", "--missing-pattern", pattern,
                     "--models", "mean", "--quiet")
        assert_clean_failure(result, "missing_pattern")


def _gappy_series(tmp_path, rank=3, rate=0.3, seed=0):
    """synthetic-small's first 60 steps with ``rate`` of the values set to NaN, saved as .npz of rank ``rank`` (no
    clock of its own: the flags give it)."""
    from st_instruct.data.loaders import get_dataset

    data = get_dataset("synthetic-small")
    values = data.values[:60].astype(np.float32).copy()
    values[values == 0] = 1.0  # synthetic-small's null value is 0: the only gaps are the NaN set here
    values[np.random.default_rng(seed).random(values.shape) < rate] = np.nan
    if rank == 2:
        values = values[..., 0]
    path = tmp_path / f"gappy{rank}.npz"
    np.savez(path, data=values)
    clock = ["--series-start", str(data.time_index()[0]), "--freq", "1h"]
    return path, values, clock


def test_predict_fills_the_gaps_and_keeps_every_observed_value_bit_identical(cli, imputer, tmp_path):
    series, values, clock = _gappy_series(tmp_path)
    out = tmp_path / "filled.npz"
    result = cli("predict", "--model", imputer, "--input", series, *clock, "--task", "imputation", "--output", out,
                 "--quiet")
    assert result.code == 0, result.err
    saved = np.load(out)
    filled, was_gap = saved["data"], np.isnan(values)
    assert filled.shape == values.shape and saved["filled"].shape == values.shape
    np.testing.assert_array_equal(filled[~was_gap], values[~was_gap])  # bit for bit
    assert np.isfinite(filled).all() and (saved["filled"] == was_gap).all()
    assert f"filled {int(was_gap.sum())} of {int(was_gap.sum())}" in result.out


def test_predict_writes_a_rank_2_file_back_in_its_own_rank(cli, tmp_path, tmp_path_factory, tiny_backbone_dir):
    """A ``[T, N]`` file (one channel) comes back as ``[T, N]``, its observed values bit-identical."""
    one_channel = train_smoke(tmp_path_factory, tiny_backbone_dir, "--task", "imputation", "--horizon", "0",
                              "--missing_pattern", "point:0.5", "--dataset_names", "synthetic-small[inflow]")
    series, values, clock = _gappy_series(tmp_path, rank=2)
    out = tmp_path / "filled.npz"
    result = cli("predict", "--model", one_channel, "--input", series, *clock, "--task", "imputation", "--output",
                 out, "--quiet")
    assert result.code == 0, result.err
    filled, was_gap = np.load(out)["data"], np.isnan(values)
    assert values.ndim == 2 and filled.shape == values.shape
    np.testing.assert_array_equal(filled[~was_gap], values[~was_gap])
    assert np.isfinite(filled).all()


def test_predict_on_a_series_without_gaps_says_so_and_writes_nothing(cli, imputer, tmp_path):
    series, values, clock = _gappy_series(tmp_path, rate=0.0)
    out = tmp_path / "filled.npz"
    result = cli("predict", "--model", imputer, "--input", series, *clock, "--output", out, "--quiet")
    assert_clean = result.code != 0 and "no gap" in result.err and "nothing written" in result.err
    assert assert_clean, result.err
    assert not out.exists()


def test_predict_task_must_match_the_model(cli, imputer, tmp_path, tiny_backbone_dir, tmp_path_factory):
    from cli_check import assert_clean_failure

    series, _, clock = _gappy_series(tmp_path)
    result = cli("predict", "--model", imputer, "--input", series, *clock, "--task", "forecasting", "--output",
                 tmp_path / "f.npz", "--quiet")
    assert_clean_failure(result, "--task forecasting", "imputation")
    forecaster = train_smoke(tmp_path_factory, tiny_backbone_dir)
    result = cli("predict", "--model", forecaster, "--input", series, *clock, "--task", "imputation", "--output",
                 tmp_path / "f.npz", "--quiet")
    assert_clean_failure(result, "--task imputation", "forecasting")


def test_sparse_history_forecasting_fits_the_baselines_on_the_sparse_series(tmp_path_factory, tiny_backbone_dir):
    """A forecaster trained on a sparse series (``missing_pattern`` on forecasting) is scored beside baselines that
    read the same sparse history -- their last value is not the dense series' -- on every truly observed target."""
    from st_instruct.protocols.baselines import prepare_windows
    from st_instruct.protocols.evaluate import evaluate_forecaster

    sparse = train_smoke(tmp_path_factory, tiny_backbone_dir, "--missing_pattern", "point:0.8")
    report, arrays = evaluate_forecaster(sparse, "synthetic-small", max_windows=4, models=["window_last_value"],
                                         progress=False)
    assert report["missing_pattern"] == "point:0.8" and report["task"] == "forecasting"

    windows = prepare_windows("synthetic-small", 12, 12, "7:1:2")
    full = windows.batch("test", np.searchsorted(windows.starts["test"], arrays["starts"]))
    np.testing.assert_array_equal(arrays["mask"], full["y_mask"])  # scored on the dense truth
    last_dense = full["x"][:, -1]  # the dense last value (scaled) differs from what the sparse baseline read
    assert not np.allclose(arrays["predictions"]["window_last_value"][:, 0],
                           windows.scaler.inverse_transform(last_dense))


def test_history_fill_is_refused_for_an_imputation_model(imputer):
    from st_instruct.protocols.evaluate import evaluate_forecaster

    with pytest.raises(ValueError, match="--history-fill"):
        evaluate_forecaster(imputer, "synthetic-small", max_windows=2, progress=False, history_fill="forward")


def test_plot_models_knows_the_pretrained_encoder_row_only_when_it_is_scored():
    from st_instruct.protocols.evaluate import check_plot_models, report_rows
    from st_instruct.protocols.imputation import MAE_ENCODER_ROW

    task = get_task("imputation")
    check_plot_models([MAE_ENCODER_ROW, "saits"], report_rows(task, None, pretrained_encoder=True))
    with pytest.raises(ValueError, match="not a row of this evaluation"):
        check_plot_models([MAE_ENCODER_ROW], report_rows(task, None))


def test_evaluate_task_is_checked_against_the_model(cli, imputer, tmp_path):
    from cli_check import assert_clean_failure

    result = cli("evaluate", "--model", imputer, "--dataset", "synthetic-small", "--task", "forecasting", "--output",
                 tmp_path / "wrong", "--quiet")
    assert_clean_failure(result, "--task forecasting", "imputation")
    assert not (tmp_path / "wrong").exists()
    result = cli("evaluate", "--model", imputer, "--dataset", "synthetic-small", "--task", "imputation",
                 "--max-windows", "2", "--models", "mean", "--output", tmp_path / "right", "--quiet")
    assert result.code == 0, result.err
    assert (tmp_path / "right" / "results.json").is_file()
