"""The zero-shot protocol (``zero-shot/2``): strict per-window scaling reads no value outside the input window,
baselines fitted on the source are applied to the target (or skipped with the reason), and the report states the
protocol version, the scaling, what every baseline was fitted on and what kind of reference every row is."""

import dataclasses
import json

import datasets
import numpy as np
import pyarrow as pa
import pytest
from tiny import train_smoke

from st_instruct.cli import main
from st_instruct.configs import DataConfig, RecipeError
from st_instruct.data.loaders import get_dataset
from st_instruct.evaluation.baselines import (
    HistoricalAverage,
    RidgeBaseline,
    run_baselines,
    run_source_baselines,
)
from st_instruct.evaluation.stid import STIDBaseline
from st_instruct.model_dir import MODEL_ROW
from st_instruct.protocols.baselines import prepare_windows
from st_instruct.protocols.evaluate import evaluate_forecaster
from st_instruct.samples.builder import plan_source, record_batch, sample_columns, sample_features
from st_instruct.samples.prompts import load_template


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_backbone_dir):
    """A forecaster trained for 2 steps by the smoke recipe on a tiny Llama (synthetic-small: 12 zones, 2 channels)."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir)


def _window_samples(data, scaling: str) -> dict:
    """Columns of the node samples of the first test window of ``data`` under ``scaling``."""
    config = DataConfig(dataset_names=[data.name], scaling=scaling)
    plan = plan_source(data, config)
    return plan, sample_columns(plan, "test", np.arange(1), load_template(config.template), "node")


def _changed_outside(data, start: int, history: int):
    """``data`` with every value outside steps ``[start, start + history)`` changed (future and other windows)."""
    values = data.values.copy()
    outside = np.ones(data.num_steps, dtype=bool)
    outside[start:start + history] = False
    values[outside] = values[outside] * 3.0 + 7.0
    return dataclasses.replace(data, values=values)


def test_window_scaling_is_the_history_statistics_of_each_node():
    data = get_dataset("synthetic")
    plan, columns = _window_samples(data, "window")
    start = int(plan.windows.starts["test"][0])
    history = data.values[start:start + 12]  # [L, N, C]
    observed = plan.windows.observed[start:start + 12]
    assert not observed.all() and observed.any(0).all()  # some nulls (0 = no trip), every node observed
    masked = np.ma.masked_array(history, ~observed)
    np.testing.assert_allclose(columns["scaler_mean"], masked.mean(0).filled(np.nan), rtol=1e-5)
    np.testing.assert_allclose(columns["scaler_std"], np.where(masked.std(0).filled(0) > 1e-8, masked.std(0), 1.0),
                               rtol=1e-4)
    restored = columns["history"][:, :, 0] * columns["scaler_std"][:, None] + columns["scaler_mean"][:, None]
    seen = observed.transpose(1, 0, 2)
    np.testing.assert_allclose(restored[seen], history.transpose(1, 0, 2)[seen], rtol=1e-4, atol=1e-3)
    assert (columns["history"][:, :, 0][~seen] == 0).all()  # a null enters as 0, the window's mean
    # with train scaling every sample carries the train split's per-channel statistics
    _, trained = _window_samples(data, "train")
    np.testing.assert_allclose(trained["scaler_mean"], np.broadcast_to(plan.windows.scaler.mean, (48, 2)))


def test_unknown_scaling_is_refused():
    with pytest.raises(RecipeError, match="scaling must be one of"):
        DataConfig(scaling="global")


def test_strict_zero_shot_scaling_uses_no_value_outside_the_input_window(model_dir):
    """Change every value of the target outside one window's history: with window scaling the window's samples
    (history, scaler statistics) and the model's forecast for it are unchanged; with train scaling they change."""
    from st_instruct.models.saving import load_forecaster
    from st_instruct.samples.collator import STDataCollator
    from st_instruct.samples.tokenize import tokenize_dataset

    model, tokenizer = load_forecaster(model_dir)
    collator = STDataCollator(tokenizer)

    def forecast(columns: dict) -> np.ndarray:
        table = pa.Table.from_batches([record_batch(columns, sample_features().arrow_schema)])
        rows = tokenize_dataset(datasets.Dataset(table), tokenizer)
        return model.predict(collator([rows[i] for i in range(len(rows))])).numpy()

    data = get_dataset("synthetic")
    for scaling, same in (("window", True), ("train", False)):
        plan, before = _window_samples(data, scaling)
        start = int(plan.windows.starts["test"][0])
        _, after = _window_samples(_changed_outside(data, start, 12), scaling)
        assert not np.array_equal(before["target"], after["target"])  # the future did change
        for key in ("history", "scaler_mean", "scaler_std"):
            assert np.array_equal(before[key], after[key]) == same, (scaling, key)
        # the first 8 zones of the window are enough to see the forecast move (or not)
        first = {key: value[:8] for key, value in before.items()}
        moved = {key: value[:8] for key, value in after.items()}
        if same:
            np.testing.assert_allclose(forecast(first), forecast(moved), rtol=1e-6, atol=1e-5)
        else:
            assert not np.allclose(forecast(first), forecast(moved), rtol=1e-3)


def test_source_fitted_baselines_equal_baselines_fitted_by_hand_on_the_source():
    """Same 12 zones, other values: the source-fitted rows are the baselines fitted on the source, with the source's
    scaler, applied to the target's test windows; last value fits nothing worth a row."""
    source = prepare_windows("synthetic-small")
    rng = np.random.default_rng(0)
    raw = source.data.values
    target_data = dataclasses.replace(source.data, name="synthetic-small-b",
                                      values=(raw * 1.7 + rng.uniform(0, 5, raw.shape)).astype(np.float32))
    target = prepare_windows(target_data)
    options = {"stid": {"max_epochs": 2}}
    results, preds = run_source_baselines(source, target, ["historical_average", "ridge", "stid", "last_value"],
                                          progress=False, options=options)
    assert "last_value" in results["last_value@source"]["skipped"]
    assert set(preds) == {"historical_average@source", "ridge@source", "stid@source"}
    scaler = source.scaler
    observed = target.observed
    by_hand_scaled = np.where(observed, (np.nan_to_num(target_data.values) - scaler.mean) / scaler.std, 0.0)
    on_target = dataclasses.replace(target, scaler=scaler, scaled=by_hand_scaled.astype(np.float32))
    for name, baseline in (("historical_average", HistoricalAverage()), ("ridge", RidgeBaseline()),
                           ("stid", STIDBaseline(max_epochs=2, progress=False))):
        baseline.fit(source)
        np.testing.assert_allclose(preds[f"{name}@source"], baseline.predict(on_target, "test"), rtol=1e-5,
                                   atol=1e-4)
    _, fitted_on_target = run_baselines(target, ["historical_average", "ridge"], progress=False,
                                        return_predictions=True)
    for name in ("historical_average", "ridge"):  # they were not fitted on the target
        assert not np.allclose(preds[f"{name}@source"], fitted_on_target[name], rtol=1e-3)


def test_source_baselines_across_channel_counts_are_skipped_with_the_reason():
    results, preds = run_source_baselines(prepare_windows("synthetic-small"), prepare_windows("synthetic-motorway"),
                                          ["ridge", "stid"], progress=False)
    assert preds == {}
    for name in ("ridge@source", "stid@source"):
        assert results[name]["skipped"].startswith("fitted on the source's 2 channel(s)")
    with pytest.raises(ValueError, match="unknown baseline 'arima'"):
        run_source_baselines(prepare_windows("synthetic-small"), prepare_windows("synthetic"), ["arima"])


def test_zero_shot_report_carries_the_protocol_and_skips_per_node_baselines(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(model_dir), "--dataset", "synthetic", "--max-windows", "2",
                 "--models", "historical_average", "ridge", "last_value", "window_mean", "global_ridge", "--output",
                 str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    kinds = {name: result.pop("kind") for name, result in report["results"].items()}
    assert kinds == {MODEL_ROW: "forecaster", "historical_average": "target-fitted", "ridge": "target-fitted",
                     "last_value": "target-fitted", "global_ridge": "target-fitted", "window_mean": "input-only",
                     "global_ridge@source": "source-fitted"}
    for name in ("window_mean", "global_ridge", "global_ridge@source"):  # the rows this version adds
        report["results"].pop(name)
    assert report["baselines_fitted_on"].pop("global_ridge@source") == "synthetic-small"
    assert report["baselines_fitted_on"].pop("global_ridge") == "synthetic"
    assert "it is the row `window_mean`" in report["skipped"].pop("window_mean@source")
    assert report["protocol"] == "zero-shot (trained on synthetic-small)"
    assert report["protocol_version"] == "zero-shot/2" and report["scaling"] == "window"
    assert report["baselines_fitted_on"] == {"historical_average": "synthetic", "ridge": "synthetic",
                                             "last_value": "synthetic"}
    assert set(report["results"]) == {MODEL_ROW, "historical_average", "ridge", "last_value"}
    reason = "per-node parameters of the source's 12 nodes do not apply to the target's 48 nodes"
    assert report["skipped"]["ridge@source"] == reason and report["skipped"]["historical_average@source"] == reason
    assert "last_value" in report["skipped"]["last_value@source"]
    markdown = (out / "report.md").read_text()
    assert "**Protocol version**: `zero-shot/2`" in markdown and "own history window" in markdown
    assert "**Baselines fitted on** `synthetic`" in markdown and "*input-only*: reads only each window" in markdown
    assert "| kind " in markdown
    assert "Protocol version: `zero-shot/2`" in capsys.readouterr().out


def test_train_scaling_and_source_rows_on_the_same_node_set(model_dir, tmp_path):
    """`--zero-shot-scaling train` keeps today's scaling; on a copy of the training city under another name with
    the same zones, the per-node baselines fitted on the source apply and are scored beside the target-fitted ones."""
    data = get_dataset("synthetic-small")
    path, nodes = tmp_path / "copy.npz", tmp_path / "nodes.csv"
    np.savez(path, data=data.values)
    nodes.write_text("name\n" + "".join(f'"{name}"\n' for name in data.node_names))
    spec = ["--freq", "1h", "--series-start", str(data.time_index()[0]), "--null-value", "0", "--channel-names",
            *data.channels, "--nodes", str(nodes)]
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(model_dir), "--dataset", str(path), "--max-windows", "2", *spec,
                 "--models", "ridge", "--zero-shot-scaling", "train", "--output", str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["scaling"] == "train" and report["protocol_version"] == "zero-shot/2"
    assert report["baselines_fitted_on"] == {"ridge": "copy", "ridge@source": "synthetic-small"}
    assert set(report["results"]) == {MODEL_ROW, "ridge", "ridge@source"} and not report["skipped"]


def test_in_domain_report_states_its_protocol(model_dir):
    report, _ = evaluate_forecaster(model_dir, "synthetic-small", max_windows=2, models=["last_value"],
                                    progress=False)
    assert report["protocol"] == "in-domain" and report["protocol_version"] == "in-domain/1"
    assert report["scaling"] == "train" and report["baselines_fitted_on"] == {"last_value": "synthetic-small"}
    assert not any(name.endswith("@source") for name in [*report["results"], *report["skipped"]])


def test_a_left_out_dataset_is_zero_shot_and_its_source_rows_never_fit_on_it(tmp_path_factory, tiny_backbone_dir):
    """A forecaster trained on a corpus with ``leave_out`` is zero-shot on the left-out dataset: the protocol names
    only the datasets it was trained on, and the source-fitted rows are fitted on those alone."""
    model = train_smoke(tmp_path_factory, tiny_backbone_dir, "--dataset_names", "synthetic-small", "synthetic",
                        "--leave_out", "synthetic", "--dataset_weights", "1", "3", steps=1)
    report, _ = evaluate_forecaster(model, "synthetic", max_windows=2, models=["global_ridge", "ridge"],
                                    progress=False)
    assert report["protocol"] == "zero-shot (trained on synthetic-small)"
    assert report["trained_on"] == ["synthetic-small"]
    assert report["baselines_fitted_on"] == {"global_ridge": "synthetic", "ridge": "synthetic",
                                             "global_ridge@source": "synthetic-small"}
    assert report["results"]["global_ridge@source"]["kind"] == "source-fitted"
    in_domain, _ = evaluate_forecaster(model, "synthetic-small", max_windows=2, models=["window_mean"], progress=False)
    assert in_domain["protocol"] == "in-domain"
