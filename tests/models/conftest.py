"""Shared fixtures of the model tests: small built datasets (synthetic cities, real builder)."""

import pytest


@pytest.fixture(scope="session")
def built(st_tok, tmp_path_factory):
    """Tokenised train splits built by the real builder: ``node`` (synthetic-small, N'=1), ``graph12``
    (synthetic-small, N'=12) and ``graph48`` (synthetic, N'=48); ``tokens12`` / ``tokens48`` the same graphs with the
    node-as-token template ``forecast_graph_tokens``; a few windows each."""
    from st_instruct.configs import DataConfig
    from st_instruct.samples.builder import build_dataset

    cache = str(tmp_path_factory.mktemp("built"))
    tokens = "forecast_graph_tokens"
    specs = {"node": ("synthetic-small", "node", "forecast_node"), "graph12": ("synthetic-small", "graph", None),
             "graph48": ("synthetic", "graph", None), "tokens12": ("synthetic-small", "graph", tokens),
             "tokens48": ("synthetic", "graph", tokens)}
    return {key: build_dataset(DataConfig(dataset_names=[name], granularity=granularity, window_sample=2,
                                          template=template or "forecast_graph", dataset_cache_dir=cache),
                               st_tok)["train"]
            for key, (name, granularity, template) in specs.items()}


@pytest.fixture(scope="session")
def collate(st_tok):
    """``collate(rows)`` -> an STDataCollator batch."""
    from st_instruct.samples.collator import STDataCollator

    return STDataCollator(st_tok)
