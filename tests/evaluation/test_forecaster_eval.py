"""``st-instruct evaluate``: a tiny forecaster trained once by the smoke recipe, scored beside the baselines on the
same windows in-domain and zero-shot; channel mismatch and incomplete model folders are clear errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import train_smoke

from st_instruct.cli import main
from st_instruct.evaluation.baselines import run_baselines
from st_instruct.evaluation.plots import window_times
from st_instruct.model_dir import MODEL_ROW
from st_instruct.protocols.baselines import prepare_windows
from st_instruct.protocols.evaluate import evaluate_forecaster
from st_instruct.tasks.metrics import horizon_metrics

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke_sft.yaml"
BASELINES = ["historical_average", "last_value", "ridge"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_backbone_dir):
    """A forecaster trained for 2 steps by the smoke recipe on a tiny Llama (synthetic-small, 2 channels)."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir)


def test_in_domain_report_scores_model_and_baselines_on_the_same_windows(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic-small", "--max-windows", "3",
                 "--models", *BASELINES, "--output", str(out), "--json", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert report["protocol"] == "in-domain" and report["task"] == "forecasting"
    assert report["dataset"] == "synthetic-small" and report["horizon"] == 12 and report["windows"]["test"] == 3
    assert set(report["results"]) == {MODEL_ROW, *BASELINES}
    for result in report["results"].values():
        assert {"MAE", "RMSE", "MAPE", "WAPE", "per_horizon", "fit_seconds", "predict_seconds"} <= set(result)
        assert len(result["per_horizon"]) == 12 and result["MAE"] is not None
    assert report["results"][MODEL_ROW]["fit_seconds"] == 0
    assert (out / "report.md").is_file()
    assert (out / "forecasts_inflow.png").is_file() and (out / "forecasts_outflow.png").is_file()  # one per channel
    assert MODEL_ROW in (out / "report.md").read_text() and MODEL_ROW in capsys.readouterr().out


def test_forecaster_covers_every_node_of_the_sampled_windows_and_baselines_are_restricted(model_dir):
    report, arrays = evaluate_forecaster(model_dir, "synthetic-small", max_windows=2, models=["last_value"],
                                         progress=False)
    target, mask = arrays["target"], arrays["mask"]
    assert target.shape == (2, 12, 12, 2) and mask.shape == target.shape
    for pred in arrays["predictions"].values():
        assert pred.shape == target.shape and np.isfinite(pred).all()
    # the baseline is scored on exactly those windows: its full-split forecasts restricted to them
    windows = prepare_windows("synthetic-small")
    all_times = window_times(windows)[:, 0]
    rows = [int(np.flatnonzero(all_times == t)[0]) for t in arrays["times"][:, 0]]
    _, full = run_baselines(windows, ["last_value"], progress=False, return_predictions=True)
    np.testing.assert_array_equal(arrays["predictions"]["last_value"], full["last_value"][rows])
    np.testing.assert_array_equal(target, windows.batch("test", np.array(rows))["y"])
    metrics = horizon_metrics(full["last_value"][rows], target, mask)
    assert report["results"]["last_value"]["MAE"] == pytest.approx(metrics["MAE"])
    assert report["windows"]["test"] == 2


def test_prediction_shows_a_progress_bar_unless_quiet_and_returns_the_units(model_dir, capsys):
    capsys.readouterr()
    _, arrays = evaluate_forecaster(model_dir, "synthetic-small", max_windows=2, models=["last_value"],
                                    progress=True)
    assert f"predicting ({MODEL_ROW})" in capsys.readouterr().err
    assert arrays["units"] == ["trips/h", "trips/h"]
    evaluate_forecaster(model_dir, "synthetic-small", max_windows=2, models=["last_value"], progress=False)
    assert "predicting" not in capsys.readouterr().err


def test_unknown_plot_models_is_one_line_naming_the_rows_before_any_work(model_dir, tmp_path, capsys, monkeypatch):
    from st_instruct.protocols import evaluate as evaluate_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --plot-models was checked")

    monkeypatch.setattr(evaluate_module, "load_forecaster", no_load)
    code = main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic-small", "--models", "last_value",
                 "ridge", "--plot-models", "st_forecaster", "ridgee", "--output", str(tmp_path / "e"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--plot-models ridgee: not a row of this evaluation; known: st_forecaster, last_value, ridge" in err
    # in-domain: no source-fitted rows (the command line accepted the name, the protocol refuses it)
    with pytest.raises(ValueError, match="--plot-models ridge@source: not a row of this evaluation; known: "
                                         "st_forecaster, ridge$"):
        evaluate_forecaster(model_dir, "synthetic-small", models=["ridge"], plot_models=["ridge@source"])
    assert not (tmp_path / "e").exists()


def test_plot_models_selects_the_drawn_rows(model_dir, tmp_path, monkeypatch):
    from st_instruct.evaluation import report

    drawn = []
    monkeypatch.setattr(report, "plot_forecasts", lambda path, target, predictions, **kw: drawn.append(
        (kw["channel_name"], kw["units"], sorted(predictions))) or Path(path))
    assert main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic-small", "--max-windows", "2",
                 "--models", "last_value", "ridge", "--plot-models", "last_value", "--output", str(tmp_path / "e"),
                 "--quiet"]) == 0
    assert drawn == [("inflow", "trips/h", ["last_value"]), ("outflow", "trips/h", ["last_value"])]


def test_zero_shot_on_another_city_with_other_node_count(model_dir, tmp_path):
    report, arrays = evaluate_forecaster(model_dir, "synthetic", max_windows=2, models=["last_value"],
                                         progress=False)
    assert report["protocol"] == "zero-shot (trained on synthetic-small)"
    assert arrays["target"].shape[2] == 48 and report["windows"]["test"] == 2
    assert set(report["results"]) == {MODEL_ROW, "last_value"}


def test_channel_mismatch_is_one_clear_line(model_dir, tmp_path, capsys):
    code = main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic-motorway", "--max-windows", "2",
                 "--models", "last_value", "--output", str(tmp_path / "e"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "1 channel" in err and "trained on 2" in err


def test_incomplete_model_folder_is_a_clear_error(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "st_modules.safetensors").unlink()
    code = main(["evaluate", "--model", str(broken), "--dataset", "synthetic-small", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "missing st_modules.safetensors" in err
    (broken / "recipe.yaml").unlink()
    shutil.copy(model_dir / "st_modules.safetensors", broken)
    code = main(["evaluate", "--model", str(broken), "--dataset", "synthetic-small", "--quiet"])
    assert code == 2 and "recipe.yaml" in capsys.readouterr().err


def test_broadcast_channels_forecasts_a_one_channel_dataset_with_the_two_channel_model(model_dir, tmp_path, capsys):
    """synthetic-motorway has one speed channel; the model was trained on two. The flag feeds the speed to both
    input channels and averages the two outputs: the forecast is the mean of the model's own outputs on the
    duplicated batch, and the report says so."""
    from st_instruct.model_dir import trained_data_config
    from st_instruct.models.saving import load_forecaster
    from st_instruct.protocols.evaluate import evaluation_config
    from st_instruct.samples.builder import build_dataset
    from st_instruct.samples.collator import STDataCollator

    report, arrays = evaluate_forecaster(model_dir, "synthetic-motorway", max_windows=2, models=["last_value"],
                                         progress=False, broadcast_channels=True)
    assert report["protocol"].startswith("zero-shot") and "averaged" in report["broadcast_channels"]
    pred = arrays["predictions"][MODEL_ROW]
    assert pred.shape == arrays["target"].shape and pred.shape[-1] == 1 and np.isfinite(pred).all()
    # by hand: one sample, both channels filled with the speed, the mean of the two outputs
    model, tokenizer = load_forecaster(model_dir)
    config, _ = evaluation_config(trained_data_config(model_dir), "synthetic-motorway", max_windows=2,
                                  zero_shot_scaling="window")
    sample = build_dataset(config, tokenizer)["test"][0]
    batch = STDataCollator(tokenizer)([sample])
    assert batch["history"].shape[-1] == 1
    for key in ("history", "history_mask", "target", "target_mask", "scaler_mean", "scaler_std"):
        batch[key] = torch.cat([batch[key], batch[key]], dim=-1)
    expected = model.predict(batch).mean(-1)[0]  # [P, N'] for the sample's node
    row = list(arrays["starts"]).index(sample["window_start"])
    node = sample["node_index"][0]
    np.testing.assert_allclose(pred[row, :, node, 0], expected[:, 0].numpy(), rtol=1e-5, atol=1e-4)


def test_broadcast_refuses_a_multi_channel_dataset_and_mismatch_names_the_flag(model_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="one-channel dataset"):
        evaluate_forecaster(model_dir, "synthetic", max_windows=1, models=["last_value"], progress=False,
                            broadcast_channels=True)
    main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic-motorway", "--max-windows", "1", "--quiet"])
    assert "--broadcast-channels" in capsys.readouterr().err


def test_few_shot_fine_tunes_on_the_first_windows_then_reports_beside_baselines_fitted_on_them(model_dir, tmp_path):
    tuned = tmp_path / "tuned"
    code = main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic-small", "--few-shot", "0.005",
                 "--few-shot-steps", "2", "--few-shot-output", str(tuned), "--max-windows", "2",
                 "--models", "historical_average", "--output", str(tmp_path / "e"), "--quiet"])
    assert code == 0
    record = json.loads((tuned / "few_shot.json").read_text())
    # the few-shot folder forecasts its target's new values on its own: its data profile is the target's, and its card
    # records the evaluation it just had
    assert list(json.loads((tuned / "st_data_profile.json").read_text())["datasets"]) == ["synthetic-small"]
    assert "few-shot" in (tuned / "README.md").read_text() and (tuned / "st_evaluations.json").is_file()
    windows = prepare_windows("synthetic-small")
    kept = int(np.ceil(0.005 * windows.num_windows("train")))
    assert record["train_windows"] == kept and record["steps"] == 2 and record["protocol_version"] == "few-shot/2"
    assert record["train_samples"] == kept * windows.data.num_nodes  # node prompts: every node of those windows
    report = json.loads((tmp_path / "e" / "results.json").read_text())
    assert report["protocol"].startswith(f"few-shot (0.005 of the train split: the first {kept} windows")
    assert report["windows"]["train"] == kept
    # the fine-tuned weights moved away from the source model's
    from safetensors.torch import load_file

    before, after = load_file(model_dir / "st_modules.safetensors"), load_file(tuned / "st_modules.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the historical average was fitted on those windows only: as run by hand on the truncated windows
    few = windows.first_train_windows(kept)
    assert few.borders["train"] == (0, int(few.starts["train"][-1]) + 24)
    _, ha = run_baselines(few, ["historical_average"], progress=False, return_predictions=True)
    _, ha_full = run_baselines(windows, ["historical_average"], progress=False, return_predictions=True)
    _, arrays = evaluate_forecaster(tuned, "synthetic-small", max_windows=2, models=["historical_average"],
                                    progress=False)
    rows = [list(windows.starts["test"]).index(s) for s in arrays["starts"]]
    np.testing.assert_allclose(arrays["predictions"]["historical_average"], ha["historical_average"][rows])
    assert not np.allclose(ha["historical_average"][rows], ha_full["historical_average"][rows])
    # the folder is staged: its card names it (not its temporary sibling), and a second run is refused until
    # --overwrite, before any fine-tuning, leaving it as it was
    assert "# tuned: " in (tuned / "README.md").read_text() and ".partial-" not in (tuned / "README.md").read_text()
    kept_files = {p.name: p.read_bytes() for p in tuned.iterdir() if p.is_file()}
    again = ["evaluate", "--model", str(model_dir), "--dataset", "synthetic-small", "--few-shot", "0.005",
             "--few-shot-steps", "2", "--few-shot-output", str(tuned), "--max-windows", "2", "--models",
             "historical_average", "--output", str(tmp_path / "e2"), "--quiet"]
    assert main(again) == 2
    assert {p.name: p.read_bytes() for p in tuned.iterdir() if p.is_file()} == kept_files
    assert main([*again, "--overwrite"]) == 0 and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_few_shot_fraction_out_of_range_is_a_clear_error(model_dir, tmp_path, capsys):
    code = main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic-small", "--few-shot", "1.5",
                 "--few-shot-output", str(tmp_path / "t"), "--quiet"])
    assert code == 2 and "(0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_a_model_trained_on_a_path_dataset_is_evaluated_with_its_recipe_calendar(tmp_path, tiny_backbone_dir):
    """`train` with the friendly dataset flags saves them as recipe keys; `evaluate` in-domain reads them back from
    recipe.yaml, so no flag is needed, and without them (zero-shot on a copy) the unknown calendar is refused."""
    import yaml

    rng = np.random.default_rng(0)
    path = tmp_path / "speeds.npz"
    np.savez(path, data=rng.uniform(10, 60, (96 * 4, 5)).astype(np.float32))
    output = tmp_path / "model"
    assert main(["train", str(SMOKE), "--model_name_or_path", str(tiny_backbone_dir), "--dataset_names", str(path),
                 "--freq", "15min", "--series-start", "2024-03-04", "--dataset_cache_dir", str(tmp_path / "built"),
                 "--report_to", "none", "--output_dir", str(output), "--max_steps", "1", "--save_strategy", "no"]) == 0
    recipe = yaml.safe_load((output / "recipe.yaml").read_text())
    assert recipe["dataset_freq"] == "15min" and recipe["dataset_series_start"] == "2024-03-04"
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(output), "--dataset", str(path), "--max-windows", "2", "--models",
                 "historical_average", "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["protocol"] == "in-domain" and report["calendar"].startswith("2024-03-04 00:00:00")
    assert "historical_average" in report["results"]
    copy = tmp_path / "copy.npz"
    shutil.copy(path, copy)
    assert main(["evaluate", "--model", str(output), "--dataset", str(copy), "--output", str(tmp_path / "e2"),
                 "--quiet"]) == 2
    assert not (tmp_path / "e2").exists()
