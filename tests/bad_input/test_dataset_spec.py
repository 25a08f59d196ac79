"""Issue 9, the dataset specification: every bad flag, file or key is one error line naming the culprit and what
to do (exit 2, no traceback), and nothing is left where the verb would have written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_check import assert_clean_failure

NODES = 4
STEPS = 96 * 7 * 2  # two weeks of 15-minute steps


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A 15-minute ``[T, N]`` .npz without timestamps, a 0/1 adjacency csv, a good nodes csv, an hourly csv."""
    rng = np.random.default_rng(0)
    t = np.arange(STEPS)
    np.savez(tmp_path / "speeds.npz", data=(50 + 10 * np.sin(2 * np.pi * t / 96)[:, None]
                                            + rng.normal(0, 1, (STEPS, NODES))).astype(np.float32))
    adj = np.zeros((NODES, NODES), dtype=int)
    for i in range(NODES - 1):
        adj[i, i + 1] = adj[i + 1, i] = 1
    np.savetxt(tmp_path / "adj.csv", adj, delimiter=",", fmt="%d")
    (tmp_path / "nodes.csv").write_text("name,latitude,longitude\n" + "".join(
        f"sensor {i},34.{i},-118.{i}\n" for i in range(NODES)))
    stamps = pd.date_range("2024-01-01", periods=24 * 14, freq="h")
    rows = "".join(f"{s},{i % 9},{i % 4}\n" for i, s in enumerate(stamps))
    (tmp_path / "hourly.csv").write_text("time,a,b\n" + rows)
    return {"npz": tmp_path / "speeds.npz", "adj": tmp_path / "adj.csv", "nodes": tmp_path / "nodes.csv",
            "csv": tmp_path / "hourly.csv", "json": tmp_path / "out" / "r.json", "dir": tmp_path}


CLOCK = ("--freq", "15min", "--series-start", "2024-03-04")


def baselines(cli, files, *flags: str):
    """``st-instruct baselines`` on the 15-minute file with ``flags``, writing ``--json`` (checked absent after)."""
    return cli("baselines", "--dataset", files["npz"], "--models", "last_value", "--quiet", "--json", files["json"],
               *flags)


def failed(result, files, *culprits: str) -> str:
    line = assert_clean_failure(result, *culprits)
    assert not files["json"].exists() and not files["json"].parent.exists()
    return line


def test_unknown_calendar_is_refused_naming_freq_and_series_start(cli, files):
    line = failed(baselines(cli, files), files, "--freq", "--series-start", "--no-calendar", "'speeds'")
    assert "calendar is unknown" in line


def test_freq_without_series_start_names_only_series_start(cli, files):
    line = failed(baselines(cli, files, "--freq", "15min"), files, "--series-start", "--no-calendar")
    assert "--freq (" not in line


def test_series_start_not_a_date(cli, files):
    line = failed(baselines(cli, files, "--freq", "15min", "--series-start", "notadate"), files, "--series-start",
                  "'notadate'")
    assert "2024-03-04" in line  # an example of what to give


def test_slice_start_not_a_date(cli, files):
    failed(baselines(cli, files, *CLOCK, "--start", "notadate"), files, "--start", "'notadate'", "not a date")


def test_slice_on_data_without_calendar_names_the_slice_flags(cli, files):
    failed(baselines(cli, files, "--no-calendar", "--start", "2024-03-05"), files, "--start", "cannot slice by date")


def test_null_value_not_a_number(cli, files):
    failed(baselines(cli, files, *CLOCK, "--null-value", "abc"), files, "--null-value", "'abc'", "nan for none")


def test_unknown_frequency_string(cli, files):
    failed(baselines(cli, files, "--freq", "15minutes", "--series-start", "2024-03-04"), files, "--freq",
           "'15minutes'", "'15min'")


def test_series_start_on_a_file_with_its_own_timestamps(cli, files):
    result = cli("baselines", "--dataset", files["csv"], "--series-start", "2020-01-01", "--json", files["json"])
    failed(result, files, "hourly.csv", "its own timestamps", "--series-start", "leave it out")


def test_freq_contradicting_the_file_timestamps(cli, files):
    result = cli("baselines", "--dataset", files["csv"], "--freq", "15min", "--json", files["json"])
    failed(result, files, "hourly.csv", "every 1h", "--freq", "leave it out")


def test_series_start_with_no_calendar_contradict(cli, files):
    failed(baselines(cli, files, "--freq", "15min", "--series-start", "2024-03-04", "--no-calendar"), files,
           "--series-start", "--no-calendar", "give one of them")


def test_adjacency_of_the_wrong_shape(cli, files):
    np.savetxt(files["dir"] / "adj3.csv", np.eye(3), delimiter=",")
    failed(baselines(cli, files, *CLOCK, "--adjacency", files["dir"] / "adj3.csv"), files, "adj3.csv", "(3, 3)",
           "N=4", "[4, 4]")


def test_missing_adjacency_file(cli, files):
    failed(baselines(cli, files, *CLOCK, "--adjacency", files["dir"] / "nope.csv"), files, "nope.csv",
           "no such adjacency file")


def test_nodes_file_with_the_wrong_row_count(cli, files):
    (files["dir"] / "nodes3.csv").write_text("name\na\nb\nc\n")
    failed(baselines(cli, files, *CLOCK, "--nodes", files["dir"] / "nodes3.csv"), files, "nodes3.csv", "3 rows",
           "N=4", "one row per node")


def test_nodes_file_without_a_name_column(cli, files):
    (files["dir"] / "nodes_bad.csv").write_text("id,x,y\n" + "".join(f"{i},{i},{i}\n" for i in range(NODES)))
    failed(baselines(cli, files, *CLOCK, "--nodes", files["dir"] / "nodes_bad.csv"), files, "nodes_bad.csv",
           "no 'name' column", "latitude,longitude or x,y")


def test_nodes_file_with_half_a_coordinate_pair(cli, files):
    (files["dir"] / "nodes_lat.csv").write_text("name,latitude\n" + "".join(f"n{i},3{i}\n" for i in range(NODES)))
    failed(baselines(cli, files, *CLOCK, "--nodes", files["dir"] / "nodes_lat.csv"), files, "nodes_lat.csv",
           "'latitude' without 'longitude'")


def test_channel_names_of_the_wrong_count(cli, files):
    failed(baselines(cli, files, *CLOCK, "--channel-names", "speed", "flow"), files, "--channel-names", "2 names",
           "1 channel(s)")


def test_all_missing_series(cli, files):
    np.savez(files["npz"], data=np.full((STEPS, NODES), np.nan, dtype=np.float32))
    failed(baselines(cli, files, *CLOCK), files, "'speeds'", "is missing", "--null-value")


def test_series_of_only_the_null_value(cli, files):
    np.savez(files["npz"], data=np.zeros((STEPS, NODES), dtype=np.float32))
    failed(baselines(cli, files, *CLOCK, "--null-value", "0"), files, "the null value 0", "--null-value")


def test_zero_test_windows_names_the_split_and_sizes(cli, files):
    line = failed(baselines(cli, files, *CLOCK, "--history", "138", "--horizon", "12", "--split", "7:2:1"), files,
                  "test split", "134 steps", "history + horizon = 150")
    assert "shorter history/horizon" in line


def test_inspect_never_refuses_an_unknown_calendar_but_still_rejects_a_bad_flag(cli, files):
    result = cli("data", "inspect", files["npz"], "--adjacency", files["adj"])
    assert result.code == 0 and '"calendar": "unknown (give --freq' in result.out
    assert_clean_failure(cli("data", "inspect", files["npz"], "--freq", "often"), "--freq", "'often'")


def test_build_data_refuses_a_path_dataset_without_calendar_and_writes_nothing(cli, files, monkeypatch):
    monkeypatch.setenv("ST_INSTRUCT_CACHE", str(files["dir"] / "cache"))
    recipe = files["dir"] / "r.yaml"
    recipe.write_text(f"dataset_names: [{files['npz']}]\nmodel_name_or_path: null\nwindow_sample: 2\n")
    output = files["dir"] / "built"
    result = cli("build-data", recipe, "--output", output, "--freq", "15min")
    assert_clean_failure(result, "--series-start", "dataset_series_start", "--no-calendar")
    assert not output.exists()


def test_build_data_recipe_key_with_a_bad_value_names_the_key(cli, files, monkeypatch):
    monkeypatch.setenv("ST_INSTRUCT_CACHE", str(files["dir"] / "cache"))
    recipe = files["dir"] / "r.yaml"
    recipe.write_text(f"dataset_names: [{files['npz']}]\nmodel_name_or_path: null\ndataset_freq: 15min\n"
                      "dataset_series_start: yesterday-ish\n")
    output = files["dir"] / "built"
    assert_clean_failure(cli("build-data", recipe, "--output", output), "dataset_series_start", "'yesterday-ish'")
    assert not output.exists()
