"""The task seam (st_instruct.tasks): forecasting is a task like any other, and a new task changes what the stack
builds and trains by being registered -- nothing in models/ or training/ is touched. The toy task here (reconstruct
the whole history, every observed entry scored, from a copy with the recipe's missing pattern hidden) is registered
for the tests only; imputation, the registered task beside forecasting, scores only the hidden entries."""

import numpy as np
import pytest
from tiny import train_smoke

from st_instruct.configs import TASK_NAMES, DataConfig
from st_instruct.configs import data as data_configs
from st_instruct.evaluation.report import format_results_table
from st_instruct.models.forecaster import STForecasterConfig
from st_instruct.protocols.records import model_index
from st_instruct.samples.builder import build_dataset
from st_instruct.tasks import TASKS, Task, get_task


class Reconstruction(Task):
    """Read the history (with the recipe's missing pattern hidden); predict the whole history, every observed entry
    scored."""

    name = "reconstruction"
    baselines = ("last_value",)

    def input_steps(self, history, horizon):
        return np.arange(history)

    def target_steps(self, history, horizon):
        return np.arange(history)

    def target_mask(self, observed, hidden):
        return observed


@pytest.fixture
def reconstruction(monkeypatch):
    """The toy task registered (and its name allowed in recipes) for the test only."""
    monkeypatch.setitem(TASKS, "reconstruction", Reconstruction())
    monkeypatch.setattr(data_configs, "TASK_NAMES", (*TASK_NAMES, "reconstruction"))


def test_the_recipe_names_mirror_the_registered_tasks():
    assert TASK_NAMES == tuple(TASKS)
    with pytest.raises(ValueError, match=r"task must be one of \['forecasting', 'imputation'\], found 'cleaning'"):
        DataConfig(task="cleaning")


def test_forecasting_reads_the_history_and_predicts_the_horizon_after_it():
    task = get_task("forecasting")
    assert task.input_steps(12, 6).tolist() == list(range(12))
    assert task.target_steps(12, 6).tolist() == list(range(12, 18)) and task.target_length(12, 6) == 6
    observed = np.random.default_rng(0).random((2, 6, 3, 1)) < 0.8
    hidden = observed & (np.random.default_rng(1).random(observed.shape) < 0.5)
    np.testing.assert_array_equal(task.target_mask(observed, hidden), observed & ~hidden)  # a sparser series
    assert task.baselines == ("window_last_value", "window_mean", "window_linear_trend", "historical_average",
                              "last_value", "seasonal_naive_day", "seasonal_naive_week", "ridge", "global_ridge",
                              "stid")


def test_a_registered_task_decides_the_samples(reconstruction, tmp_path):
    """The builder cuts the samples through the task: the target is the history itself, and the hidden entries are
    neither in the history the model reads nor in its mask, while they stay in the target."""
    config = DataConfig(dataset_names=["synthetic-small"], window_sample=2, node_sample=3, task="reconstruction",
                        missing_pattern="point:0.25", dataset_cache_dir=str(tmp_path))
    train = build_dataset(config)["train"]
    history = np.asarray(train[0]["history"])
    history_mask = np.asarray(train[0]["history_mask"])
    target, target_mask = np.asarray(train[0]["target"]), np.asarray(train[0]["target_mask"])
    assert history.shape == target.shape == (12, 1, 2)  # the history's steps, not the horizon's
    hidden = target_mask & ~history_mask
    assert hidden.any() and (history[hidden] == 0).all() and not np.allclose(target[hidden], 0)
    np.testing.assert_array_equal(history[history_mask], target[history_mask])


def test_a_registered_task_sizes_the_head_and_trains(reconstruction, tmp_path_factory, tiny_backbone_dir):
    """Training a recipe with ``task: reconstruction`` sizes the head by the task (12 history steps, where the
    recipe's horizon is 6) and trains on its loss, with no change to models/ or training/."""
    folder = train_smoke(tmp_path_factory, tiny_backbone_dir, "--task", "reconstruction", "--horizon", "6",
                         "--missing_pattern", "point:0.25")
    assert STForecasterConfig.load(folder).horizon == 12


class TwoMetricReconstruction(Reconstruction):
    """The toy task with its own metrics and card name, to show the reports and the card follow the task."""

    name = "two-metric-reconstruction"
    metrics = ("MAE", "RMSE")
    hub_task_type = "tabular-regression"
    description = "history reconstruction"


def test_the_card_and_the_reports_name_the_task_and_its_metrics_only(monkeypatch):
    """The model card's model-index takes the task's Hub type, name and metrics from the report's ``task`` (a report
    without one, written before tasks existed, is forecasting's); the markdown report's table has its columns."""
    monkeypatch.setitem(TASKS, TwoMetricReconstruction.name, TwoMetricReconstruction())
    row = {"MAE": 1.5, "RMSE": 2.5, "MAPE": 9.0, "WAPE": 8.0, "fit_seconds": 0.0, "predict_seconds": 0.1}
    report = {"task": TwoMetricReconstruction.name, "dataset": "synthetic-small", "results": {"st_forecaster": row}}
    entries = model_index([report])
    assert [(e.metric_name, e.metric_value) for e in entries] == [("MAE", 1.5), ("RMSE", 2.5)]
    assert {(e.task_type, e.task_name) for e in entries} == {("tabular-regression", "history reconstruction")}
    old = model_index([{k: v for k, v in report.items() if k != "task"}])
    assert [e.metric_name for e in old] == list(get_task("forecasting").metrics)
    assert {e.task_type for e in old} == {"time-series-forecasting"}
    header = format_results_table(report["results"], metrics=TwoMetricReconstruction.metrics).splitlines()[0]
    assert "RMSE" in header and "MAPE" not in header
