"""The masked-autoencoder-pretrained encoder alone as an imputation row (``mae_encoder``): a tiny encoder pretrained by
the real ``pretrain`` on synthetic-small fills the hidden entries of evaluation windows, returns every visible entry
as read, never reads a hidden value, and is skipped with a reason where it cannot fill the windows."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from st_instruct.configs import PRETRAIN_DATACLASSES, parse_recipe
from st_instruct.data.windows import build_windows
from st_instruct.pretraining.run import load_pretrained_mae, load_sources, pretrain, window_batch
from st_instruct.protocols.baselines import prepare_windows
from st_instruct.protocols.imputation import (
    MAE_ENCODER_ROW,
    imputation_target,
    pretrained_encoder_rows,
    pretrained_row_kind,
    readable_windows,
)
from st_instruct.samples.builder import series_hidden

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = ("--st_encoder_dim", "8", "--pretrain_batch_size", "4", "--pretrain_steps", "3")
PATTERN = "point:0.5"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


def pretrained(objective, output, *flags):
    configs = parse_recipe(PRETRAIN_DATACLASSES, [str(RECIPES / f"pretrain_{objective}.yaml"), *TINY,
                                                  "--pretrain_output_dir", str(output), *flags])
    return pretrain(*configs, progress=False), configs


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    train, train_configs = pretrained("mae", root / "train", "--pretrain_mask_families", "random", "tube")
    window, _ = pretrained("mae", root / "window", "--pretrain_mask_families", "random", "--scaling", "window")
    forecast, _ = pretrained("forecast", root / "forecast")
    return {"train": train, "window": window, "forecast": forecast, "train_configs": train_configs}


@pytest.fixture(scope="module")
def evaluated():
    windows = prepare_windows("synthetic-small", 12, 0, "7:1:2")
    hidden = series_hidden(windows, PATTERN, 0)
    rows, _ = readable_windows(windows, "test", hidden)
    return windows, hidden, rows[::17][:12]


@pytest.mark.parametrize("scaling", ["train", "window"])
def test_the_row_keeps_visible_entries_fills_hidden_ones_and_never_reads_them(scaling, folders, evaluated):
    windows, hidden, rows = evaluated
    found = pretrained_encoder_rows(folders[scaling], windows, "test", rows, hidden)[MAE_ENCODER_ROW]
    assert "skipped" not in found, found
    pred, target = found["pred"], imputation_target(windows, "test", rows, hidden)
    visible = target["visible"]
    assert pred.shape == target["y"].shape and pred.dtype == target["y"].dtype
    assert target["y_mask"].sum() > 100 and visible.sum() > 100
    assert np.array_equal(pred[visible].view(np.uint32), target["y"][visible].view(np.uint32))  # bit for bit
    assert np.isfinite(pred).all() and found["fit_seconds"] == 0.0 and found["predict_seconds"] >= 0
    assert found["kind"] == "target-fitted" and found["fitted_on"] == "synthetic-small"
    filled = pred[target["y_mask"]]
    assert np.unique(filled).size > filled.size // 2  # the decoder's values, not one constant
    assert not np.allclose(filled, target["y"][target["y_mask"]])

    # the hidden values of the evaluated split changed (the train split, and so its scaler, untouched): same output
    late = np.zeros_like(hidden)
    late[windows.borders["train"][1]:] = True
    values = np.where(hidden & late, windows.data.values * 3 + 50, windows.data.values)
    changed = build_windows(dataclasses.replace(windows.data, values=values), 12, 0, "7:1:2")
    assert not np.array_equal(changed.data.values, windows.data.values)
    again = pretrained_encoder_rows(folders[scaling], changed, "test", rows, hidden)[MAE_ENCODER_ROW]["pred"]
    assert np.array_equal(again, pred)
    # ... while a visible value does reach the decoder
    values = np.where(~hidden & late, windows.data.values * 3 + 50, windows.data.values)
    changed = build_windows(dataclasses.replace(windows.data, values=values), 12, 0, "7:1:2")
    moved = pretrained_encoder_rows(folders[scaling], changed, "test", rows, hidden)[MAE_ENCODER_ROW]["pred"]
    assert not np.allclose(moved[target["y_mask"]], filled)


def test_train_scaling_is_the_pretraining_s_own_inputs_and_outputs(folders):
    """What the row feeds the encoder and how it de-scales is what pretraining did: its ``window_batch`` of the same
    train windows with the same entries hidden, through the saved model, de-scaled by the train split's scaler."""
    data_config, _, config = folders["train_configs"]
    source = load_sources(data_config, list(config.pretrain_mask_families))[0]
    index = np.arange(0, 40, 5)
    batch = window_batch(source, index)
    mae = load_pretrained_mae(folders["train"])
    hidden = torch.rand(batch["history"].shape, generator=torch.Generator().manual_seed(1)) < 0.4
    with torch.no_grad():
        scaled = mae.model(**{key: value for key, value in batch.items() if not key.startswith("target")},
                           hidden=hidden).numpy()
    windows = source.windows
    expected = scaled * windows.scaler.std + windows.scaler.mean
    steps = windows.starts["train"][index][:, None] + np.arange(12)[None, :]
    visible = windows.observed[steps] & ~hidden.numpy()
    got = mae.reconstruct(windows.data.values[steps], visible, windows.time_of_day[steps],
                          windows.day_of_week[steps], mae.coordinates(windows.data), windows.steps_per_day,
                          windows.scaler)
    np.testing.assert_allclose(got[~visible], expected[~visible], rtol=1e-5, atol=1e-4)


def test_a_forecast_folder_is_skipped_with_its_reason(folders, evaluated):
    windows, hidden, rows = evaluated
    found = pretrained_encoder_rows(folders["forecast"], windows, "test", rows, hidden)
    reason = found[MAE_ENCODER_ROW]["skipped"]
    assert "objective 'forecast'" in reason and "pretrain_objective: mae" in reason and "\n" not in reason


def test_another_history_length_is_skipped_with_its_reason(folders):
    windows = prepare_windows("synthetic-small", 6, 0, "7:1:2")
    hidden = series_hidden(windows, PATTERN, 0)
    rows, _ = readable_windows(windows, "test", hidden)
    reason = pretrained_encoder_rows(folders["train"], windows, "test", rows[:4], hidden)[MAE_ENCODER_ROW]["skipped"]
    assert "histories of 12 steps" in reason and "have 6" in reason


def test_a_node_set_the_encoder_cannot_place_is_skipped_and_no_window_is_no_error(tmp_path, evaluated):
    """Grid coordinates pretrained on the grid city: the 12 zones of synthetic-small have no grid cells."""
    folder, _ = pretrained("mae", tmp_path / "grid", "--dataset_names", "synthetic-grid", "--coordinates", "grid",
                           "--pretrain_mask_families", "random")
    windows, hidden, rows = evaluated
    reason = pretrained_encoder_rows(folder, windows, "test", rows, hidden)[MAE_ENCODER_ROW]["skipped"]
    assert "coordinates: grid" in reason and "synthetic-small" in reason and "\n" not in reason
    grid = prepare_windows("synthetic-grid", 12, 0, "7:1:2")
    empty = pretrained_encoder_rows(folder, grid, "test", rows[:0], series_hidden(grid, PATTERN, 0))
    assert empty[MAE_ENCODER_ROW]["pred"].shape == (0, 12, 64, 2)


def test_windows_the_pretraining_read_are_skipped_and_the_kind_follows_the_corpus(folders, evaluated):
    windows, hidden, _ = evaluated
    rows, _ = readable_windows(windows, "train", hidden)
    reason = pretrained_encoder_rows(folders["train"], windows, "train", rows[:4], hidden)[MAE_ENCODER_ROW]
    assert "covers" in reason["skipped"] and "evaluated steps" in reason["skipped"]
    assert pretrained_row_kind(folders["train"], windows) == "target-fitted"
    grid = prepare_windows("synthetic-grid", 12, 0, "7:1:2")
    assert pretrained_row_kind(folders["train"], grid) == "source-fitted"
    grid_hidden = series_hidden(grid, PATTERN, 0)
    found = pretrained_encoder_rows(folders["window"], grid, "test", np.arange(3), grid_hidden)[MAE_ENCODER_ROW]
    assert np.isfinite(found["pred"]).all() and found["pred"].shape == (3, 12, 64, 2)
    assert found["kind"] == "source-fitted" and found["fitted_on"] == "synthetic-small"


def test_evaluate_reports_the_row_beside_the_imputation_baselines(folders, tmp_path_factory, tiny_backbone_dir):
    """``evaluate --pretrained-encoder DIR`` on an imputation model: the row ``mae_encoder``, target-fitted (the folder
    pretrained on synthetic-small's train split), scored on the same hidden entries as every other row; refused with
    one line on a forecasting model."""
    from tiny import train_smoke

    from st_instruct.protocols.evaluate import evaluate_forecaster

    imputer = train_smoke(tmp_path_factory, tiny_backbone_dir, "--task", "imputation", "--horizon", "0",
                          "--missing_pattern", PATTERN)
    report, arrays = evaluate_forecaster(imputer, "synthetic-small", max_windows=4, models=["mean"],
                                         progress=False, pretrained_encoder=str(folders["train"]))
    row = report["results"][MAE_ENCODER_ROW]
    assert row["kind"] == "target-fitted" and np.isfinite(row["MAE"])
    assert row["MAE"] != report["results"]["mean"]["MAE"]
    assert arrays["predictions"][MAE_ENCODER_ROW].shape == arrays["predictions"]["mean"].shape
    forecaster = train_smoke(tmp_path_factory, tiny_backbone_dir)
    with pytest.raises(ValueError, match="--pretrained-encoder adds an imputation row"):
        evaluate_forecaster(forecaster, "synthetic-small", max_windows=2, models=["window_mean"], progress=False,
                            pretrained_encoder=str(folders["train"]))
