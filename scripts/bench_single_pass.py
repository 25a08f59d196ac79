"""Benchmark: forecasts per second of single-pass prediction vs generating the numbers as text, same backbone.

Usage::

    .venv/bin/python scripts/bench_single_pass.py [--model outputs/bench_forecaster/model] [--windows 16]

A "forecast" is one zone's ``P x C`` values (nyc-taxi 2019 test windows, 12 steps x pickup/drop-off). Three ways,
all with the trained forecaster's backbone (SmolLM2-135M first 6 layers + LoRA, from ``bench_forecaster.py``; any
forecaster folder works, the weights do not change the cost), batches of ``--batch-size`` on the CPU:

1. ``single pass, graph prompt``: what ``st-instruct evaluate`` does with the recipe's graph prompts -- one
   teacher-forced forward pass per batch forecasts every zone of each window (69 per prompt);
2. ``single pass, node prompt``: UrbanGPT-style one-zone prompts with the history written as text, one forward
   pass, the regression head reads ``<st_pre>``;
3. ``generate text, node prompt``: the same one-zone prompts, the backbone writes the forecast as text
   (``pickup: v1, ..., v12`` then ``dropoff: ...``, one decimal as the history), greedy with the KV cache. It is
   made to write exactly as many tokens as the true forecast text takes (``min_new_tokens = max_new_tokens``),
   so a model that stops early or rambles cannot change the count.

4. ``no LLM control, graph prompt`` (issue 10): the same windows through the trained no-LLM control (``--control``,
   default ``bench_forecaster.py``'s ``control-no_llm``: the same encoder and head, no backbone), the cost the LLM
   adds to a forecast; skipped with a note when that folder is absent.

The ratio the issue asks for is (1) / (3): the production path vs text generation; (2) / (3) isolates the decoding
cost on identical prompts. Writes ``outputs/bench_single_pass.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def forecast_text(target: np.ndarray, channels: list[str]) -> str:
    """``[P, C]`` values -> ``"pickup: 1.0, 2.0, ...\\ndropoff: ..."`` (one decimal, as the history in the prompt)."""
    return "\n".join(f"{name}: " + ", ".join(f"{v:.1f}" for v in target[:, c]) for c, name in enumerate(channels))


def time_single_pass(model, tokenizer, samples, batch_size: int) -> tuple[float, int]:
    """Seconds to predict every sample (forward passes only) and the number of zone forecasts made."""
    from st_instruct.samples.collator import STDataCollator

    collator = STDataCollator(tokenizer)
    seconds, forecasts = 0.0, 0
    for lo in range(0, len(samples), batch_size):
        batch = collator([samples[i] for i in range(lo, min(lo + batch_size, len(samples)))])
        tic = time.perf_counter()
        model.predict(batch)
        seconds += time.perf_counter() - tic
        forecasts += int(batch["node_mask"].sum())
    return seconds, forecasts


def time_generation(model, tokenizer, samples, channels: list[str], batch_size: int) -> tuple[float, int, float]:
    """Seconds to generate every sample's forecast as text, the count, and the mean new tokens per sample."""
    backbone = model.backbone
    backbone.eval()
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seconds, forecasts, new_tokens = 0.0, 0, []
    for lo in range(0, len(samples), batch_size):
        rows = [samples[i] for i in range(lo, min(lo + batch_size, len(samples)))]
        prompts = [tokenizer.apply_chat_template([dict(m) for m in row["messages"][:-1]], tokenize=False,
                                                 add_generation_prompt=True) for row in rows]
        answers = [forecast_text(np.asarray(row["target"])[:, 0, :] * np.asarray(row["scaler_std"])
                                 + np.asarray(row["scaler_mean"]), channels) for row in rows]
        length = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in answers)
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        tic = time.perf_counter()
        with torch.no_grad():
            out = backbone.generate(**encoded, max_new_tokens=length, min_new_tokens=length, do_sample=False,
                                    use_cache=True, pad_token_id=pad)
        seconds += time.perf_counter() - tic
        assert out.shape[1] - encoded["input_ids"].shape[1] == length
        forecasts += len(rows)
        new_tokens.append(length)
    return seconds, forecasts, float(np.mean(new_tokens))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="outputs/bench_forecaster/model", help="a trained forecaster folder")
    parser.add_argument("--windows", type=int, default=16, help="test windows for the graph single pass")
    parser.add_argument("--node-samples", type=int, default=64, help="one-zone samples for (2) and (3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--control", default="outputs/bench_forecaster/control-no_llm",
                        help="the forecaster's trained no-LLM control (row 4; skipped when absent)")
    parser.add_argument("--out", default="outputs/bench_single_pass.json")
    args = parser.parse_args()

    from st_instruct.data.loaders import get_dataset
    from st_instruct.model_dir import trained_data_config
    from st_instruct.models.saving import load_forecaster
    from st_instruct.protocols.evaluate import evaluation_config
    from st_instruct.samples.builder import build_dataset

    if not Path(args.model).is_dir():
        print(f"no forecaster in {args.model}: run scripts/bench_forecaster.py first (or pass --model)")
        return 1
    torch.manual_seed(0)
    model, tokenizer = load_forecaster(args.model)
    trained = trained_data_config(args.model)
    graph_config, _ = evaluation_config(trained, "nyc-taxi", start="2019-01-01", end="2020-01-01",
                                        max_windows=args.windows)
    graph = build_dataset(graph_config, tokenizer)["test"]
    # one-zone prompts: a window sample and a node sample whose product gives --node-samples (seeded as the builder)
    node_config = dataclasses.replace(graph_config, template="forecast_node", granularity="node", values_in_text=True,
                                      window_sample=float(max(2, args.node_samples // 8)), node_sample=8.0)
    nodes = build_dataset(node_config, tokenizer)["test"]
    nodes = nodes.select(range(min(args.node_samples, len(nodes))))
    channels = get_dataset("nyc-taxi").channels

    # warm-up (first-call allocations, thread pools) outside the timings
    time_single_pass(model, tokenizer, graph.select(range(1)), 1)
    time_generation(model, tokenizer, nodes.select(range(1)), channels, 1)

    results = {}
    seconds, count = time_single_pass(model, tokenizer, graph, args.batch_size)
    results["single pass, graph prompt"] = {"forecasts": count, "seconds": seconds}
    seconds, count = time_single_pass(model, tokenizer, nodes, args.batch_size)
    results["single pass, node prompt"] = {"forecasts": count, "seconds": seconds}
    seconds, count, tokens = time_generation(model, tokenizer, nodes, channels, args.batch_size)
    results["generate text, node prompt"] = {"forecasts": count, "seconds": seconds, "new_tokens_per_forecast": tokens}
    if Path(args.control, "st_modules.safetensors").is_file():
        control, _ = load_forecaster(args.control)
        time_single_pass(control, tokenizer, graph.select(range(1)), 1)  # warm-up
        seconds, count = time_single_pass(control, tokenizer, graph, args.batch_size)
        results["no LLM control, graph prompt"] = {"forecasts": count, "seconds": seconds}
    else:
        print(f"no LLM control row skipped: no trained control in {args.control} (scripts/bench_forecaster.py)")
    for result in results.values():
        result["forecasts_per_second"] = result["forecasts"] / result["seconds"]
    generate = results["generate text, node prompt"]["forecasts_per_second"]
    report = {"model": args.model, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "prompt_tokens": {"graph": float(np.mean([len(x) for x in graph["input_ids"]])),
                                "node": float(np.mean([len(x) for x in nodes["input_ids"]]))},
              "results": results,
              "speedup_graph_single_pass_vs_generation": results["single pass, graph prompt"]["forecasts_per_second"]
              / generate,
              "speedup_node_single_pass_vs_generation": results["single pass, node prompt"]["forecasts_per_second"]
              / generate}
    print("| method | forecasts | seconds | forecasts/s |\n|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['forecasts']} | {result['seconds']:.2f} | {result['forecasts_per_second']:.1f} |")
    print(f"speed-up vs text generation: graph single pass {report['speedup_graph_single_pass_vs_generation']:.0f}x, "
          f"node single pass {report['speedup_node_single_pass_vs_generation']:.1f}x "
          f"({results['generate text, node prompt']['new_tokens_per_forecast']:.0f} new tokens each)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
