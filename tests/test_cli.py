"""The command line: every verb end to end on the synthetic city or small files; bad input -> exit 2, one line."""

import json

import numpy as np
import pandas as pd
import pytest

from st_instruct.cli import main


def test_baselines_on_synthetic_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "res.json"
    code = main(["baselines", "--dataset", "synthetic-small", "--models", "historical_average", "last_value",
                 "seasonal_naive_day", "--json", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| model" in printed and "historical_average" in printed
    report = json.loads(out.read_text())
    assert {"dataset", "history", "horizon", "split", "results"} <= set(report)
    assert report["dataset"] == "synthetic-small" and report["split"] == "7:1:2"
    assert report["history"] == 12 and report["horizon"] == 12
    for name, r in report["results"].items():
        assert {"MAE", "RMSE", "MAPE", "WAPE", "per_horizon"} <= set(r), name
        assert sorted(r["per_horizon"], key=int) == [str(h) for h in range(1, 13)]
    # seasonal naive of the previous day is valid because 24 steps >= horizon 12
    assert "seasonal_naive_day" in report["results"]


def test_baselines_on_a_file_path_with_options(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = np.arange(600)
    values = 10 + 5 * np.sin(2 * np.pi * t / 24)[:, None] + rng.normal(0, 0.5, (600, 4))
    path = tmp_path / "series.npz"
    np.savez(path, data=values)
    out = tmp_path / "r.json"
    assert main(["baselines", "--dataset", str(path), "--history", "6", "--horizon", "3", "--split", "6:2:2",
                 "--models", "last_value", "ridge", "--json", str(out), "--quiet", "--freq", "1h",
                 "--series-start", "2024-01-01"]) == 0
    report = json.loads(out.read_text())
    assert report["horizon"] == 3 and report["split"] == "6:2:2"
    assert set(report["results"]) == {"last_value", "ridge"}


def test_data_inspect_and_list(capsys):
    assert main(["data", "inspect", "synthetic-small"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape [T, N, C]"] == [1344, 12, 2]
    assert "graph" in info
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("nyc-taxi", "nyc-bike", "los-loop", "nycbike1-grid", "beijing-air", "pedalme-london", "pems08"):
        assert name in listing


@pytest.mark.parametrize("argv,expected", [
    (["baselines", "--dataset", "nyc-txi"], "did you mean 'nyc-taxi'"),
    (["baselines", "--dataset", "synthetic-small", "--split", "7:3"], "split '7:3'"),
    (["baselines", "--dataset", "synthetic-small", "--history", "2000"], "shorter than history + horizon"),
    (["baselines", "--dataset", "synthetic-small", "--channels", "speed"], "unknown channel 'speed'"),
    (["baselines", "--dataset", "synthetic-small", "--models", "prophet"], "prophet"),
    (["data", "inspect", "/nonexistent/file.npz"], "/nonexistent/file.npz"),
])
def test_bad_input_is_one_clear_line(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_build_data_saves_and_shows_three_rendered_samples(tmp_path, capsys, tiny_tokenizer_dir, monkeypatch):
    from datasets import load_from_disk

    monkeypatch.setenv("ST_INSTRUCT_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# st-instruct build-data r.yaml\ndataset_names: [synthetic-small]\nwindow_sample: 5\n"
                      f"model_name_or_path: {tiny_tokenizer_dir}\n")
    out = tmp_path / "built"
    assert main(["build-data", str(recipe), "--output", str(out), "--horizon", "6"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("<|im_start|>assistant") == 3  # one rendered sample per split, through the chat template
    assert "===== train: synthetic-small/train/" in printed
    built = load_from_disk(str(out))
    assert len(built["train"]) == 5 * 12  # 5 windows x 12 nodes
    sample = built["train"].with_format("numpy")[0]
    assert sample["target"].shape == (6, 1, 2)  # the --horizon flag overrode the default 12
    assert {"input_ids", "labels", "his_positions", "pre_positions"} <= set(built["train"].column_names)


def test_build_data_recipe_typo_is_one_clear_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset_names: [synthetic-small]\ngranulrity: graph\n")
    assert main(["build-data", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'granulrity'; did you mean 'granularity'?" in err and len(err.strip().splitlines()) == 1


def test_demo_trains_the_demo_recipe_then_prints_it_beside_the_baselines(tmp_path, capsys, tiny_backbone_dir):
    """The README's main job, shortened: the demo recipe with a tiny Llama for SmolLM2 and 2 steps instead of 200
    (the full run on the real SmolLM2 takes minutes; it is what the README's first command does)."""
    code = main(["demo", "--model_name_or_path", str(tiny_backbone_dir), "--model_num_layers", "2",
                 "--max_steps", "2", "--pretrain_steps", "3", "--output_dir", str(tmp_path / "model"),
                 "--dataset_cache_dir", str(tmp_path / "built"), "--report_to", "none",
                 "--max-windows", "2", "--models", "historical_average", "last_value", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("| model"):]
    assert "st_forecaster" in table and "historical_average" in table and "last_value" in table
    assert "st_forecaster_no_llm" in table  # the same encoder and head without the LLM, same budget
    report = json.loads((tmp_path / "model" / "eval-synthetic" / "results.json").read_text())
    assert report["protocol"] == "in-domain" and report["dataset"] == "synthetic"
    assert report["windows"]["test"] == 2 and (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert {"st_forecaster", "st_forecaster_no_llm"} <= set(report["results"])
    control_recipe = (tmp_path / "model-no-llm" / "recipe.yaml").read_text()
    assert "control: no_llm" in control_recipe and "max_steps: 2" in control_recipe
    # both start from the encoder and readout the demo pretrained first (--pretrain_* flags go to that recipe)
    pretrained = tmp_path / "model-pretrain"
    assert len(json.loads((pretrained / "pretrain_log.json").read_text())["losses"]) == 3
    for folder in ("model", "model-no-llm"):
        assert f"st_encoder_init: {pretrained}" in (tmp_path / folder / "recipe.yaml").read_text()


# ------------------------------------------------------------------------------------------ dataset specification
def _speeds(tmp_path, steps: int = 96 * 7 * 3, nodes: int = 3):
    """A ``[T, N]`` .npz of 15-minute speeds with no timestamps (a daily cycle + noise) and a 0/1 adjacency csv."""
    rng = np.random.default_rng(1)
    t = np.arange(steps)
    values = 50 + 10 * np.sin(2 * np.pi * t / 96)[:, None] + rng.normal(0, 2, (steps, nodes))
    np.savez(tmp_path / "speeds.npz", data=values.astype(np.float32))
    adj = np.ones((nodes, nodes), dtype=int) - np.eye(nodes, dtype=int)
    np.savetxt(tmp_path / "adj.csv", adj, delimiter=",", fmt="%d")
    return tmp_path / "speeds.npz", tmp_path / "adj.csv", values.astype(np.float32)


def test_inspect_shows_the_calendar_of_a_15_minute_file(tmp_path, capsys):
    path, adj, _ = _speeds(tmp_path)
    assert main(["data", "inspect", str(path), "--adjacency", str(adj), "--freq", "15T", "--series-start",
                 "2024-03-04", "--nodes", str(_nodes(tmp_path, 3)), "--channel-names", "speed"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frequency"] == "15min" and info["start"] == "2024-03-04 00:00:00"
    assert info["calendar"].startswith("2024-03-04 00:00:00 to 2024-03-24 23:45:00")
    assert info["graph"]["edges (non-zero off-diagonal)"] == 6 and info["coordinates"] == "latlon"
    assert info["channels"] == ["speed"]


def _nodes(tmp_path, n):
    path = tmp_path / "nodes.csv"
    path.write_text("name,latitude,longitude\n" + "".join(f"s{i},34.0{i},-118.0{i}\n" for i in range(n)))
    return path


def test_baselines_on_a_15_minute_file_use_its_calendar(tmp_path):
    path, adj, _ = _speeds(tmp_path)
    out = tmp_path / "r.json"
    assert main(["baselines", "--dataset", str(path), "--adjacency", str(adj), "--freq", "15min", "--series-start",
                 "2024-03-04", "--models", "historical_average", "seasonal_naive_day", "seasonal_naive_week",
                 "last_value", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"historical_average", "seasonal_naive_day", "seasonal_naive_week", "last_value"}
    assert report["calendar"].startswith("2024-03-04") and report["time_range"][0] == "2024-03-04 00:00:00"
    # a daily cycle of 96 steps: the calendar baselines know it, the last value does not
    assert report["results"]["seasonal_naive_day"]["MAE"] < report["results"]["last_value"]["MAE"]


def test_baselines_with_no_calendar_skip_the_calendar_ones_with_a_reason(tmp_path, capsys):
    path, _, _ = _speeds(tmp_path)
    out = tmp_path / "r.json"
    assert main(["baselines", "--dataset", str(path), "--no-calendar", "--models", "historical_average",
                 "seasonal_naive_day", "last_value", "ridge", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"last_value", "ridge"}
    assert set(report["skipped"]) == {"historical_average", "seasonal_naive_day"}
    assert all("--no-calendar" in reason for reason in report["skipped"].values())
    assert report["calendar"].startswith("none (--no-calendar)")
    printed = capsys.readouterr().out
    assert "calendar: none (--no-calendar)" in printed and "skipped historical_average" in printed


@pytest.mark.parametrize("freq,steps", [("h", 24 * 7 * 3), ("D", 120)])
def test_baselines_on_hourly_and_daily_csv_with_a_timestamp_column(tmp_path, freq, steps):
    stamps = pd.date_range("2023-01-02", periods=steps, freq=freq)
    rng = np.random.default_rng(0)
    rows = "".join(f"{s},{v[0]:.2f},{v[1]:.2f}\n" for s, v in zip(stamps, rng.uniform(1, 9, (steps, 2)), strict=True))
    (tmp_path / "s.csv").write_text("time,a,b\n" + rows)
    out = tmp_path / "r.json"
    horizon = ["--horizon", "1", "--history", "3"] if freq == "D" else []
    assert main(["baselines", "--dataset", str(tmp_path / "s.csv"), "--models", "historical_average",
                 "seasonal_naive_day", "last_value", "--json", str(out), "--quiet", *horizon]) == 0
    report = json.loads(out.read_text())
    assert {"historical_average", "seasonal_naive_day", "last_value"} == set(report["results"])
    assert report["time_range"][0] == "2023-01-02 00:00:00"


def test_build_data_takes_the_friendly_dataset_flags(tmp_path, capsys, monkeypatch):
    from datasets import load_from_disk

    monkeypatch.setenv("ST_INSTRUCT_CACHE", str(tmp_path / "cache"))
    path, adj, _ = _speeds(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset_names: ['{path}']\nmodel_name_or_path: null\nwindow_sample: 3\n")
    out = tmp_path / "built"
    assert main(["build-data", str(recipe), "--output", str(out), "--freq", "15min", "--series-start",
                 "2024-03-04 06:00", "--adjacency", str(adj), "--channel-names", "speed"]) == 0
    printed = capsys.readouterr().out
    assert "Measured every 15 minutes: speed" in printed and "2024" in printed
    sample = load_from_disk(str(out))["train"].with_format("numpy")[0]
    first = int(sample["window_start"])  # 06:00 is step 24 of the day; 15-minute steps
    assert sample["history_tod"].tolist() == [(24 + first + i) % 96 for i in range(12)]
    assert int(sample["steps_per_day"]) == 96


def test_shipped_recipes_are_listed_and_taken_by_name(cli, tmp_path, tiny_backbone_dir):
    listed = cli("recipes")
    assert listed.code == 0 and "smoke_sft " in listed.out and "airgpt_cot " in listed.out
    built = cli("build-data", "smoke_sft", "--model_name_or_path", tiny_backbone_dir, "--dataset_cache_dir",
                tmp_path / "built", "--output", tmp_path / "data")
    assert built.code == 0, built.err
    assert (tmp_path / "data" / "dataset_dict.json").is_file()
    unknown = cli("build-data", "smoke_sfx")
    assert unknown.code == 2 and "'smoke_sfx' is neither a file nor a shipped recipe" in unknown.err
    assert "smoke_sft" in unknown.err


def test_the_training_entry_point_is_a_module_that_takes_a_recipe_name(tmp_path, tiny_backbone_dir):
    """``python -m st_instruct.train smoke_sft`` from a folder outside the repository (what ``accelerate launch -m
    st_instruct.train`` runs on every process)."""
    import subprocess
    import sys

    output = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "st_instruct.train", "smoke_sft", "--model_name_or_path",
                           str(tiny_backbone_dir), "--max_steps", "1", "--report_to", "none", "--dataset_cache_dir",
                           str(tmp_path / "built"), "--output_dir", str(output)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (output / "st_backbone.json").is_file() and (output / "recipe.yaml").is_file()
    bad = subprocess.run([sys.executable, "-m", "st_instruct.train", "nope"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "python -m st_instruct.train: error: recipe 'nope'" in bad.stderr
