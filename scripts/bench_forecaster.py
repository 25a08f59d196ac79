"""Benchmark: the LLM forecaster of ``recipes/stlink_sft.yaml``, trained and evaluated as a user would.

Usage::

    .venv/bin/python scripts/bench_forecaster.py [--out outputs/bench_forecaster] [--reuse] [--train-only]

Stages, each one CLI command in its own process (so wall time and peak memory belong to it alone; the child's
maximum resident set size comes from ``os.wait4``):

1. ``st-instruct train recipes/stlink_sft.yaml --se_attention false --mrffn false`` -- the base forecaster (the
   recipe with ST-LINK's modules off; ``--stlink`` keeps them on): nyc-taxi 2019, 12 -> 12, SmolLM2-135M first 6
   layers, LoRA.
   Figures: wall time, optimizer steps, seconds per step (the trainer's ``train_runtime`` / steps), peak RSS.
   ``--reuse`` skips it when the output folder already holds a trained model (its old figures are kept).
2. ``st-instruct evaluate`` in-domain on the nyc-taxi 2019 test split: the forecaster beside historical average,
   last value, seasonal naive, ridge and STID fitted in the same command on the same windows.
3. Zero-shot: the same model on nyc-bike 2019 (same channels, another mode) and los-loop (one speed channel, 207
   sensors, 5-minute steps; ``--broadcast-channels`` feeds the speed to both input channels and averages the two
   outputs), each beside the baselines trained on that dataset.

Writes ``OUT/bench_forecaster.json`` and prints a markdown table. Datasets that are absent are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "recipes/stlink_sft.yaml"
BASE_FORECASTER = ["--se_attention", "false", "--mrffn", "false"]  # the recipe without ST-LINK's modules
EVALUATIONS = {
    "nyc-taxi-2019 (in-domain)": ["--dataset", "nyc-taxi", "--start", "2019-01-01", "--end", "2020-01-01"],
    "nyc-bike-2019 (zero-shot)": ["--dataset", "nyc-bike", "--start", "2019-01-01", "--end", "2020-01-01"],
    "los-loop (zero-shot)": ["--dataset", "los-loop", "--broadcast-channels"],
}
MODELS = ["st_forecaster", "historical_average", "seasonal_naive_day", "seasonal_naive_week", "ridge", "stid"]


def run(command: list[str], log: Path) -> dict:
    """Run ``command`` with stdout+stderr to ``log``; wall seconds, peak RSS (MiB) and the exit code."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result = {"command": " ".join(command), "wall_seconds": round(time.perf_counter() - started, 1),
              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "exit_code": code, "log": str(log)}
    if code != 0:
        lines = log.read_text().strip().splitlines()
        result["error"] = lines[-1] if lines else "?"
    return result


def train_figures(model_dir: Path) -> dict:
    """Steps, trainer runtime and seconds per step from the run's ``trainer_state.json``."""
    state = json.loads((model_dir / "trainer_state.json").read_text())
    summary = next(entry for entry in reversed(state["log_history"]) if "train_runtime" in entry)
    steps = state["global_step"]
    losses = [entry for entry in state["log_history"] if "loss" in entry]
    return {"steps": steps, "train_runtime_seconds": summary["train_runtime"],
            "seconds_per_step": round(summary["train_runtime"] / max(steps, 1), 3),
            "samples_per_second": summary.get("train_samples_per_second"),
            "first_logged_loss": losses[0]["loss"] if losses else None,
            "last_logged_loss": losses[-1]["loss"] if losses else None}


def markdown(evaluations: dict[str, dict]) -> str:
    lines = ["| evaluation | model | MAE | RMSE | MAPE % | horizon 12 MAE |", "|---|---|---|---|---|---|"]
    for case, report in evaluations.items():
        if "results" not in report:
            lines.append(f"| {case} | skipped: {report.get('error', '?')} | | | | |")
            continue
        for model in MODELS:
            result = report["results"].get(model)
            if result is None:
                continue
            if "skipped" in result:
                lines.append(f"| {case} | {model} | skipped: {result['skipped']} | | | |")
                continue
            mape = "n/a" if result["MAPE"] is None else f"{result['MAPE']:.1f}"  # metrics give MAPE in %
            last = result["per_horizon"][str(len(result["per_horizon"]))]["MAE"]
            lines.append(f"| {case} | {model} | {result['MAE']:.2f} | {result['RMSE']:.2f} | {mape} | {last:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_forecaster", help="folder for the model, logs and JSON")
    parser.add_argument("--reuse", action="store_true", help="skip training when OUT/model holds a trained model")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's max_steps (a quick look)")
    parser.add_argument("--only", nargs="+", default=None, choices=list(EVALUATIONS), help="evaluations to run")
    parser.add_argument("--train-only", action="store_true", help="stop after training (evaluate later with --reuse)")
    parser.add_argument("--stlink", action="store_true", help="train the recipe as it is (SE-Attention and MRFFN on)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    cli = [sys.executable, "-m", "st_instruct.cli"]
    result_path = out / "bench_forecaster.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    bench: dict = {"recipe": RECIPE, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}

    if args.reuse and (model_dir / "trainer_state.json").is_file():
        print(f"reusing the trained model in {model_dir}")
        bench["train"] = previous.get("train", {"note": "reused a model trained earlier; figures not recorded"})
    else:
        command = [*cli, "train", RECIPE, *([] if args.stlink else BASE_FORECASTER), "--output_dir", str(model_dir),
                   "--report_to", "none", "--disable_tqdm", "true"]
        if args.max_steps is not None:
            command += ["--max_steps", str(args.max_steps)]
        print("training:", " ".join(command[2:]), flush=True)
        bench["train"] = run(command, out / "train.log")
        if bench["train"]["exit_code"] != 0:
            print(f"training failed: {bench['train']['error']} (log {out / 'train.log'})")
            result_path.write_text(json.dumps(bench, indent=2) + "\n")
            return 1
        bench["train"].update(train_figures(model_dir))
        print(json.dumps(bench["train"], indent=2), flush=True)
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    if args.train_only:
        return 0

    bench["evaluations"] = {}
    for case, case_args in EVALUATIONS.items():
        if args.only and case not in args.only:
            continue
        json_path = out / f"eval-{case.split()[0]}.json"
        command = [*cli, "evaluate", "--model", str(model_dir), *case_args, "--json", str(json_path), "--quiet",
                   "--output", str(out / f"eval-{case.split()[0]}")]
        print("evaluating:", " ".join(command[2:]), flush=True)
        status = run(command, out / f"eval-{case.split()[0]}.log")
        if status["exit_code"] != 0:
            bench["evaluations"][case] = status
            print(f"  failed: {status['error']}")
            continue
        report = json.loads(json_path.read_text())
        report.update(bench_wall_seconds=status["wall_seconds"], peak_rss_mib=status["peak_rss_mib"],
                      command=status["command"])
        bench["evaluations"][case] = report
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(markdown(bench["evaluations"]))
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
