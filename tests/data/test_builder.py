"""Instruction dataset builder: schema and shapes, values, sampling, determinism, cache, round trip, streaming."""

import re

import datasets
import numpy as np
import pytest
from real_data import require_real_data

from st_instruct.configs import DataConfig
from st_instruct.data import loaders
from st_instruct.data.loaders import get_dataset, load_series
from st_instruct.data.stdata import STDataError
from st_instruct.data.windows import SPLITS, build_windows
from st_instruct.samples import builder
from st_instruct.samples.builder import build_dataset, dataset_fingerprint, sample_features
from st_instruct.shipped import TemplateError

ARRAY_COLUMNS = ("node_index", "history", "history_mask", "target", "target_mask", "scaler_mean", "scaler_std",
                 "coords", "history_tod", "history_dow", "target_tod", "target_dow", "steps_per_day",
                 "window_start")


def config(tmp_path, **kwargs) -> DataConfig:
    kwargs.setdefault("dataset_names", ["synthetic-small"])
    kwargs.setdefault("window_sample", 4)
    if kwargs.get("granularity") == "graph":
        kwargs.setdefault("template", "forecast_graph")
    return DataConfig(dataset_cache_dir=str(tmp_path / "cache"), **kwargs)


def assert_same(a: datasets.Dataset, b: datasets.Dataset) -> None:
    assert len(a) == len(b) and a.column_names == b.column_names
    python_a, python_b = a.with_format(None)[:], b.with_format(None)[:]
    numpy_a, numpy_b = a.with_format("numpy")[:], b.with_format("numpy")[:]
    for column in a.column_names:
        assert python_a[column] == python_b[column], column
        if column in ARRAY_COLUMNS:  # same values and dtypes
            x, y = numpy_a[column], numpy_b[column]
            assert x.dtype == y.dtype and np.array_equal(x, y), column


def check_shapes(dataset: datasets.Dataset, L: int, P: int, nodes: int, C: int, K: int) -> None:
    row = dataset.with_format("numpy")[0]
    shapes = {"node_index": (nodes,), "history": (L, nodes, C), "history_mask": (L, nodes, C),
              "target": (P, nodes, C), "target_mask": (P, nodes, C), "scaler_mean": (C,), "scaler_std": (C,),
              "coords": (nodes, K), "history_tod": (L,), "history_dow": (L,), "target_tod": (P,), "target_dow": (P,),
              "steps_per_day": (), "window_start": ()}
    assert {k: row[k].shape for k in shapes} == shapes
    assert row["history"].dtype == np.float32 and row["history_mask"].dtype == bool
    assert isinstance(row["messages"][0]["content"], str)
    batch = dataset.with_format("numpy")[:2]["history"]
    assert batch.shape == (2, L, nodes, C)


# ---------------------------------------------------------------------------------------------------- schema
@pytest.mark.parametrize("granularity", ["node", "graph"])
def test_columns_shapes_and_values(tmp_path, granularity):
    cfg = config(tmp_path, granularity=granularity, history=6, horizon=3, window_sample=3)
    built = build_dataset(cfg)
    assert list(built) == list(SPLITS)
    data = get_dataset("synthetic-small")
    windows = build_windows(data, 6, 3)
    per_window = 12 if granularity == "node" else 1
    for split in SPLITS:
        ds = built[split]
        assert ds.features == sample_features() and len(ds) == 3 * per_window
        check_shapes(ds, 6, 3, 1 if granularity == "node" else 12, 2, cfg.coordinate_dim)
        for row in ds.with_format("numpy"):
            s, nodes = int(row["window_start"]), row["node_index"]
            assert str(row["split"]) == split and str(row["dataset"]) == "synthetic-small"
            assert str(row["template"]) == ("forecast_node@1" if granularity == "node" else "forecast_graph@1")
            tail = f"n{nodes[0]:03d}" if granularity == "node" else "all"
            assert str(row["sample_id"]) == f"synthetic-small/{split}/w{s:06d}/{tail}"
            assert str(row["time_start"]) == data.time_index()[s].isoformat()
            np.testing.assert_array_equal(row["history"], windows.scaled[s:s + 6, nodes])
            np.testing.assert_array_equal(row["target_mask"], windows.observed[s + 6:s + 9, nodes])
            # the inverse transform with the sample's scaler gives back the original target values
            original = row["target"] * row["scaler_std"] + row["scaler_mean"]
            mask = row["target_mask"]
            np.testing.assert_allclose(original[mask], data.values[s + 6:s + 9, nodes][mask], rtol=1e-5, atol=1e-3)
            assert (row["target"][~mask] == 0).all()
            np.testing.assert_array_equal(row["history_tod"], (np.arange(s, s + 6)) % 24)
            np.testing.assert_array_equal(row["target_dow"], data.time_index()[s + 6:s + 9].dayofweek)
            assert row["steps_per_day"] == 24
            if granularity == "graph":
                assert (np.diff(nodes) > 0).all()
    ids = [i for split in SPLITS for i in built[split]["sample_id"]]
    assert len(set(ids)) == len(ids)


def test_values_in_text_writes_rounded_values_and_na(tmp_path):
    cfg = config(tmp_path, values_in_text=True, values_decimals=0, window_sample=None, node_sample=3)
    train = build_dataset(cfg)["train"]
    data = get_dataset("synthetic-small")
    observed = data.mask()
    found_na = 0
    for row in train.select(range(0, len(train), 97)):
        s, n = row["window_start"], row["node_index"][0]
        user = row["messages"][1]["content"]
        for c, channel in enumerate(data.channels):
            expected = ", ".join(f"{v:.0f}" if o else "NA"
                                 for v, o in zip(data.values[s:s + 12, n, c], observed[s:s + 12, n, c], strict=True))
            assert f"\n{channel}: {expected}\n" in user
            found_na += "NA" in expected
    assert found_na > 0  # the synthetic city's outages are written as NA


@pytest.mark.parametrize(("coordinates", "name", "K"), [("none", "synthetic-small", 0), ("geo", "synthetic-small", 2),
                                                        ("grid", "synthetic-grid", 2)])
def test_coordinates(tmp_path, coordinates, name, K):
    cfg = config(tmp_path, dataset_names=[name], coordinates=coordinates, granularity="graph", window_sample=1)
    row = build_dataset(cfg)["test"].with_format("numpy")[0]
    data = get_dataset(name)
    assert row["coords"].shape == (data.num_nodes, K)
    if coordinates != "none":
        np.testing.assert_allclose(row["coords"], data.coords, atol=1e-5)


def test_template_granularity_mismatch_and_slot_check(tmp_path):
    with pytest.raises(TemplateError, match=r"forecast_node\.v1\.jinja.*undefined variable 'node'"):
        build_dataset(config(tmp_path, granularity="graph", template="forecast_node"))
    one_slot = tmp_path / "one.v1.jinja"
    one_slot.write_text("{% macro user() %}{{ st_his }}{% endmacro %}\n"
                        "{% macro assistant() %}{{ st_pre }}{% endmacro %}")
    with pytest.raises(TemplateError, match=r"one\.v1\.jinja wrote 1 <st_his> in the prompt and 1 <st_pre>.* 12 node"):
        build_dataset(config(tmp_path, granularity="graph", template=str(one_slot)))


def test_coordinates_errors():
    grid = get_dataset("synthetic-grid")
    with pytest.raises(STDataError, match="coordinates='geo' needs lat/lon or xy"):
        builder.node_coordinates(grid, "geo", 8)
    with pytest.raises(STDataError, match="coordinates='grid' needs a grid dataset"):
        builder.node_coordinates(get_dataset("synthetic-small"), "grid", 8)
    nograph = get_dataset("synthetic-small")
    nograph.adjacency = None
    assert not builder.node_coordinates(nograph, "laplacian", 4).any()


# ---------------------------------------------------------------------------------------------------- sampling
def test_node_and_window_sampling_counts_and_determinism(tmp_path):
    built = build_dataset(config(tmp_path, node_sample=5, window_sample=7))
    for split in SPLITS:
        assert len(built[split]) == 35
        assert len(set(built[split]["window_start"])) == 7
    nodes = {n[0] for n in built["train"]["node_index"]}
    assert len(nodes) == 5 and nodes == {n[0] for n in built["test"]["node_index"]}  # one node subset per dataset
    fraction = build_dataset(config(tmp_path, node_sample=0.5, window_sample=0.01, granularity="graph"))
    windows = build_windows(get_dataset("synthetic-small"), 12, 12)
    for split in SPLITS:
        assert len(fraction[split]) == max(1, round(0.01 * windows.num_windows(split)))
        assert np.asarray(fraction[split][0]["node_index"]).shape == (6,)
    # same config in a fresh cache: identical; another seed: other nodes
    again = build_dataset(config(tmp_path / "other", node_sample=5, window_sample=7))
    assert_same(built["train"], again["train"])
    reseeded = build_dataset(config(tmp_path, node_sample=5, window_sample=7, sample_seed=1))
    assert {n[0] for n in reseeded["train"]["node_index"]} != nodes


def test_multiple_datasets_are_concatenated_with_their_own_scalers(tmp_path):
    built = build_dataset(config(tmp_path, dataset_names=["synthetic-small", "synthetic-motorway"], window_sample=2,
                                 node_sample=2, dataset_channels=None))
    test = built["test"].with_format("numpy")
    assert [str(d) for d in test["dataset"]] == ["synthetic-small"] * 4 + ["synthetic-motorway"] * 4
    assert test[0]["history"].shape == (12, 1, 2) and test[4]["history"].shape == (12, 1, 1)
    assert test[0]["steps_per_day"] == 24 and test[4]["steps_per_day"] == 288
    assert test[4]["messages"][1]["content"].startswith("Dataset: synthetic-motorway, Synthetic Ring Motorway E.")
    with pytest.raises(ValueError, match="twice"):
        build_dataset(config(tmp_path, dataset_names=["synthetic-small", "synthetic-small"]))


# ---------------------------------------------------------------------------------------------------- cache
def test_round_trip_save_load_identical(tmp_path):
    cfg = config(tmp_path, granularity="graph", values_in_text=True, window_sample=3)
    plans = [builder.plan_source(d, cfg) for d in load_series(cfg)]
    template = builder.load_template(cfg.template)
    in_memory = datasets.DatasetDict({s: datasets.Dataset(builder.build_split_table(plans, s, template, "graph"))
                                      for s in SPLITS})
    in_memory.save_to_disk(str(tmp_path / "saved"))
    loaded = datasets.load_from_disk(str(tmp_path / "saved"))
    built = build_dataset(cfg)
    for split in SPLITS:
        assert_same(in_memory[split], loaded[split])
        assert_same(in_memory[split], built[split])


def test_fingerprint_cache_hit_and_invalidation(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    first = build_dataset(cfg)
    fingerprint = dataset_fingerprint(cfg)
    assert re.fullmatch(r"[0-9a-f]{32}", fingerprint)
    assert (tmp_path / "cache" / fingerprint / "dataset_dict.json").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached dataset was rebuilt")

    monkeypatch.setattr(builder, "plan_source", no_rebuild)
    second = build_dataset(cfg)
    for split in SPLITS:
        assert_same(first[split], second[split])
    # the template spec does not matter, its text does; output-irrelevant fields do not change it
    assert dataset_fingerprint(config(tmp_path, template="forecast_node@1")) == fingerprint
    assert dataset_fingerprint(config(tmp_path / "elsewhere")) == fingerprint
    changed = {dataset_fingerprint(config(tmp_path, **kw)) for kw in (
        {"horizon": 6}, {"values_in_text": True}, {"window_sample": 5}, {"sample_seed": 3},
        {"dataset_names": ["synthetic-grid"]}, {"coordinates": "none"})}
    assert fingerprint not in changed and len(changed) == 6
    edited = tmp_path / "mine.v1.jinja"
    edited.write_text(builder.load_template("forecast_node").source)
    assert dataset_fingerprint(config(tmp_path, template=str(edited))) == fingerprint
    edited.write_text(edited.read_text().replace("Forecast for", "Prediction for"))
    assert dataset_fingerprint(config(tmp_path, template=str(edited))) != fingerprint


def test_fingerprint_follows_data_content(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    fingerprint = dataset_fingerprint(cfg)
    real = loaders.get_dataset

    def perturbed(name, **kwargs):
        data = real(name, **kwargs)
        data.values[5, 3, 1] += 1
        return data

    monkeypatch.setattr(loaders, "get_dataset", perturbed)  # what load_series reads the data with
    assert dataset_fingerprint(cfg) != fingerprint


def test_window_scaling_of_graph_samples_is_per_channel_over_the_window_history(tmp_path):
    """``scaling: window`` (strict zero-shot): a graph sample's scaler is the mean / std per channel of its own
    history window over its nodes; its history and target are scaled by them; the fingerprint differs."""
    cfg = config(tmp_path, granularity="graph", scaling="window", window_sample=2)
    assert dataset_fingerprint(cfg) != dataset_fingerprint(config(tmp_path, granularity="graph", window_sample=2))
    data = get_dataset("synthetic-small")
    for row in build_dataset(cfg)["test"].with_format("numpy"):
        start = int(row["window_start"])
        history = np.ma.masked_array(data.values[start:start + 12], ~row["history_mask"])
        np.testing.assert_allclose(row["scaler_mean"], history.mean((0, 1)), rtol=1e-5)
        np.testing.assert_allclose(row["scaler_std"], history.std((0, 1)), rtol=1e-4)
        target = data.values[start + 12:start + 24]
        seen = row["target_mask"]
        restored = row["target"] * row["scaler_std"] + row["scaler_mean"]
        np.testing.assert_allclose(restored[seen], target[seen], rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("granularity", ["node", "graph"])
def test_streaming_equals_arrow_build(tmp_path, granularity):
    cfg = config(tmp_path, granularity=granularity, window_sample=3, values_in_text=True)
    arrow = build_dataset(cfg)
    streamed = build_dataset(config(tmp_path, granularity=granularity, window_sample=3, values_in_text=True,
                                    streaming=True))
    assert isinstance(streamed, datasets.IterableDatasetDict)
    for split in ("train", "test"):
        rows = list(streamed[split].with_format("numpy").take(5))
        expected = arrow[split].with_format("numpy")
        assert len(rows) == min(5, len(expected))
        for i, row in enumerate(rows):
            for column, value in row.items():
                if column == "messages":
                    assert list(value) == list(expected[i][column])
                else:
                    assert np.array_equal(np.asarray(value), np.asarray(expected[i][column])), column


# ---------------------------------------------------------------------------------------------------- datasets
@pytest.mark.integration
@pytest.mark.parametrize(("name", "C", "steps_per_day"), [
    ("nyc-taxi", 2, 24), ("nyc-bike", 2, 24), ("los-loop", 1, 288), ("beijing-air", 12, 24),
    ("nycbike1-grid", 2, 24)])
def test_named_real_datasets_build(tmp_path, monkeypatch, name, C, steps_per_day):
    require_real_data(name)
    loaded = []  # the builder's own STData: loading beijing-air twice would double this test's time
    monkeypatch.setattr(loaders, "get_dataset", lambda *a, **kw: loaded.append(get_dataset(*a, **kw)) or loaded[-1])
    built = build_dataset(config(tmp_path, dataset_names=[name], window_sample=2, node_sample=3))
    data = loaded[0]
    for split in SPLITS:
        assert len(built[split]) == 6
        check_shapes(built[split], 12, 12, 1, C, 8)
    row = built["test"][0]
    assert row["steps_per_day"] == steps_per_day and row["city"] == data.city
    assert data.node_names[row["node_index"][0]] in row["messages"][1]["content"]


def test_semantic_and_bare_node_templates_build(tmp_path):
    """The UrbanMind switch: the same samples (arrays) through either template, two datasets, two fingerprints."""
    built = {name: build_dataset(config(tmp_path, template=name, window_sample=2)) for name in ("semantic_node",
                                                                                                 "bare_node")}
    semantic, bare = built["semantic_node"]["test"], built["bare_node"]["test"]
    assert len(semantic) == len(bare) == 24 and semantic["sample_id"] == bare["sample_id"]
    assert (semantic[0]["template"], bare[0]["template"]) == ("semantic_node@1", "bare_node@1")
    assert "sensor: simulated sensors" in semantic[0]["messages"][1]["content"]
    assert bare[0]["messages"][1]["content"] == "History: <st_start><st_his><st_end>"
    np.testing.assert_array_equal(semantic.with_format("numpy")["history"], bare.with_format("numpy")["history"])
    assert dataset_fingerprint(config(tmp_path, template="semantic_node", window_sample=2)) != dataset_fingerprint(
        config(tmp_path, template="bare_node", window_sample=2))


def test_synthetic_graph_builds(tmp_path):
    built = build_dataset(config(tmp_path, dataset_names=["synthetic"], granularity="graph", window_sample=2))
    check_shapes(built["train"], 12, 12, 48, 2, 8)


def test_dataset_without_calendar(tmp_path):
    require_real_data("pedalme-london")
    built = build_dataset(config(tmp_path, dataset_names=["pedalme-london"], history=4, horizon=2, split="6:2:2"))
    row = built["train"][0]
    assert row["time_start"] == "" and set(row["history_tod"]) == {0}
    assert "steps 0 to 3 (time unknown), weekly" in row["messages"][1]["content"]


# ---------------------------------------------------------------------------------------------------- hub, tokens
def test_push_dataset_calls_push_to_hub(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo_id, **kw: calls.append((repo_id, kw)))
    builder.push_dataset(datasets.DatasetDict(), "me/st-data", token="t")
    assert calls == [("me/st-data", {"token": "t", "private": None})]


@pytest.mark.parametrize("granularity", ["node", "graph"])
def test_tokenizer_adds_token_columns(tmp_path, st_tokenizer, granularity):
    built = build_dataset(config(tmp_path, granularity=granularity, window_sample=2), tokenizer=st_tokenizer)
    row = built["train"][0]
    assert {"input_ids", "labels", "his_positions", "pre_positions"} <= set(row)
    nodes = len(row["node_index"])
    assert len(row["his_positions"]) == len(row["pre_positions"]) == nodes
    his, pre = st_tokenizer.convert_tokens_to_ids(["<st_his>", "<st_pre>"])
    assert {row["input_ids"][i] for i in row["his_positions"]} == {his}
    assert all(row["labels"][i] == pre for i in row["pre_positions"])  # the answer is labelled
