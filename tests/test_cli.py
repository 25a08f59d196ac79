"""The command line: every verb end to end on the synthetic city or small files; bad input -> exit 2, one line."""

import json

import numpy as np
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
                 "--models", "last_value", "ridge", "--json", str(out), "--quiet"]) == 0
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
                 "--max_steps", "2", "--output_dir", str(tmp_path / "model"), "--dataset_cache_dir",
                 str(tmp_path / "built"), "--report_to", "none",
                 "--max-windows", "2", "--models", "historical_average", "last_value", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("| model"):]
    assert "st_forecaster" in table and "historical_average" in table and "last_value" in table
    report = json.loads((tmp_path / "model" / "eval-synthetic" / "results.json").read_text())
    assert report["protocol"] == "in-domain" and report["dataset"] == "synthetic"
    assert report["windows"]["test"] == 2 and (tmp_path / "model" / "adapter_model.safetensors").is_file()
