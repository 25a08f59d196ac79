"""The one dataset specification (issue 9): get_dataset's spec keywords, canonical frequencies, nodes files, the
calendar baselines on a 15-minute file, and how evaluate inherits a trained recipe's specification."""

import numpy as np
import pandas as pd
import pytest

from st_instruct.configs import DATASET_SPEC_KEYS, DataConfig
from st_instruct.data.loaders import dataset_spec, get_dataset
from st_instruct.data.stdata import STDataError, normalize_freq
from st_instruct.evaluation.baselines import HistoricalAverage, SeasonalNaiveDay
from st_instruct.protocols.baselines import prepare_windows
from st_instruct.protocols.evaluate import evaluation_config


@pytest.mark.parametrize("given,canonical", [("h", "1h"), ("1h", "1h"), ("H", "1h"), ("15min", "15min"),
                                             ("15T", "15min"), ("D", "1D"), ("7D", "7D"), ("30s", "30s")])
def test_frequencies_are_normalised_once(given, canonical):
    assert normalize_freq(given) == canonical
    assert pd.Timedelta(canonical) == pd.Timedelta(pd.tseries.frequencies.to_offset(canonical))


def test_every_spec_key_is_a_data_config_field_and_a_get_dataset_keyword():
    import inspect

    fields = set(DataConfig.__dataclass_fields__)
    assert {f"dataset_{key}" for key in DATASET_SPEC_KEYS} <= fields
    assert set(DATASET_SPEC_KEYS) <= set(inspect.signature(get_dataset).parameters)
    config = DataConfig(dataset_names=["x.npz"], dataset_freq="15min", dataset_no_calendar=False)
    assert dataset_spec(config) == {"freq": "15min"}


@pytest.fixture
def speeds(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.uniform(10, 60, (96 * 7 * 3, 2)).astype(np.float32)  # no cycle: predictions tell the look-back
    np.savez(tmp_path / "speeds.npz", data=values)
    return tmp_path / "speeds.npz", values


def test_seasonal_naive_day_looks_back_96_steps_on_15_minute_data(speeds):
    path, values = speeds
    windows = prepare_windows(str(path), 12, 12, spec={"freq": "15min", "series_start": "2024-03-04"})
    assert windows.steps_per_day == 96
    model = SeasonalNaiveDay()
    model.fit(windows)
    pred = model.predict(windows, "test")  # [B, P, N, 1]
    target_steps = windows.starts["test"][:, None] + 12 + np.arange(12)[None, :]
    np.testing.assert_array_equal(pred[..., 0], values[target_steps - 96])
    assert not np.allclose(pred[..., 0], values[target_steps - 24])


def test_historical_average_uses_weekly_slots_of_the_given_calendar(speeds):
    path, values = speeds
    windows = prepare_windows(str(path), 12, 12, spec={"freq": "15min", "series_start": "2024-03-04"})
    model = HistoricalAverage()
    model.fit(windows)
    lo, hi = windows.borders["train"]
    step = int(windows.starts["test"][0]) + 12  # the first test target
    slot = step % (96 * 7)  # 2024-03-04 is a Monday at 00:00: the slot is the step within the week
    same_slot = [s for s in range(lo, hi) if s % (96 * 7) == slot]
    assert len(same_slot) == 2  # two train weeks
    expected = values[same_slot].mean(axis=0)
    np.testing.assert_allclose(model.at_steps(windows, np.array([step]))[0, :, 0], expected, rtol=1e-5)
    assert not np.allclose(expected, values[lo:hi].mean(axis=0), rtol=1e-3)  # not the per-node mean


def test_nodes_file_gives_names_and_planar_coordinates(speeds, tmp_path):
    path, _ = speeds
    (tmp_path / "nodes.csv").write_text("Name,x,y\nnorth gate,0.5,1\nsouth gate,2,3.5\n")
    data = get_dataset(str(path), nodes=str(tmp_path / "nodes.csv"), no_calendar=True, null_value="nan")
    assert data.node_names == ["north gate", "south gate"] and data.coord_kind == "xy"
    assert data.coords.tolist() == [[0.5, 1.0], [2.0, 3.5]] and data.no_calendar and data.null_value is None
    (tmp_path / "bad.csv").write_text("name,x,y\na,1,1\nb,oops,2\n")
    with pytest.raises(STDataError, match=r"bad.csv: x of row 2 \('b'\) is 'oops', not a number"):
        get_dataset(str(path), nodes=str(tmp_path / "bad.csv"))


def test_no_calendar_drops_the_clock_of_a_dataset_that_has_one():
    data = get_dataset("synthetic-small", no_calendar=True)
    assert not data.has_calendar and data.no_calendar and data.freq is not None
    assert data.calendar_text().startswith("none (--no-calendar)")


def test_evaluation_inherits_the_recipe_spec_in_domain_and_only_the_flags_zero_shot(speeds):
    path, _ = speeds
    trained = DataConfig(dataset_names=[str(path)], dataset_freq="15min", dataset_series_start="2024-03-04",
                         dataset_null_value="0")
    in_domain, protocol = evaluation_config(trained, str(path))
    assert protocol == "in-domain"
    assert dataset_spec(in_domain) == {"freq": "15min", "series_start": "2024-03-04", "null_value": "0"}
    overridden, _ = evaluation_config(trained, str(path), spec={"series_start": "2024-03-05"})
    assert dataset_spec(overridden)["series_start"] == "2024-03-05" and overridden.dataset_freq == "15min"
    zero_shot, protocol = evaluation_config(trained, "synthetic-small")
    assert protocol.startswith("zero-shot") and dataset_spec(zero_shot) == {}
    given, _ = evaluation_config(trained, "other.npz", spec={"freq": "1h", "no_calendar": True})
    assert dataset_spec(given) == {"freq": "1h", "no_calendar": True}
