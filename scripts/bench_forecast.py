"""Benchmark: latency and throughput of ``st_instruct.load_forecaster(DIR).forecast(...)`` on raw nyc-taxi values.

Usage::

    .venv/bin/python scripts/bench_forecast.py [--windows 1000] [--repeats 10] [--skip-node]

What is timed is the whole public call a user makes -- raw ``[L', 69, 2]`` values and timestamps in, forecasts in
trips out: completing the input from the data profile, windowing, rendering and tokenising the prompts, collating,
the forward passes and the inverse scaling. Two recipes, each trained for one optimizer step here (the weights do not
change the cost), on the 2019 nyc-taxi zones (69 zones, pickups / drop-offs, 12 -> 12 hours):

- ``stlink_sft`` (graph prompt: every zone of a window in ONE sample; SmolLM2-135M first 6 layers + LoRA,
  SE-Attention), without its pretrained encoder (``st_encoder_init`` off: speed only);
- ``urbangpt_sft`` (node prompt: one sample per zone, 69 per window; all 30 SmolLM2 layers, frozen), latency only
  unless ``--node-windows`` asks for a throughput run too (69 samples per window: ~69x the graph prompt's work).

Latency: one window (the 12 steps after the input), median and min of ``--repeats`` calls after one warm-up call.
Throughput: ``every_window=True`` over an input of ``windows + 11`` steps = ``--windows`` windows, batch 16, one
call. Writes ``outputs/bench_forecast/bench_forecast.json``. Needs ``../shared/data`` (nyc-taxi).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_one_step(recipe: str, output: Path, *extra: str) -> Path:
    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.training.run import train

    if (output / "st_backbone.json").is_file():
        return output
    flags = ["--output_dir", str(output), "--max_steps", "1", "--save_strategy", "no", "--report_to", "none",
             "--window_sample", "8", "--disable_tqdm", "true", *extra]
    return train(*parse_recipe(train_dataclasses(), [recipe, *flags]))


def bench(model_dir: Path, values, times, repeats: int, windows: int | None) -> dict:
    import torch

    from st_instruct import load_forecaster

    tic = time.perf_counter()
    forecaster = load_forecaster(model_dir)
    load_seconds = time.perf_counter() - tic
    L = forecaster.history
    last, last_times = values[-L:], times[-L:]
    forecaster.forecast(last, last_times)  # warm-up
    latencies = []
    for _ in range(repeats):
        tic = time.perf_counter()
        result = forecaster.forecast(last, last_times)
        latencies.append(time.perf_counter() - tic)
    out = {"model": str(model_dir), "load_seconds": round(load_seconds, 2), "threads": torch.get_num_threads(),
           "latency_one_window_s": {"median": round(statistics.median(latencies), 4),
                                    "min": round(min(latencies), 4), "repeats": repeats},
           "forecast_shape": list(result.values.shape)}
    if windows:
        span = values[-(windows + L - 1):], times[-(windows + L - 1):]
        tic = time.perf_counter()
        result = forecaster.forecast(*span, every_window=True, batch_size=16)
        seconds = time.perf_counter() - tic
        assert result.values.shape[0] == windows, result.values.shape
        out["throughput"] = {"windows": windows, "seconds": round(seconds, 2),
                             "windows_per_s": round(windows / seconds, 2),
                             "zone_forecasts_per_s": round(windows * result.values.shape[2] / seconds, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--node-windows", type=int, default=0, help="throughput windows of the node-prompt model")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-node", action="store_true", help="only the graph-prompt model")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_forecast"))
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from st_instruct.data.loaders import get_dataset

    out = Path(args.out)
    data = get_dataset("nyc-taxi").slice_time("2019-01-01", "2020-01-01")
    values, times = data.values, data.time_index()
    report = {"dataset": "nyc-taxi 2019", "zones": data.num_nodes, "channels": data.channels,
              "cpu_count": os.cpu_count()}
    graph = train_one_step(str(ROOT / "recipes" / "stlink_sft.yaml"), out / "stlink", "--st_encoder_init", "null",
                           "--st_encoder_freeze", "false", "--head_skip_init", "closed")
    report["stlink_sft (graph prompt, 6 layers)"] = bench(graph, values, times, args.repeats, args.windows)
    print(json.dumps(report, indent=2), flush=True)
    if not args.skip_node:
        node = train_one_step(str(ROOT / "recipes" / "urbangpt_sft.yaml"), out / "urbangpt")
        report["urbangpt_sft (node prompt, 30 layers)"] = bench(node, values, times, max(3, args.repeats // 3),
                                                                args.node_windows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_forecast.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
