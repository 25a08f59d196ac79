"""The universal forecaster's data side (issue 23, ``channel_independent``): every channel of every node is its own
one-channel series, identified by a code of its channel's name, scaled by its own history window; one model trains on
datasets of different channel counts and forecasts any other, a channel's forecast not depending on the channels
beside it."""

import dataclasses

import numpy as np
import pytest
from tiny import train_smoke

from st_instruct import load_forecaster
from st_instruct.configs import DataConfig, RecipeError
from st_instruct.data.loaders import get_dataset, load_series
from st_instruct.data.windows import build_windows
from st_instruct.pretraining.run import load_sources, window_batch
from st_instruct.protocols.evaluate import evaluate_forecaster
from st_instruct.samples.builder import channel_identity, sample_coordinates

UNIVERSAL = ("--channel_independent", "true", "--scaling", "window", "--coordinates", "none")


@pytest.fixture(scope="module")
def universal(tmp_path_factory, tiny_backbone_dir):
    """A universal forecaster trained (2 steps) on a two-channel and a one-channel dataset at once."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir, "--dataset_names", "synthetic-small",
                       "synthetic-motorway", *UNIVERSAL, steps=2)


def test_the_channel_code_is_keyed_by_the_name_alone():
    codes = channel_identity(["PM2.5", "inflow", " pm2.5 ", "outflow"], 16)
    assert codes.shape == (4, 16) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes[0], codes[2])  # stripped, lower-cased: the same channel
    assert not np.allclose(codes[1], codes[3]) and abs(float(np.linalg.norm(codes[1])) - 1.0) < 0.6
    config = DataConfig(dataset_names=["synthetic-small"], channel_independent=True, scaling="window",
                        coordinates="none", channel_identity_dim=8)
    (data,) = load_series(config)
    coords = sample_coordinates(data, config)
    assert data.values.shape[1:] == (24, 1) and coords.shape == (24, 8)
    np.testing.assert_array_equal(coords[0], channel_identity(["inflow"], 8)[0])
    np.testing.assert_array_equal(coords[2], coords[0])  # every node's inflow series: the same code


def test_the_universal_recipe_keys_are_checked():
    with pytest.raises(RecipeError, match="channel_independent reads any dataset with no statistic of it: it needs "
                                          "scaling: window"):
        DataConfig(channel_independent=True)
    with pytest.raises(RecipeError, match="coordinates: learned is a table per node id"):
        DataConfig(channel_independent=True, scaling="window", coordinates="learned")
    with pytest.raises(RecipeError, match="channel_identity_dim must be an integer in 0..4096, found -1"):
        DataConfig(channel_identity_dim=-1)


def test_pretraining_mixes_channel_counts_and_window_scaling_reads_only_the_window():
    """Channel-independent sources of 2 and 1 channels pretrain one encoder; with ``scaling: window`` a batch's
    scaled history and target are the same whatever the values outside its windows are."""
    config = DataConfig(dataset_names=["synthetic-small", "synthetic-motorway"], channel_independent=True,
                        scaling="window", coordinates="none", granularity="node")
    sources = load_sources(config, ["random"])
    assert [s.windows.data.num_channels for s in sources] == [1, 1] and sources[0].coords.shape == (24, 16)
    source, index = sources[0], np.arange(4)
    batch = window_batch(source, index)
    starts = source.windows.starts["train"][index]
    inside = np.zeros(source.windows.data.num_steps, dtype=bool)
    for start in starts:
        inside[start:start + 24] = True
    values = source.windows.data.values.copy()
    values[~inside] = values[~inside] * 7.0 + 100.0
    moved = build_windows(dataclasses.replace(source.windows.data, values=values), 12, 12, "7:1:2")
    again = window_batch(dataclasses.replace(source, windows=moved), index)
    for key in ("history", "target"):
        np.testing.assert_allclose(batch[key].numpy(), again[key].numpy(), rtol=1e-5, atol=1e-5)


def test_a_channel_is_forecast_alike_alone_or_beside_others(universal):
    forecaster = load_forecaster(universal)
    data = get_dataset("synthetic-small").slice_time(None, "2024-01-20")
    both = forecaster.forecast_data(data)
    alone = forecaster.forecast_data(data.select_channels(["outflow"]))
    assert both.values.shape == (1, 12, 12, 2) and both.channels == ["inflow", "outflow"]
    # the same samples, batched with others or not: equal up to float32 summation order
    np.testing.assert_allclose(both.values[..., 1], alone.values[..., 0], rtol=1e-5, atol=1e-3)


def test_a_dataset_of_other_channels_and_nodes_is_forecast_and_its_unseen_channels_named(universal, tmp_path):
    data = get_dataset("synthetic")
    path = tmp_path / "sensors.npz"
    np.savez(path, data=data.values)
    spec = {"freq": "1h", "series_start": str(data.time_index()[0]), "channel_names": ["Speed", "inflow"]}
    report, arrays = evaluate_forecaster(universal, str(path), max_windows=2, models=["window_mean"],
                                         progress=False, spec=spec)
    assert report["protocol"].startswith("zero-shot") and report["channels_unseen"] == ["Speed"]
    assert arrays["predictions"]["st_forecaster"].shape == (2, 12, 48, 2)
    assert np.isfinite(report["results"]["st_forecaster"]["MAE"])
    seen, _ = evaluate_forecaster(universal, "synthetic", max_windows=1, models=["window_mean"], progress=False)
    assert seen["channels_unseen"] == []


@pytest.fixture(scope="module")
def unist(tmp_path_factory, tiny_backbone_dir):
    """The universal forecaster with UniST's memory prompts (recipes/unist_sft.yaml's switch), trained 2 steps."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir, "--dataset_names", "synthetic-small",
                       "synthetic-motorway", *UNIVERSAL, "--unist_prompts", "true", "--unist_spatial_slots", "16",
                       "--unist_temporal_slots", "16", "--unist_prompt_dim", "8", steps=2)


def test_unist_prompts_train_forecast_and_evaluate_a_subset_of_series(unist):
    """Training, a forecast of new data (its priors made from that data) and an evaluation of a seeded subset of
    series all run with the priors; a channel's forecast still does not depend on the channels beside it (its
    neighbours are the same channel at the neighbouring nodes)."""
    forecaster = load_forecaster(unist)
    assert forecaster.model.st_prompt is not None
    data = get_dataset("synthetic-small").slice_time(None, "2024-01-20")
    both = forecaster.forecast_data(data)
    alone = forecaster.forecast_data(data.select_channels(["outflow"]))
    np.testing.assert_allclose(both.values[..., 1], alone.values[..., 0], rtol=1e-5, atol=1e-3)
    report, arrays = evaluate_forecaster(unist, "synthetic", max_windows=3, max_nodes=5,
                                         models=["window_mean", "historical_average"], progress=False)
    scored = arrays["mask"].any(axis=1)  # [B, N, C]: the (window, series) pairs scored
    assert scored.sum(axis=(1, 2)).max() == 5 and report["windows"]["test"] == 3
    assert np.isfinite(report["results"]["st_forecaster"]["MAE"])
    assert report["results"]["historical_average"]["MAE"] != report["results"]["window_mean"]["MAE"]


def test_unists_grid_encoder_trains_on_a_grid_and_needs_grid_coordinates(tmp_path_factory, tiny_backbone_dir):
    """``st_encoder: grid_patch`` (UniST's 3-D patches) on the 8 x 8 synthetic grid, every cell of a window in one
    prompt (with a seeded subset of 40 cells: placed by their (row, col)); evaluated on its test windows."""
    grid = ("--dataset_names", "synthetic-grid", "--st_encoder", "grid_patch", "--coordinates", "grid",
            "--granularity", "graph", "--template", "forecast_graph_compact", "--node_sample", "40",
            "--st_encoder_patch_space", "3")
    model_dir = train_smoke(tmp_path_factory, tiny_backbone_dir, *grid, steps=2)
    forecaster = load_forecaster(model_dir)
    assert type(forecaster.model.st_encoder).__name__ == "GridPatchEncoder"
    assert forecaster.model.st_encoder.patch_space == 3
    report, _ = evaluate_forecaster(model_dir, "synthetic-grid", max_windows=2, models=["window_mean"],
                                    progress=False)
    assert np.isfinite(report["results"]["st_forecaster"]["MAE"])
    with pytest.raises(RecipeError, match="grid_patch places each node on its grid .* needs coordinates: grid"):
        train_smoke(tmp_path_factory, tiny_backbone_dir, *grid[:4], "--coordinates", "laplacian", steps=1)
