"""AirGPT end to end on the real beijing-air data (skipped without it): student samples with rationales, the wind
graphs per batch, a recipe trained with the tiny Llama, its generated-rationale evaluation and ``st-instruct
explain``. The backbone is a tiny random model (no offline LLM needed): its rationales are gibberish, which is what
the tests expect to survive, not to read."""

import numpy as np
import pytest
from real_data import require_real_data

RECIPE = "recipes/airgpt_cot.yaml"
SHORT = ["--dataset_end", "2013-07-01", "--stride", "48"]  # 4 months, a window every two days


@pytest.fixture(scope="module")
def air_config(tmp_path_factory):
    require_real_data("beijing-air")
    from st_instruct.configs import DataConfig

    return DataConfig(dataset_names=["beijing-air"], dataset_channels=["PM2.5"], history=24, horizon=24,
                      split="6:2:2", stride=48, dataset_end="2013-07-01", template="forecast_graph_compact",
                      granularity="graph", coordinates="laplacian", coordinate_dim=11,
                      rationale_teacher="analytic", rationale_fraction=0.5,
                      dataset_cache_dir=str(tmp_path_factory.mktemp("built")))


def test_student_samples_carry_the_rationale_before_the_answer_frame(air_config, st_tok):
    from st_instruct.samples.builder import build_dataset
    from st_instruct.samples.rationales.validate import parse_conclusion

    built = build_dataset(air_config, st_tok)
    train = built["train"]
    with_text = [row for row in train if row["rationale"]]
    assert len(with_text) == round(0.5 * len(train)) and {row["rationale_source"] for row in with_text} == {"analytic"}
    for row in with_text[:3]:
        answer = row["messages"][-1]["content"]
        assert answer.startswith(row["rationale"] + "\n<st_start>") and answer.endswith("<st_end>")
        assert len(row["pre_positions"]) == 12
        stated = parse_conclusion(row["rationale"])
        target = np.asarray(row["target"])[:, :, 0] * row["scaler_std"][0] + row["scaler_mean"][0]
        observed = np.asarray(row["target_mask"])[:, :, 0]
        first = np.where(observed[:, 0], target[:, 0], np.nan)
        assert stated["Aotizhongxin"] == pytest.approx(np.nanmean(first), abs=0.5)  # the label's mean, rounded
    for split in ("validation", "test"):
        assert not any(built[split]["rationale"])  # scored samples answer directly
    assert built["train"][0]["messages"] == build_dataset(air_config, st_tok)["train"][0]["messages"]  # cached


def test_wind_graphs_of_a_pm25_recipe_read_the_wind_channels(air_config):
    import dataclasses

    from st_instruct.data.air_graphs import build_window_graphs

    graphs = build_window_graphs(air_config, "static_wind", sigma0_km=10.0, alpha_km=5.0)
    sample = {"dataset": "beijing-air", "window_start": 100, "node_index": np.arange(12)}
    out = graphs.batch([sample], nodes=12)
    assert np.isfinite(out["wind_graph"]).all() and np.allclose(np.diagonal(out["wind_graph"][0]), 1.0)
    assert not np.allclose(out["wind_graph"][0], out["wind_graph"][0].T)  # directed: downwind only
    synthetic = dataclasses.replace(air_config, dataset_names=["synthetic-small"], dataset_channels=None,
                                    dataset_end=None)
    with pytest.raises(ValueError, match="'synthetic-small' has .* node coordinates, but AirGPT's graphs"):
        build_window_graphs(synthetic, "static", 10.0, 5.0)


def test_a_recipe_trains_evaluates_with_generated_rationales_and_explains(cli, tmp_path, tiny_backbone_dir):
    require_real_data("beijing-air")
    import json

    output = tmp_path / "air"
    result = cli("train", RECIPE, *SHORT, "--model_name_or_path", tiny_backbone_dir, "--model_num_layers", "2",
                 "--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none",
                 "--dataset_cache_dir", tmp_path / "built", "--output_dir", output)
    assert result.code == 0, result.err
    result = cli("evaluate", "--model", output, "--dataset", "beijing-air", "--models", "historical_average",
                 "--max-windows", "3", "--generate-rationales", "--max-new-tokens", "4", "--json",
                 tmp_path / "r.json", "--quiet")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"st_forecaster", "st_forecaster_generated", "historical_average"} <= set(report["results"])
    assert len(report["generated_rationales"]) == 3
    result = cli("explain", "--model", output, "--dataset", "beijing-air", "--window", "1", "--max-new-tokens", "4")
    assert result.code == 0, result.err
    assert "the rationale the model generated" in result.out and "Aotizhongxin" in result.out
    assert len([line for line in result.out.splitlines() if line.startswith("2013-")]) == 24  # one row per hour
    result = cli("explain", "--model", output, "--dataset", "beijing-air", "--window", "999")
    assert result.code == 2 and "--window 999 is outside the" in result.err
    # the prediction API on raw values: all channels in (the wind graph reads wind), PM2.5 out, rationale first
    from st_instruct import load_forecaster
    from st_instruct.data.loaders import get_dataset

    data = get_dataset("beijing-air")
    forecaster = load_forecaster(output)
    steps = slice(0, forecaster.history)
    found = forecaster.forecast(data.values[steps], data.time_index()[steps], channels=data.channels,
                                rationale=True, max_new_tokens=4)
    assert found.values.shape == (1, forecaster.horizon, 12, 1) and found.channels == ["PM2.5"]
    assert found.profile == "beijing-air" and found.rationales and all("text" in r for r in found.rationales)
    plain = forecaster.forecast(data.values[steps], data.time_index()[steps], channels=data.channels)
    assert plain.rationales is None and np.isfinite(plain.values).all()
