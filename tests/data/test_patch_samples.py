"""Graph patches in the builder (issue 26, ``graph_patch_size``): one sample per window and patch, summary tokens of
the nearest patches before the patch's nodes (``node_index`` -1, read, never forecast), every node forecast exactly
once per window, and the forecasts stitched back into their nodes by the evaluation loop."""

import numpy as np
import pytest
from tiny import build_tiny_forecaster

from st_instruct.configs import DataConfig, ModelConfig, RecipeError
from st_instruct.configs.recipes import check_recipe_consistency
from st_instruct.data.loaders import load_series
from st_instruct.data.patches import neighbour_patches, partition_nodes
from st_instruct.evaluation.predict import scatter_predictions
from st_instruct.samples import builder
from st_instruct.samples.builder import build_dataset
from st_instruct.samples.collator import STDataCollator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def patched(tmp_path, **kwargs) -> DataConfig:
    values = {"dataset_names": ["synthetic"], "granularity": "graph", "template": "forecast_graph_tokens",
              "graph_patch_size": 10, "graph_patch_context": 2, "coordinates": "geo", "window_sample": 3,
              "dataset_cache_dir": str(tmp_path / "cache")} | kwargs
    return DataConfig(**values)


def test_every_window_gives_one_sample_per_patch_and_forecasts_every_node_once(tmp_path):
    config = patched(tmp_path)
    data = load_series(config)[0]
    patches = partition_nodes(np.asarray(data.coords, float), data.adjacency, 10)
    assert len(patches) == 5  # 48 sensors in patches of at most 10
    test = build_dataset(config)["test"].with_format("numpy")
    assert len(test) == 3 * len(patches)
    for start in set(np.asarray(test["window_start"]).tolist()):
        rows = [row for row in test if int(row["window_start"]) == start]
        forecast = np.concatenate([row["node_index"][row["node_index"] >= 0] for row in rows])
        assert sorted(forecast.tolist()) == list(range(48))  # every node of the window exactly once
        for row in rows:
            summary = row["node_index"] < 0
            assert summary.sum() == 2 and summary[:2].all()  # the summaries go first
            assert not row["target_mask"][:, summary].any()  # never forecast
            assert row["sample_id"].endswith(f"/p{int(row['sample_id'][-4:]):04d}")


def test_a_summary_token_reads_the_mean_of_its_patch(tmp_path):
    config = patched(tmp_path)
    data = load_series(config)[0]
    plan = builder.plan_source(data, config)
    patches = partition_nodes(np.asarray(data.coords, float), data.adjacency, 10)
    context = neighbour_patches(patches, np.asarray(data.coords, float), 2)
    columns = builder.sample_columns(builder.patch_plan(plan, 3), "test", np.array([0]),
                                     builder.load_template(config.template), "graph")
    neighbour = patches[int(context[3][0])]
    full = builder.sample_columns(plan, "test", np.array([0]), builder.load_template("forecast_graph_tokens"),
                                  "graph")
    history, mask = full["history"][0][:, neighbour], full["history_mask"][0][:, neighbour]
    expected = (history * mask).sum(1) / np.maximum(mask.sum(1), 1)
    np.testing.assert_allclose(columns["history"][0][:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(columns["coords"][0][0], np.asarray(plan.coords)[neighbour].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(columns["node_index"][0][2:], plan.nodes[patches[3]])


def test_stitched_forecasts_cover_every_node_and_ignore_the_summaries(tmp_path, st_tok):
    samples = build_dataset(patched(tmp_path), st_tok)["test"]
    model = build_tiny_forecaster(st_tok, coord_dim=2, channels=2)
    starts = np.array(sorted(set(np.asarray(samples["window_start"]).tolist())))
    pred, covered, _ = scatter_predictions(model, STDataCollator(st_tok), samples, starts, 48, batch_size=4)
    assert covered.all() and np.isfinite(pred).all()
    # a patch's forecast of its nodes is the model's forecast of that sample, wherever the patch sits in the batch
    row = samples[7]
    alone = model.predict(STDataCollator(st_tok)([row]))[0].numpy()
    nodes = np.asarray(row["node_index"])
    window = int(np.flatnonzero(starts == row["window_start"])[0])
    np.testing.assert_allclose(pred[window][:, nodes[nodes >= 0]], alone[:, nodes >= 0], rtol=1e-4, atol=1e-4)


def test_a_patch_larger_than_the_graph_is_one_sample_of_every_node(tmp_path):
    test = build_dataset(patched(tmp_path, graph_patch_size=1000))["test"].with_format("numpy")
    assert len(test) == 3  # one patch: no other patch to summarise
    assert all(sorted(row["node_index"].tolist()) == list(range(48)) for row in test)


def test_patch_settings_that_cannot_work_are_refused_in_one_line(tmp_path):
    with pytest.raises(RecipeError, match="graph_patch_size cuts graph samples into patches of >= 1 node: it needs "
                                          "granularity: graph"):
        DataConfig(granularity="node", graph_patch_size=8)
    with pytest.raises(RecipeError, match="found 0 with granularity 'graph'"):
        DataConfig(granularity="graph", template="forecast_graph", graph_patch_size=0)
    with pytest.raises(RecipeError, match="no learned node table row stands for"):
        DataConfig(granularity="graph", template="forecast_graph", graph_patch_size=8, coordinates="learned")
    with pytest.raises(RecipeError, match="neither the graph encoder"):
        check_recipe_consistency(patched(tmp_path), ModelConfig(st_graph="static"))


def test_isolated_sensors_are_forecast_in_patches_of_their_own(tmp_path):
    from st_instruct.data.stdata import STData

    rng = np.random.default_rng(0)
    n = 14
    adjacency = np.zeros((n, n), np.float32)
    for i in range(10):  # sensors 0..10 on one road; 11, 12, 13 linked to nothing
        adjacency[i, i + 1] = adjacency[i + 1, i] = 1.0
    data = STData(values=rng.poisson(20.0, size=(400, n, 1)).astype(np.float32), name="mine", freq="1h",
                  start="2024-01-01", channels=["flow"], units=["vehicles/h"], coords=rng.normal(size=(n, 2)),
                  coord_kind="xy", adjacency=adjacency)
    config = patched(tmp_path, graph_patch_size=6, graph_patch_context=1)
    plan = builder.plan_source(data, config)
    forecast_sets = [set(plan.nodes[p].tolist()) for p in plan.patches]
    assert {11, 12, 13} in forecast_sets  # the isolated sensors share no patch with the road's
    columns = list(builder.window_samples(plan, "test", np.arange(2), builder.load_template(config.template),
                                          "graph"))
    assert len(columns) == len(plan.patches)
    for patch in columns:
        nodes = patch["node_index"][0]
        assert (nodes[:1] == -1).all() and len(nodes) == 1 + len(set(nodes[1:].tolist()))
