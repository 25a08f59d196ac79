"""Evaluation report: the markdown page, the output folder of one evaluation, and the baselines' predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from st_instruct.data.synthetic import generate_synthetic
from st_instruct.data.windows import build_windows
from st_instruct.evaluation.baselines import run_baselines
from st_instruct.evaluation.plots import window_times
from st_instruct.evaluation.report import (
    default_plot_models,
    forecast_figure_names,
    format_horizon_table,
    format_results_table,
    horizon_steps_to_show,
    write_evaluation_outputs,
    write_markdown_report,
    write_results_json,
)
from st_instruct.protocols.baselines import make_report
from st_instruct.tasks.metrics import METRICS, horizon_metrics

MODELS = ["historical_average", "last_value"]


def metrics(base: float, horizon: int) -> dict:
    steps = {str(h): {m: base + h for m in METRICS} for h in range(1, horizon + 1)}
    return {**{m: base + 1.0 for m in METRICS}, "per_horizon": steps, "fit_seconds": 0.5, "predict_seconds": 0.1}


def toy_report(horizon: int = 6) -> dict:
    return {
        "dataset": "nyc-bike", "city": "New York", "protocol": "zero-shot (trained on nyc-taxi)",
        "history": 12, "horizon": horizon, "split": "7:1:2", "channels": ["inflow", "outflow"],
        "time_range": ["2019-01-01 00:00:00", "2019-12-31 23:00:00"],
        "windows": {"train": 6109, "validation": 853, "test": 1729},
        "results": {"st_llm": metrics(10.0, horizon), "stid": metrics(20.0, horizon),
                    "broken": {**metrics(0.0, horizon), "MAE": float("nan")}},
        "skipped": {"seasonal_naive_week": "no week to look back on"},
    }


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 200
        assert np.asarray(image.convert("L"), dtype=np.float64).var() > 0


def test_horizon_steps_to_show():
    assert horizon_steps_to_show(6) == [1, 2, 3, 4, 5, 6]
    assert horizon_steps_to_show(12) == list(range(1, 13))
    steps = horizon_steps_to_show(48)
    assert len(steps) == 12 and steps[0] == 1 and steps[-1] == 48 and steps == sorted(steps)


def test_format_horizon_table_rows_and_order():
    table = format_horizon_table(toy_report(horizon=24)["results"]).splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["model", *(f"MAE@{h}" for h in horizon_steps_to_show(24))]
    assert [line.split("|")[1].strip() for line in table[2:]] == ["st_llm", "stid", "broken"]
    assert "| 11.000 " in table[2]  # st_llm at step 1: 10 + 1
    assert format_horizon_table({}) == "(no results)"


def test_markdown_report_contents(tmp_path):
    report = toy_report()
    figures = tmp_path / "out" / "figs"
    figures.mkdir(parents=True)
    plots = [figures / "error_per_horizon.png", figures / "forecasts.png"]
    path = write_markdown_report(report, tmp_path / "out" / "report.md", plots=plots, title="Zero-shot on bikes")
    text = path.read_text()
    assert text.startswith("# Zero-shot on bikes\n")
    for line in ["- **Dataset**: `nyc-bike` (city: New York)", "- **Protocol**: zero-shot (trained on nyc-taxi)",
                 "- **History -> horizon**: 12 -> 6 steps", "7:1:2", "- **Windows**: train 6109, validation 853, "
                 "test 1729", "- **Channels**: inflow, outflow", "2019-01-01 00:00:00 to 2019-12-31 23:00:00"]:
        assert line in text
    assert format_results_table(report["results"]) in text
    assert format_horizon_table(report["results"]) in text
    assert "| MAE@1 " in text and "| MAE@6 " in text
    for model in ["st_llm", "stid", "broken"]:
        assert f"| {model} " in text
    assert "- `seasonal_naive_week`: no week to look back on" in text
    assert "![error per horizon](figs/error_per_horizon.png)" in text
    assert "![forecasts](figs/forecasts.png)" in text


def test_markdown_report_from_json_with_nulls(tmp_path):
    # NaN metrics become null in JSON; the report of a reloaded file must still render (missing last).
    loaded = json.loads(write_results_json(toy_report(), tmp_path / "r.json").read_text())
    assert loaded["results"]["broken"]["MAE"] is None
    del loaded["protocol"], loaded["skipped"]
    text = write_markdown_report(loaded, tmp_path / "r.md").read_text()
    assert text.startswith("# Evaluation on nyc-bike")
    assert "Protocol" not in text and "## Skipped" not in text and "## Figures" not in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert rows[1:4] == ["st_llm", "stid", "broken"]


@pytest.fixture(scope="module")
def small_run() -> dict:
    data = generate_synthetic("small")
    windows = build_windows(data, history=12, horizon=6)
    results, predictions = run_baselines(windows, MODELS, progress=False, return_predictions=True)
    return {"data": data, "windows": windows, "results": results, "predictions": predictions}


def test_run_baselines_return_predictions(small_run):
    windows, results, predictions = small_run["windows"], small_run["results"], small_run["predictions"]
    target = windows.batch("test")
    assert sorted(predictions) == sorted(MODELS)
    for name, pred in predictions.items():
        assert pred.shape == target["y"].shape
        assert results[name]["MAE"] == pytest.approx(horizon_metrics(pred, target["y"], target["y_mask"])["MAE"])
    default = run_baselines(windows, ["historical_average"], progress=False)
    assert isinstance(default, dict) and default["historical_average"]["MAE"] == results["historical_average"]["MAE"]


def test_make_report_moves_skipped(small_run):
    report = make_report(small_run["windows"], {**small_run["results"], "x": {"skipped": "why"}})
    assert set(report["results"]) == set(MODELS) and report["skipped"] == {"x": "why"}
    assert (report["history"], report["horizon"], report["split"]) == (12, 6, "7:1:2")


def test_write_evaluation_outputs_on_real_baseline_run(small_run, tmp_path):
    data, windows = small_run["data"], small_run["windows"]
    report = {**make_report(windows, small_run["results"]), "protocol": "in-domain"}
    test = windows.batch("test")
    paths = write_evaluation_outputs(report, tmp_path / "eval", test["y"], small_run["predictions"],
                                     test["y_mask"], node_names=data.node_names, times=window_times(windows),
                                     units=data.units)
    assert set(paths) == {"results", "report", "error_per_horizon", "forecasts_inflow", "forecasts_outflow"}
    assert [p.name for p in paths.values()] == ["results.json", "error_per_horizon.png", "forecasts_inflow.png",
                                                 "forecasts_outflow.png", "report.md"]
    assert all(p.parent == tmp_path / "eval" for p in paths.values())
    saved = json.loads(paths["results"].read_text())
    assert set(saved["results"]) == set(MODELS) and saved["protocol"] == "in-domain"
    assert set(saved["results"]["last_value"]["per_horizon"]) == {str(h) for h in range(1, 7)}
    assert_png(paths["error_per_horizon"])
    assert_png(paths["forecasts_inflow"])
    assert_png(paths["forecasts_outflow"])
    text = paths["report"].read_text()
    assert "![error per horizon](error_per_horizon.png)" in text
    assert "![forecasts inflow](forecasts_inflow.png)" in text
    assert "![forecasts outflow](forecasts_outflow.png)" in text
    assert "- **Protocol**: in-domain" in text and "12 -> 6 steps" in text
    assert all(f"| {model} " in text for model in MODELS)
    # a re-run replaces the earlier evaluation's files (its per-channel figures included)
    assert write_evaluation_outputs(report, tmp_path / "eval")["results"].is_file()
    assert not (tmp_path / "eval" / "forecasts_inflow.png").exists()


@pytest.fixture
def drawn(monkeypatch):
    """Spy on the forecast figures write_evaluation_outputs draws: one entry per figure with its channel, the
    y-axis labels and the labels of the lines actually drawn (the real figure, built by forecast_figure)."""
    from st_instruct.evaluation import plots, report

    calls = []
    real = plots.plot_forecasts

    def spy(path, target, predictions, **kwargs):
        options = {k: v for k, v in kwargs.items() if k != "colors"}
        fig = plots.forecast_figure(target, predictions, **options)
        calls.append({"file": Path(path).name, "channel": kwargs["channel"],
                      "ylabels": {ax.get_ylabel() for ax in fig.axes} - {""},
                      "lines": {line.get_label() for ax in fig.axes for line in ax.get_lines()} - {"truth"}})
        return real(path, target, predictions, **kwargs)

    monkeypatch.setattr(report, "plot_forecasts", spy)  # the name write_evaluation_outputs calls
    return calls


def forecaster_run(horizon: int = 3, channels: tuple[str, ...] = ("inflow", "outflow")) -> tuple[dict, dict]:
    """A report and forecasts ``[B=30, P, N=4, C]`` of the forecaster, its no-LLM control and three baselines
    (``ridge`` the best of them, ``last_value`` skipped)."""
    rng = np.random.default_rng(0)
    target = rng.uniform(10, 50, (30, horizon, 4, len(channels)))
    maes = {"st_forecaster": 2.0, "st_forecaster_no_llm": 3.0, "ridge": 2.5, "historical_average": 4.0,
            "seasonal_naive_day": 5.0}
    predictions = {name: target + rng.normal(0, mae, target.shape) for name, mae in maes.items()}
    report = {"dataset": "toy", "channels": list(channels), "skipped": {"last_value": "no history"},
              "results": {name: {**metrics(mae, horizon), "MAE": mae} for name, mae in maes.items()}}
    return report, {"target": target, "predictions": predictions, "mask": np.ones(target.shape, dtype=bool)}


def test_every_channel_gets_a_figure_with_its_unit(drawn, tmp_path):
    report, arrays = forecaster_run(channels=("PM2.5", "NO2", "wind speed"))
    paths = write_evaluation_outputs(report, tmp_path / "eval", **arrays, units=["µg/m³", "µg/m³", ""])
    assert [call["file"] for call in drawn] == ["forecasts_pm2-5.png", "forecasts_no2.png",
                                                "forecasts_wind-speed.png"]
    assert [call["channel"] for call in drawn] == [0, 1, 2]
    assert [call["ylabels"] for call in drawn] == [{"PM2.5 (µg/m³)"}, {"NO2 (µg/m³)"}, {"wind speed"}]
    for key in ("forecasts_pm2-5", "forecasts_no2", "forecasts_wind-speed"):
        assert_png(paths[key])
    with pytest.raises(ValueError, match="units has 2 entries, expected one per channel"):
        write_evaluation_outputs(report, tmp_path / "other", **arrays, units=["a", "b"])
    with pytest.raises(ValueError, match="one unit per channel"):
        write_evaluation_outputs(report, tmp_path / "other", **arrays, units="trips/h")


def test_forecast_figures_draw_the_forecaster_its_controls_and_the_best_baseline_by_default(drawn, tmp_path):
    report, arrays = forecaster_run()
    write_evaluation_outputs(report, tmp_path / "eval", **arrays)
    assert len(drawn) == 2 and all(call["lines"] == {"st_forecaster", "st_forecaster_no_llm", "ridge"}
                                   for call in drawn)
    assert default_plot_models(report["results"], list(arrays["predictions"])) == [
        "st_forecaster", "ridge", "st_forecaster_no_llm"]  # best MAE first


def test_plot_models_selects_the_lines(drawn, tmp_path):
    report, arrays = forecaster_run()
    write_evaluation_outputs(report, tmp_path / "a", **arrays, plot_models=["seasonal_naive_day", "st_forecaster"])
    assert all(call["lines"] == {"seasonal_naive_day", "st_forecaster"} for call in drawn)
    drawn.clear()
    # a skipped baseline has no forecasts to draw: left out (the report lists it as skipped with the reason)
    write_evaluation_outputs(report, tmp_path / "b", **arrays, plot_models=["last_value", "ridge"])
    assert all(call["lines"] == {"ridge"} for call in drawn)
    with pytest.raises(ValueError, match="--plot-models stid: no forecasts of that model in this evaluation; known: "
                                         "st_forecaster, ridge, st_forecaster_no_llm, historical_average, "
                                         "seasonal_naive_day"):
        write_evaluation_outputs(report, tmp_path / "c", **arrays, plot_models=["stid"])
    assert not (tmp_path / "c").exists()


def test_forecast_figure_names():
    assert forecast_figure_names(["inflow", "outflow"]) == ["forecasts_inflow.png", "forecasts_outflow.png"]
    assert forecast_figure_names(["Speed", "speed", "°"]) == ["forecasts_speed-0.png", "forecasts_speed-1.png",
                                                               "forecasts_2.png"]


def test_write_evaluation_outputs_without_arrays(tmp_path):
    paths = write_evaluation_outputs(toy_report(), tmp_path)
    assert set(paths) == {"results", "report", "error_per_horizon"}
    assert "forecasts" not in paths["report"].read_text()
    with pytest.raises(ValueError, match="both target and predictions"):
        write_evaluation_outputs(toy_report(), tmp_path, target=np.zeros((1, 6, 1, 1)))


def test_results_json_is_strict_and_the_report_says_why_a_metric_is_undefined(tmp_path):
    y = np.zeros((2, 3, 4, 1))  # an all-zero series: WAPE (and MAPE) undefined
    metrics = horizon_metrics(y + 1, y, np.ones_like(y, dtype=bool))
    report = {"dataset": "zeros", "results": {"last_value": {**metrics, "fit_seconds": 0.0, "predict_seconds": 0.0,
                                                             "extra": np.float32(np.inf)}}}
    text = write_results_json(report, tmp_path / "r.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    loaded = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    result = loaded["results"]["last_value"]
    assert result["WAPE"] is None and result["extra"] is None and result["MAE"] == pytest.approx(1.0)
    assert result["undefined"]["WAPE"] == "the sum of |truth| over the observed entries is 0"
    markdown = write_markdown_report(loaded, tmp_path / "report.md").read_text()
    assert "WAPE undefined: the sum of |truth| over the observed entries is 0" in markdown
