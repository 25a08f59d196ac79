"""Evaluation figures: valid, non-blank PNGs from forecasts and per-horizon results, robust to missing values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from st_instruct.data.stdata import STData
from st_instruct.data.windows import build_windows
from st_instruct.evaluation.plots import (
    axis_label,
    forecast_figure,
    model_colors,
    pick_nodes,
    plot_error_per_horizon,
    plot_forecasts,
    window_times,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_drawn_png(path: Path, min_size: tuple[int, int] = (400, 250)) -> np.ndarray:
    """``path`` is a PNG of at least ``min_size`` (width, height) pixels that is not a blank canvas."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.var() > 0
    return pixels


@pytest.fixture(scope="module")
def arrays() -> dict:
    """Hourly windows of a small daily-cycle series: target / mask / two models ``[B=200, P=4, N=5, C=2]``, with
    node 4 fully unobserved and node 1 half unobserved."""
    rng = np.random.default_rng(0)
    T, N, C, L, P = 240, 5, 2, 6, 4
    t = np.arange(T)
    series = 50 + 30 * np.sin(2 * np.pi * t / 24)[:, None, None] + rng.normal(0, 3, (T, N, C))
    series = series * (1 + np.arange(N))[None, :, None]
    B = T - L - P + 1
    fut = np.arange(B)[:, None] + L + np.arange(P)[None, :]
    target = series[fut]  # [B, P, N, C]
    mask = np.ones(target.shape, dtype=bool)
    mask[:, :, 4] = False
    mask[fut >= T // 2, 1] = False
    target = np.where(mask, target, np.nan)
    times = (pd.Timestamp("2024-01-01") + pd.to_timedelta(fut.ravel(), unit="h")).to_numpy().reshape(B, P)
    predictions = {"good": np.nan_to_num(target, nan=0.0) + rng.normal(0, 2, target.shape),
                   "flat": np.full(target.shape, 50.0)}
    return {"target": target, "mask": mask, "times": times, "predictions": predictions}


def test_pick_nodes_most_observed_then_busiest(arrays):
    nodes = pick_nodes(arrays["target"], arrays["mask"], channel=0, count=5)
    # nodes 0, 2, 3 fully observed (busiest first: the series scale with the node index), then 1, then 4.
    assert nodes == [3, 2, 0, 1, 4]
    assert pick_nodes(arrays["target"], arrays["mask"], count=2) == [3, 2]


def test_plot_forecasts_traces(arrays, tmp_path):
    path = plot_forecasts(tmp_path / "a" / "b" / "forecasts.png", arrays["target"], arrays["predictions"],
                          arrays["mask"], times=arrays["times"], node_names=[f"zone {i}" for i in range(5)],
                          units="trips/h", title="toy")
    assert path == tmp_path / "a" / "b" / "forecasts.png"
    pixels = assert_drawn_png(path)
    assert pixels.shape[1] > pixels.shape[0]  # two panels (1 step and P steps ahead) side by side


def test_plot_forecasts_missing_truth_and_defaults(arrays, tmp_path):
    # A fully unobserved node, a half observed one, no mask (NaN marks missing), integer steps as times.
    path = plot_forecasts(tmp_path / "missing.png", arrays["target"], arrays["predictions"], nodes=[4, 1],
                          channel=1, max_windows=50)
    assert_drawn_png(path)


def test_plot_forecasts_one_window_and_single_step(arrays, tmp_path):
    assert_drawn_png(plot_forecasts(tmp_path / "window.png", arrays["target"], arrays["predictions"],
                                    arrays["mask"], window=10, times=arrays["times"], max_nodes=2),
                     min_size=(400, 250))
    single = {name: pred[:, :1] for name, pred in arrays["predictions"].items()}
    assert_drawn_png(plot_forecasts(tmp_path / "p1.png", arrays["target"][:, :1], single, arrays["mask"][:, :1]),
                     min_size=(300, 250))


def line_data(fig) -> dict[str, list[np.ndarray]]:
    """``{label: [y data of each axes' line with that label]}`` of a figure."""
    found: dict[str, list[np.ndarray]] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            found.setdefault(line.get_label(), []).append(np.asarray(line.get_ydata(), dtype=np.float64))
    return found


def test_axis_label_names_the_channel_and_its_unit():
    assert axis_label("inflow", "trips/h") == "inflow (trips/h)"
    assert axis_label("inflow", "") == "inflow"


def test_forecast_figure_y_axis_carries_the_channel_and_unit(arrays):
    fig = forecast_figure(arrays["target"], arrays["predictions"], arrays["mask"], nodes=[0, 2], channel=1,
                          channel_name="outflow", units="trips/h", times=arrays["times"])
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["outflow (trips/h)", "", "outflow (trips/h)", ""]  # 2 nodes x (1 step, P steps) panels
    fig = forecast_figure(arrays["target"], arrays["predictions"], nodes=[0], channel_name="speed")
    assert fig.axes[0].get_ylabel() == "speed"  # no unit: the name alone
    assert forecast_figure(arrays["target"], arrays["predictions"], nodes=[0], channel=1).axes[0].get_ylabel() \
        == "channel 1"


def test_forecast_figure_draws_the_given_channel(arrays):
    """Each channel's figure shows that channel's values (the truth line of node 0 is the target's)."""
    for channel in (0, 1):
        fig = forecast_figure(arrays["target"], {}, arrays["mask"], nodes=[0], channel=channel,
                              times=arrays["times"], max_windows=10)
        truth = line_data(fig)["truth"][0]
        expected = np.concatenate([arrays["target"][:10, 0, 0, channel], arrays["target"][9, 1:, 0, channel]])
        np.testing.assert_allclose(truth, expected)


def test_forecast_lines_break_where_windows_are_not_contiguous(arrays):
    """Windows 0..19 and 40..59 (a gap of 20 hourly steps between them): every line holds a NaN point at the gap;
    contiguous windows draw unbroken lines."""
    kept = np.r_[0:20, 40:60]
    target, mask, times = arrays["target"][kept], arrays["mask"][kept], arrays["times"][kept]
    predictions = {name: pred[kept] for name, pred in arrays["predictions"].items()}
    lines = line_data(forecast_figure(target, predictions, mask, nodes=[0], times=times))
    assert set(lines) == {"truth", "good", "flat"}
    for label, panels in lines.items():
        for y in panels:
            assert np.isnan(y).sum() == 1, label  # one break, at the gap
            before = int(np.flatnonzero(np.isnan(y))[0])
            assert np.isfinite(y[:before]).all() and np.isfinite(y[before + 1:]).all(), label
    contiguous = line_data(forecast_figure(arrays["target"][:40], {m: p[:40] for m, p in predictions.items()},
                                           arrays["mask"][:40], nodes=[0], times=arrays["times"][:40]))
    assert all(np.isfinite(y).all() for panels in contiguous.values() for y in panels)
    # integer step times (no calendar) break the same way
    steps = np.arange(len(target))[:, None] + np.arange(4)[None, :]
    steps[20:] += 20
    assert all(np.isnan(y).sum() == 1 for y in line_data(forecast_figure(target, predictions, mask, nodes=[0],
                                                                         times=steps))["good"])


def test_forecast_figure_draws_exactly_the_given_models(arrays):
    fig = forecast_figure(arrays["target"], {"flat": arrays["predictions"]["flat"]}, arrays["mask"], nodes=[0])
    assert set(line_data(fig)) == {"truth", "flat"}


def test_plot_forecasts_leaves_pyplot_alone(arrays, tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    for i in range(3):
        plot_forecasts(tmp_path / f"f{i}.png", arrays["target"], arrays["predictions"], arrays["mask"], max_nodes=1)
        plot_error_per_horizon(tmp_path / f"e{i}.png", {"m": {"MAE": 1.0, "per_horizon": {"1": {"MAE": 1.0}}}})
    assert plt.get_fignums() == before


def test_plot_forecasts_bad_input(arrays, tmp_path):
    target, mask = arrays["target"], arrays["mask"]
    with pytest.raises(ValueError, match="predictions\\['short'\\] has shape"):
        plot_forecasts(tmp_path / "x.png", target, {"short": target[:, :2]}, mask)
    with pytest.raises(ValueError, match="B, P, N, C"):
        plot_forecasts(tmp_path / "x.png", target[0], {}, None)
    with pytest.raises(ValueError, match="node 9 is out of range"):
        plot_forecasts(tmp_path / "x.png", target, arrays["predictions"], mask, nodes=[9])
    with pytest.raises(ValueError, match="channel 2 is out of range"):
        plot_forecasts(tmp_path / "x.png", target, arrays["predictions"], mask, channel=2)
    with pytest.raises(ValueError, match="times has shape"):
        plot_forecasts(tmp_path / "x.png", target, arrays["predictions"], mask, times=arrays["times"][:, :1])
    assert not (tmp_path / "x.png").exists()


def per_horizon(values: list[float | None]) -> dict:
    return {str(h + 1): {"MAE": v, "RMSE": v} for h, v in enumerate(values)}


def test_plot_error_per_horizon_skips_missing_points(tmp_path):
    results = {
        "model": {"MAE": 2.0, "per_horizon": per_horizon([1.0, 1.5, None, 2.5, float("nan"), 3.0])},
        "baseline": {"MAE": None, "per_horizon": per_horizon([2.0, 2.0, 2.1, 2.2, 2.2, 2.3])},
        "all_missing": {"MAE": float("nan"), "per_horizon": per_horizon([None] * 6)},
        "skipped": {"skipped": "no week to look back on"},
    }
    path = plot_error_per_horizon(tmp_path / "plots" / "error.png", results)
    assert path == tmp_path / "plots" / "error.png"
    assert_drawn_png(path)
    assert_drawn_png(plot_error_per_horizon(tmp_path / "rmse.png", results, metric="RMSE"))
    with pytest.raises(ValueError, match="metric 'MASE' is not in the per-horizon results"):
        plot_error_per_horizon(tmp_path / "bad.png", results, metric="MASE")


def test_plot_error_per_horizon_nothing_finite(tmp_path):
    results = {"m": {"MAE": None, "per_horizon": per_horizon([None, float("nan")])}}
    assert_drawn_png(plot_error_per_horizon(tmp_path / "empty.png", results))
    assert_drawn_png(plot_error_per_horizon(tmp_path / "none.png", {}))


def test_model_colors_distinct_and_stable():
    names = [f"m{i}" for i in range(12)]
    colors = model_colors(names)
    assert len(set(colors.values())) == 12
    assert model_colors(names[:3]) == model_colors(names[:3])


def test_window_times():
    values = np.arange(100 * 2, dtype=np.float32).reshape(100, 2, 1)
    dated = build_windows(STData(values=values, name="t", freq="1h", start=pd.Timestamp("2024-01-01")), 4, 3)
    times = window_times(dated, "test")
    starts = dated.starts["test"]
    assert times.shape == (len(starts), 3)
    assert np.issubdtype(times.dtype, np.datetime64)
    assert times[0, 0] == np.datetime64("2024-01-01") + np.timedelta64(int(starts[0]) + 4, "h")
    plain = build_windows(STData(values=values, name="t", no_calendar=True), 4, 3)
    steps = window_times(plain, "validation")
    assert steps[0].tolist() == [plain.starts["validation"][0] + 4 + h for h in range(3)]
    with pytest.raises(KeyError, match="unknown split"):
        window_times(plain, "dev")
