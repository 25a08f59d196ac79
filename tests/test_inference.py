"""The prediction API (``st_instruct.load_forecaster(...).forecast(...)``) and ``st-instruct predict``: on the raw
values of the test split of the training dataset they reproduce, bit for bit, the forecasts ``st-instruct evaluate``
scored; arrays and DataFrames give the same; another node set is forecast zero-shot; bad inputs are one-line errors.
The model is the smoke recipe on a tiny random Llama (the forecasts are not good; their identity is what is tested)."""


import numpy as np
import pandas as pd
import pytest
from cli_check import assert_clean_failure
from tiny import train_smoke

from st_instruct import load_forecaster
from st_instruct.cli import main
from st_instruct.data.loaders import get_dataset
from st_instruct.data.windows import build_windows
from st_instruct.model_dir import MODEL_ROW, PROFILE_FILE
from st_instruct.protocols.evaluate import evaluate_forecaster


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_backbone_dir):
    """Smoke recipe (node prompts, Laplacian coordinates, scaling: train) on synthetic-small, 2 steps."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir)


@pytest.fixture(scope="module")
def evaluated(model_dir):
    """``(report, arrays, test split values [T, N, C], its timestamps)``: every test window evaluated."""
    report, arrays = evaluate_forecaster(model_dir, "synthetic-small", models=["last_value"], progress=False)
    data = get_dataset("synthetic-small")
    windows = build_windows(data, 12, 12, "7:1:2")
    lo, hi = windows.borders["test"]
    # the history of every test window, and no step more: the last window's history ends 12 steps before hi
    return report, arrays, data.values[lo:hi - 12], data.time_index()[lo:hi - 12]


def test_training_writes_the_data_profile(model_dir):
    import json

    profile = json.loads((model_dir / PROFILE_FILE).read_text())["datasets"]["synthetic-small"]
    data = get_dataset("synthetic-small")
    scaler = build_windows(data, 12, 12, "7:1:2").scaler
    assert profile["num_nodes"] == data.num_nodes and profile["channels"] == data.channels
    assert np.array_equal(np.asarray(profile["scaler_mean"], np.float32), scaler.mean)
    assert np.array_equal(np.asarray(profile["scaler_std"], np.float32), scaler.std)


def test_forecast_reproduces_evaluate_bit_for_bit(model_dir, evaluated):
    report, arrays, values, times = evaluated
    forecaster = load_forecaster(model_dir)
    # evaluate's batches of 16: another batching pads other lengths, which moves the last float32 bits
    result = forecaster.forecast(values, times, every_window=True, batch_size=16)
    scored = arrays["predictions"][MODEL_ROW]
    assert result.values.shape == scored.shape == (report["windows"]["test"], 12, 12, 2)
    assert result.profile == "synthetic-small" and result.scaling == "train"
    np.testing.assert_array_equal(result.values, scored)  # bit for bit
    np.testing.assert_array_equal(result.times, arrays["times"])
    # default: only the last window, forecasting the 12 steps after the input. Its 12 node samples are batched
    # differently than in the evaluation (other padding and matrix shapes), so equal up to float rounding only
    last = forecaster.forecast(values, times)
    np.testing.assert_allclose(last.values[0], scored[-1], rtol=1e-5, atol=1e-4)
    assert not np.array_equal(last.values[0], last.values[0] + 1e-3)
    assert last.issued[0] == times[-1] and last.times[0, 0] == times[-1] + pd.Timedelta(times.freq)


FIRST = 4  # windows: 48 node samples, the evaluation's first 3 batches of 16 exactly


def test_forecast_of_a_dataframe_equals_the_array(model_dir, evaluated):
    _, arrays, values, times = evaluated
    values, times = values[:12 + FIRST - 1], times[:12 + FIRST - 1]
    data = get_dataset("synthetic-small")
    frame = pd.DataFrame(values.reshape(len(values), -1), index=times,
                         columns=pd.MultiIndex.from_product([data.node_names or range(data.num_nodes),
                                                             data.channels]))
    result = load_forecaster(model_dir).forecast(frame, every_window=True)
    np.testing.assert_array_equal(result.values, arrays["predictions"][MODEL_ROW][:FIRST])
    table = result.to_frame()
    assert len(table) == result.values.shape[0] * 12 * 12 and list(table.columns[-2:]) == data.channels


def test_predict_verb_writes_what_evaluate_scored(model_dir, evaluated, tmp_path):
    _, arrays, values, times = evaluated
    values, times = values[:12 + FIRST - 1], times[:12 + FIRST - 1]
    data = get_dataset("synthetic-small")
    series = tmp_path / "new_values.npz"
    np.savez(series, data=values)  # an .npz series has no clock of its own: it comes with the flags
    clock = ["--series-start", str(times[0]), "--freq", "1h"]
    out = tmp_path / "forecast.npz"
    assert main(["predict", "--model", str(model_dir), "--input", str(series), *clock, "--every-window",
                 "--output", str(out), "--quiet"]) == 0
    saved = np.load(out)
    np.testing.assert_array_equal(saved["values"], arrays["predictions"][MODEL_ROW][:FIRST])
    assert list(saved["channels"]) == data.channels
    csv = tmp_path / "forecast.csv"
    assert main(["predict", "--model", str(model_dir), "--input", str(series), *clock, "--output", str(csv),
                 "--quiet"]) == 0
    table = pd.read_csv(csv)
    assert len(table) == 12 * 12 and table["step"].max() == 12


def test_another_node_set_is_forecast_zero_shot(model_dir, evaluated):
    _, _, values, times = evaluated
    result = load_forecaster(model_dir).forecast(values[:, :5], times)
    assert result.values.shape == (1, 12, 5, 2) and result.profile is None and result.scaling == "window"
    assert np.isfinite(result.values).all()


def test_bad_inputs_are_clear_errors(model_dir, evaluated, cli, tmp_path):
    _, _, values, times = evaluated
    forecaster = load_forecaster(model_dir)
    with pytest.raises(ValueError, match="reads a history of 12"):
        forecaster.forecast(values[:5], times[:5])
    with pytest.raises(ValueError, match="forecasts 2"):
        forecaster.forecast(values[:, :, :1], times)
    with pytest.raises(ValueError, match="trained with a calendar"):
        forecaster.forecast(values)
    with pytest.raises(ValueError, match=r"\[T, N, C\]"):
        forecaster.forecast(values[:, 0, 0], times)
    with pytest.raises(ValueError, match="steps of 1h"):
        forecaster.forecast(values, pd.date_range("2024-01-01", periods=len(values), freq="5min"))
    result = cli("predict", "--model", str(model_dir), "--input", str(tmp_path / "missing.npz"),
                 "--output", str(tmp_path / "f.csv"))
    assert_clean_failure(result, "missing.npz")
    with pytest.raises(FileNotFoundError, match="not a Hub repo id"):
        load_forecaster(tmp_path / "no" / "such" / "folder")
