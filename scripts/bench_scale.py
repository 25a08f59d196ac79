"""Benchmark (issue 26): scale and speed on 2 CPU cores.

Usage::

    .venv/bin/python scripts/bench_scale.py [--parts taxi graphs build-memory] [--out outputs/bench_scale] [--reuse]

Parts (each writes its section of ``OUT/bench_scale.json`` and prints a markdown table):

- ``taxi`` -- nyc-taxi 2019, ``recipes/stlink_sft.yaml`` (SmolLM2 first 6 layers + LoRA, SE-Attention, MRFFN, the
  encoder pretrained by ``recipes/stlink_pretrain.yaml``), trained twice (seeds 0 and 1) with the graph prompt the
  recipe had before issue 26 (``forecast_graph``: a name, ``<st_his>`` and ``<st_pre>`` per zone, ``loss_lm_weight
  0.01``) and twice with the node-as-token prompt it has now (``forecast_graph_tokens``: one token per zone,
  ``loss_lm_weight 0``: there is no answer text to learn), beside the random-LLM control of the latter and a no-LLM
  model (the same encoder, head and budget; no backbone, so no SE-Attention or MRFFN) of each seed; every model
  scored by one ``st-instruct evaluate`` on all 1,729 test windows. Then,
  alone on the machine, the public call ``load_forecaster(DIR).forecast(raw values, timestamps, every_window=True)``
  over the test split's inputs (raw trips in, forecasts in trips out: windowing, prompts, tokens, collating, the
  passes, inverse scaling): zone-forecasts per second, and the tokens per zone of both prompts.
- ``graphs`` -- the synthetic LargeST-shaped cities ``synthetic-sd`` (716 sensors), ``synthetic-gla`` (3,834) and
  ``synthetic-ca`` (8,600), recipe ``recipes/scale_patches.yaml`` (graph patches of the recipe's size with summary
  tokens of the neighbouring patches): ``build-data``, a 20-step training run and an evaluation of 10 test windows
  (every node forecast, patches stitched), each one CLI process with its wall time and peak RSS; the growth of each
  cost with N as a fitted exponent (least squares of log cost on log N).
- ``build-memory`` -- ``st-instruct build-data`` of the nyc-taxi 2019 node split (UrbanGPT samples, one zone per
  sample, every window: 421,521 + 58,857 + 119,301 samples): wall time and peak RSS.

Needs ``../shared/data`` (nyc-taxi) for ``taxi`` and ``build-memory``; ``graphs`` generates its cities.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecaster import evaluate_stage, provenance, run, run_training_stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TAXI = ["--dataset", "nyc-taxi", "--start", "2019-01-01", "--end", "2020-01-01"]
PROMPTS = {"graph": ["--template", "forecast_graph", "--loss_lm_weight", "0.01"],  # the recipe before issue 26
           "tokens": ["--template", "forecast_graph_tokens", "--loss_lm_weight", "0"]}
SEEDS = (0, 1)
CITIES = {"synthetic-sd": 716, "synthetic-gla": 3834, "synthetic-ca": 8600}


def taxi_training_stages(cli: list[str], out: Path) -> dict:
    """``name -> (command, folder, marker)``: the pretraining, each prompt x seed, and the no-LLM control per seed."""
    pretrained = out / "pretrain"
    stages = {"pretrain": ([*cli, "pretrain", "recipes/stlink_pretrain.yaml", "--pretrain_output_dir",
                            str(pretrained)], pretrained, "encoder.safetensors")}
    common = ["recipes/stlink_sft.yaml", "--st_encoder_init", str(pretrained), "--report_to", "none",
              "--disable_tqdm", "true"]
    for seed in SEEDS:
        for prompt, flags in PROMPTS.items():
            folder = out / f"taxi-{prompt}-s{seed}"
            stages[f"train_{prompt}_s{seed}"] = ([*cli, "train", *common, *flags, "--seed", str(seed),
                                                 "--output_dir", str(folder)], folder, "trainer_state.json")
        # the tokens model's random-LLM control (its recipe with only `control` changed: evaluate --controls)
        folder = out / f"taxi-random_llm-s{seed}"
        stages[f"train_random_llm_s{seed}"] = ([*cli, "train", *common, *PROMPTS["tokens"], "--control",
                                                "random_llm", "--seed", str(seed), "--output_dir", str(folder)],
                                               folder, "trainer_state.json")
        # no LLM: no backbone layers for SE-Attention and MRFFN to modify, so those are off (a model of its own)
        folder = out / f"taxi-no_llm-s{seed}"
        stages[f"train_no_llm_s{seed}"] = ([*cli, "train", *common, *PROMPTS["tokens"], "--control", "no_llm",
                                            "--se_attention", "false", "--mrffn", "false", "--seed", str(seed),
                                            "--output_dir", str(folder)], folder, "trainer_state.json")
    return stages


def tokens_per_zone(model_dir: Path) -> dict:
    """Tokens of one test window's sample of the model's prompt, whole and per zone; and those its prediction pass
    runs (:meth:`~st_instruct.models.forecaster.STForecaster.prediction_span`: from the first token not in the
    reused prefix to the last ST token)."""
    from dataclasses import replace

    from st_instruct.model_dir import read_recipe, trained_data_config
    from st_instruct.models.backbones import get_tokenizer
    from st_instruct.samples.builder import build_dataset
    from st_instruct.samples.st_tokens import add_st_tokens

    config = replace(trained_data_config(model_dir), window_sample=1,
                     dataset_cache_dir=str(model_dir / "bench-tokens"))
    tokenizer = get_tokenizer(read_recipe(model_dir)["model_name_or_path"])
    add_st_tokens(tokenizer)
    rows = build_dataset(config, tokenizer)["test"]
    ids, his, pre = rows[0]["input_ids"], rows[0]["his_positions"], rows[0]["pre_positions"]
    zones = len(his)
    # the prefix is reused when the text before the first node is the same in every window (tested here on two)
    other = rows[len(rows) - 1]["input_ids"] if len(rows) > 1 else ids
    start = min(his) if ids[:min(his)] == other[:min(his)] else 0
    return {"tokens_per_sample": len(ids), "zones": zones, "tokens_per_zone": round(len(ids) / zones, 2),
            "tokens_per_zone_in_prediction_pass": round((max(pre) + 1 - start) / zones, 2)}


def throughput(model_dir: Path, windows: int | None, batch_size: int) -> dict:
    """The public call over the test split's inputs: zone-forecasts per second (``windows`` None: all 1,729)."""
    import torch

    from st_instruct import load_forecaster
    from st_instruct.data.loaders import get_dataset
    from st_instruct.data.windows import build_windows

    data = get_dataset("nyc-taxi").slice_time("2019-01-01", "2020-01-01")
    forecaster = load_forecaster(model_dir)
    L = forecaster.history
    starts = build_windows(data, L, forecaster.horizon, "7:1:2").starts["test"]
    starts = starts if windows is None else starts[-windows:]
    first, last = int(starts[0]), int(starts[-1]) + L  # every window's history, nothing after the last one
    values, times = data.values[first:last], data.time_index()[first:last]
    forecaster.forecast(values[:L], times[:L])  # warm-up: first-call costs are not throughput
    tic = time.perf_counter()
    result = forecaster.forecast(values, times, every_window=True, batch_size=batch_size)
    seconds = time.perf_counter() - tic
    count, zones = result.values.shape[0], result.values.shape[2]
    assert count == len(starts), (count, len(starts))
    return {"windows": count, "zones": zones, "seconds": round(seconds, 2), "batch_size": batch_size,
            "threads": torch.get_num_threads(), "windows_per_s": round(count / seconds, 2),
            "zone_forecasts_per_s": round(count * zones / seconds, 1)}


def taxi(cli: list[str], out: Path, reuse: bool, previous: dict, bench: dict, result_path: Path,
         speed_windows_graph: int, batch_size: int) -> None:
    section = bench.setdefault("taxi", {})
    if not run_training_stages(taxi_training_stages(cli, out), reuse, previous.get("taxi", {}), out, section,
                               result_path):
        raise SystemExit("a training stage failed (see the logs)")
    section.setdefault("evaluations", {})
    for seed in SEEDS:
        for prompt in (*PROMPTS, "no_llm"):
            case = f"{prompt} seed {seed}"
            json_path = out / f"eval-taxi-{prompt}-s{seed}.json"
            if reuse and json_path.is_file() and case in previous.get("taxi", {}).get("evaluations", {}):
                section["evaluations"][case] = previous["taxi"]["evaluations"][case]
                continue
            controls = ["--controls", str(out / f"taxi-random_llm-s{seed}")] if prompt == "tokens" else []
            command = [*cli, "evaluate", "--model", str(out / f"taxi-{prompt}-s{seed}"), *TAXI, "--models",
                       "historical_average", *controls, "--json", str(json_path), "--quiet", "--output",
                       str(out / f"eval-taxi-{prompt}-s{seed}")]
            evaluate_stage(case, command, json_path, out / f"eval-taxi-{prompt}-s{seed}.log", section)
            result_path.write_text(json.dumps(bench, indent=2) + "\n")
    section["tokens"] = {prompt: tokens_per_zone(out / f"taxi-{prompt}-s0") for prompt in PROMPTS}
    section["throughput"] = {
        "tokens": throughput(out / "taxi-tokens-s0", None, batch_size),
        "graph": throughput(out / "taxi-graph-s0", speed_windows_graph, batch_size)}
    result_path.write_text(json.dumps(bench, indent=2) + "\n")


def taxi_table(section: dict) -> str:
    lines = ["| model | MAE seed 0 / seed 1 | spread | tokens per zone (sample / prediction pass) | "
             "zone-forecasts/s |", "|---|---|---|---|---|"]
    rows = {"graph": ("graph", "st_forecaster"), "tokens": ("tokens", "st_forecaster"),
            "random_llm": ("tokens", "st_forecaster_random_llm"), "no_llm": ("no_llm", "st_forecaster")}
    for name, (prompt, row) in rows.items():
        maes = [section.get("evaluations", {}).get(f"{prompt} seed {seed}", {}).get("results", {}).get(row, {})
                .get("MAE", float("nan")) for seed in SEEDS]
        tokens = section.get("tokens", {}).get(name, {})
        speed = section.get("throughput", {}).get(name, {})
        lines.append(f"| {name} | {maes[0]:.3f} / {maes[1]:.3f} | {abs(maes[0] - maes[1]):.3f} | "
                     f"{tokens.get('tokens_per_zone', '-')} / {tokens.get('tokens_per_zone_in_prediction_pass', '-')}"
                     f" | {speed.get('zone_forecasts_per_s', '-')} |")
    return "\n".join(lines)


def build_memory(cli: list[str], out: Path, bench: dict) -> None:
    recipe = out / "node_split.yaml"
    recipe.write_text("\n".join([
        "dataset_names: [nyc-taxi]", 'dataset_start: "2019-01-01"', 'dataset_end: "2020-01-01"', "history: 12",
        "horizon: 12", 'split: "7:1:2"', "template: forecast_node", "granularity: node", "values_in_text: false",
        "coordinates: laplacian", "coordinate_dim: 8", "model_name_or_path: smollm2-135m",
        f"dataset_cache_dir: {out / 'node_split_cache'}"]) + "\n")
    result = run([*cli, "build-data", str(recipe), "--output", str(out / "node_split"), "--overwrite"],
                 out / "build-memory.log")
    bench["build_memory"] = result
    print(json.dumps(result, indent=2), flush=True)


def graphs(cli: list[str], out: Path, reuse: bool, previous: dict, bench: dict, result_path: Path) -> None:
    """Each synthetic city: build-data, train, evaluate 10 test windows; one process each, wall time and peak RSS."""
    section = bench.setdefault("graphs", {})
    for city, nodes in CITIES.items():
        if reuse and "evaluate" in previous.get("graphs", {}).get(city, {}):
            section[city] = previous["graphs"][city]
            continue
        cache, model, data = out / f"cache-{city}", out / f"scale-{city}", out / f"data-{city}"
        recipe = ["recipes/scale_patches.yaml", "--dataset_names", city, "--dataset_cache_dir", str(cache)]
        stages = {
            "build_data": [*cli, "build-data", *recipe, "--output", str(data), "--overwrite"],
            "train": [*cli, "train", *recipe, "--output_dir", str(model), "--report_to", "none", "--disable_tqdm",
                      "true", "--overwrite"],
            "evaluate": [*cli, "evaluate", "--model", str(model), "--dataset", city, "--max-windows", "10",
                         "--models", "historical_average", "--json", str(out / f"eval-{city}.json"), "--quiet",
                         "--output", str(out / f"eval-{city}"), "--overwrite"]}
        figures: dict = {"nodes": nodes}
        for stage, command in stages.items():
            print(f"{city} {stage}:", " ".join(command[2:]), flush=True)
            figures[stage] = run(command, out / f"{city}-{stage}.log")
            print(json.dumps(figures[stage]), flush=True)
            if figures[stage]["exit_code"] != 0:
                raise SystemExit(f"{city} {stage} failed: {figures[stage]['error']}")
        report = json.loads((out / f"eval-{city}.json").read_text())
        result = report["results"]["st_forecaster"]
        figures["evaluate"].update(MAE=result["MAE"], windows=10,
                                   seconds_per_window=round(figures["evaluate"]["wall_seconds"] / 10, 2),
                                   historical_average_MAE=report["results"]["historical_average"]["MAE"])
        section[city] = figures
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
    sizes = [section[city]["nodes"] for city in CITIES]
    section["exponents"] = {
        f"{stage}_{what}": round(fitted_exponent(sizes, [section[city][stage][what] for city in CITIES]), 2)
        for stage in ("build_data", "train", "evaluate") for what in ("wall_seconds", "peak_rss_mib")}


def graphs_table(section: dict) -> str:
    lines = ["| city | sensors | build-data s / peak RSS MiB | 20 training steps s / RSS | evaluate 10 windows s / "
             "RSS | s per window | MAE (historical average) |", "|---|---|---|---|---|---|---|"]
    for city in CITIES:
        f = section.get(city)
        if not f:
            continue
        cells = [f"{f[stage]['wall_seconds']} / {f[stage]['peak_rss_mib']}" for stage in ("build_data", "train",
                                                                                             "evaluate")]
        lines.append(f"| {city} | {f['nodes']} | {' | '.join(cells)} | {f['evaluate']['seconds_per_window']} | "
                     f"{f['evaluate']['MAE']:.2f} ({f['evaluate']['historical_average_MAE']:.2f}) |")
    exponents = section.get("exponents", {})
    lines.append("\nfitted exponents b of cost ~ N^b: " + ", ".join(f"{k} {v}" for k, v in exponents.items()))
    return "\n".join(lines)


def fitted_exponent(sizes: list[int], costs: list[float]) -> float:
    """``b`` of ``cost = a * N ** b``, least squares on the logs."""
    return float(np.polyfit(np.log(sizes), np.log(costs), 1)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["taxi", "graphs", "build-memory"],
                        choices=["taxi", "graphs", "build-memory"])
    parser.add_argument("--out", default="outputs/bench_scale")
    parser.add_argument("--reuse", action="store_true", help="skip each stage whose result is complete")
    parser.add_argument("--speed-windows-graph", type=int, default=300,
                        help="test windows of today's graph prompt in the speed run (3 windows/s: all would take "
                             "10 minutes)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "st_instruct.cli"]
    result_path = out / "bench_scale.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    bench = {**previous, **provenance()}
    if "build-memory" in args.parts:
        build_memory(cli, out, bench)
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
    if "graphs" in args.parts:
        graphs(cli, out, args.reuse, previous, bench, result_path)
        print(graphs_table(bench["graphs"]))
    if "taxi" in args.parts:
        taxi(cli, out, args.reuse, previous, bench, result_path, args.speed_windows_graph, args.batch_size)
        print(taxi_table(bench["taxi"]))
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
