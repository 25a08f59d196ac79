"""Benchmark: the LLM forecaster of ``recipes/stlink_sft.yaml`` with its controls, trained and evaluated as a user
would (issue 10's nyc-taxi table).

Usage::

    .venv/bin/python scripts/bench_forecaster.py [--out outputs/bench_forecaster] [--reuse] [--train-only]
        [--zero-shot-windows 300] [--few-shot 0.05 0.1]

Stages, each one CLI command in its own process (so wall time and peak memory belong to it alone; the child's
maximum resident set size comes from ``os.wait4``):

0. ``st-instruct pretrain recipes/stlink_pretrain.yaml`` -- the ST encoder and a linear readout trained on the
   forecast task (no LLM) on nyc-taxi 2019.
1. ``st-instruct train recipes/stlink_sft.yaml --se_attention false --mrffn false --st_encoder_init OUT/pretrain``
   -- the base forecaster (the recipe with ST-LINK's modules off; ``--stlink`` keeps them on): nyc-taxi 2019,
   12 -> 12, SmolLM2-135M first 6 layers, LoRA, starting from the pretrained encoder and readout.
   Figures: wall time, optimizer steps, seconds per step (the trainer's ``train_runtime`` / steps), peak RSS; the
   CPU minutes of stages 0 + 1 together are the forecaster's budget (issue 10: at most 30).
2. The controls of the same recipe, same budget (Tan et al., NeurIPS 2024): ``--control no_llm`` (the same encoder
   and head, the backbone removed) and ``--control random_llm`` (the same architecture, random weights).
3. ``st-instruct evaluate`` in-domain on all nyc-taxi 2019 test windows: the forecaster and both controls beside
   historical average, last value, seasonal naive, ridge and STID fitted in the same command on the same windows.
4. Zero-shot: the same model on nyc-bike 2019 (same channels, another mode) and los-loop (one speed channel, 207
   sensors, 5-minute steps; ``--broadcast-channels``), with the no-LLM control, beside the baselines fitted on the
   target and those fitted on the source (``NAME@nyc-taxi``), strict per-window scaling, at most
   ``--zero-shot-windows`` test windows each (sampled as the builder samples; every row scores the same ones).
5. ``--few-shot F ...``: the model and its no-LLM control, each fine-tuned on the first fraction F of nyc-bike
   2019's train split with the same steps, beside STID and historical average fitted on the same windows (scored
   on ``--zero-shot-windows`` test windows).

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
PRETRAIN_RECIPE = "recipes/stlink_pretrain.yaml"
BASE_FORECASTER = ["--se_attention", "false", "--mrffn", "false"]  # the recipe without ST-LINK's modules
CONTROLS = ("no_llm", "random_llm")
BIKE_2019 = ["--dataset", "nyc-bike", "--start", "2019-01-01", "--end", "2020-01-01"]
EVALUATIONS = {
    "nyc-taxi-2019 (in-domain)": ["--dataset", "nyc-taxi", "--start", "2019-01-01", "--end", "2020-01-01"],
    "nyc-bike-2019 (zero-shot)": BIKE_2019,
    "los-loop (zero-shot)": ["--dataset", "los-loop", "--broadcast-channels"],
}
FORECASTER_ROWS = ["st_forecaster", *(f"st_forecaster_{control}" for control in CONTROLS)]
BASELINES = ["historical_average", "last_value", "seasonal_naive_day", "seasonal_naive_week", "ridge", "stid"]


def provenance() -> dict[str, str]:
    """``{"commit", "machine"}`` for a benchmark's JSON: this checkout's short commit, this machine's CPU and cores."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True).stdout.strip()
    return {"commit": commit, "machine": f"{platform.processor() or platform.machine()}, "
                                         f"{len(os.sched_getaffinity(0))} cores"}


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


def row_order(results: dict) -> list[str]:
    """The forecaster and its controls first, then each baseline with its source-fitted twin."""
    order = [name for name in FORECASTER_ROWS if name in results]
    for name in BASELINES:
        order += [row for row in results if row == name or row.startswith(f"{name}@")]
    return order + sorted(set(results) - set(order))


def markdown(evaluations: dict[str, dict]) -> str:
    lines = ["| evaluation | model | MAE | RMSE | MAPE % | horizon 12 MAE | MAE / STID |",
             "|---|---|---|---|---|---|---|"]
    for case, report in evaluations.items():
        if "results" not in report:
            lines.append(f"| {case} | skipped: {report.get('error', '?')} | | | | | |")
            continue
        stid = report["results"].get("stid", {}).get("MAE")
        for model in row_order(report["results"]):
            result = report["results"][model]
            if "skipped" in result:
                lines.append(f"| {case} | {model} | skipped: {result['skipped']} | | | | |")
                continue
            mape = "n/a" if result["MAPE"] is None else f"{result['MAPE']:.1f}"  # metrics give MAPE in %
            last = result["per_horizon"][str(len(result["per_horizon"]))]["MAE"]
            ratio = f"{result['MAE'] / stid:.3f}" if stid else ""
            lines.append(f"| {case} | {model} | {result['MAE']:.2f} | {result['RMSE']:.2f} | {mape} | {last:.2f} | "
                         f"{ratio} |")
    return "\n".join(lines)


def train_stage(name: str, command: list[str], out: Path, model_dir: Path, bench: dict) -> bool:
    """Run one training command into ``bench[name]`` (with the trainer's figures); False when it failed."""
    print(f"{name}:", " ".join(command[2:]), flush=True)
    bench[name] = run(command, out / f"{name}.log")
    if bench[name]["exit_code"] != 0:
        print(f"{name} failed: {bench[name]['error']} (log {out / f'{name}.log'})")
        return False
    if (model_dir / "trainer_state.json").is_file():
        bench[name].update(train_figures(model_dir))
    print(json.dumps(bench[name], indent=2), flush=True)
    return True


def run_training_stages(stages: dict, reuse: bool, previous: dict, out: Path, bench: dict,
                        result_path: Path) -> bool:
    """Run every ``name -> (command, folder, marker file)`` stage with ``--overwrite`` (with ``reuse``: skip one whose
    marker exists, keeping ``previous`` figures), saving ``bench`` to ``result_path`` after each; False on failure."""
    for name, (command, folder, marker) in stages.items():
        if reuse and (folder / marker).is_file():
            print(f"{name}: reusing {folder}")
            bench[name] = previous.get(name, {"note": "reused a folder made earlier; figures not recorded"})
            continue
        ok = train_stage(name, [*command, "--overwrite"], out, folder, bench)
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
        if not ok:
            return False
    return True


def evaluate_stage(case: str, command: list[str], json_path: Path, log: Path, bench: dict) -> None:
    print("evaluating:", " ".join(command[2:]), flush=True)
    status = run(command, log)
    if status["exit_code"] != 0:
        bench["evaluations"][case] = status
        print(f"  failed: {status['error']}")
        return
    report = json.loads(json_path.read_text())
    report.update(bench_wall_seconds=status["wall_seconds"], peak_rss_mib=status["peak_rss_mib"],
                  command=status["command"])
    bench["evaluations"][case] = report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_forecaster", help="folder for the models, logs and JSON")
    parser.add_argument("--reuse", action="store_true", help="skip each training stage whose folder is complete")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's max_steps (a quick look)")
    parser.add_argument("--only", nargs="+", default=None, choices=list(EVALUATIONS), help="evaluations to run")
    parser.add_argument("--train-only", action="store_true", help="stop after training (evaluate later with --reuse)")
    parser.add_argument("--stlink", action="store_true", help="train the recipe as it is (SE-Attention and MRFFN on)")
    parser.add_argument("--controls", nargs="*", default=list(CONTROLS), choices=CONTROLS,
                        help="controls to train and score beside the forecaster (default both)")
    parser.add_argument("--zero-shot-windows", type=int, default=300,
                        help="test windows per zero-shot evaluation (default 300; 0 = all)")
    parser.add_argument("--few-shot", nargs="*", type=float, default=[], metavar="F",
                        help="few-shot fractions of nyc-bike 2019's train split (e.g. 0.05 0.1)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "st_instruct.cli"]
    result_path = out / "bench_forecaster.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    bench: dict = {"recipe": RECIPE, "pretrain_recipe": PRETRAIN_RECIPE,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    pretrained, model_dir = out / "pretrain", out / "model"
    control_dirs = {control: out / f"control-{control}" for control in args.controls}
    recipe = [RECIPE, *([] if args.stlink else BASE_FORECASTER), "--st_encoder_init", str(pretrained),
              "--report_to", "none", "--disable_tqdm", "true"]
    if args.max_steps is not None:
        recipe += ["--max_steps", str(args.max_steps)]
    stages = {"pretrain": ([*cli, "pretrain", PRETRAIN_RECIPE, "--pretrain_output_dir", str(pretrained)], pretrained,
                           "encoder.safetensors"),
              "train": ([*cli, "train", *recipe, "--output_dir", str(model_dir)], model_dir, "trainer_state.json")}
    for control, folder in control_dirs.items():
        stages[f"control_{control}"] = ([*cli, "train", *recipe, "--control", control, "--output_dir", str(folder)],
                                        folder, "trainer_state.json")
    if not run_training_stages(stages, args.reuse, previous, out, bench, result_path):
        return 1
    if "wall_seconds" in bench.get("pretrain", {}) and "wall_seconds" in bench.get("train", {}):
        minutes = (bench["pretrain"]["wall_seconds"] + bench["train"]["wall_seconds"]) / 60
        bench["forecaster_budget"] = {"pretrain_plus_train_minutes": round(minutes, 1), "limit_minutes": 30,
                                      "within": minutes <= 30}
        print(f"pretraining + training: {minutes:.1f} min (issue 10's budget: 30)")
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    if args.train_only:
        return 0

    bench["evaluations"] = {}
    for case, case_args in EVALUATIONS.items():
        if args.only and case not in args.only:
            continue
        zero_shot = "zero-shot" in case
        # the random-LLM control costs a full LLM pass per window: in-domain only, where the question is asked
        controls = [str(folder) for control, folder in control_dirs.items() if not zero_shot or control == "no_llm"]
        tag = case.split()[0]
        json_path = out / f"eval-{tag}.json"
        command = [*cli, "evaluate", "--model", str(model_dir), *case_args, "--json", str(json_path), "--quiet",
                   "--output", str(out / f"eval-{tag}")]
        command += ["--controls", *controls] if controls else []
        if zero_shot and args.zero_shot_windows:
            command += ["--max-windows", str(args.zero_shot_windows)]
        evaluate_stage(case, command, json_path, out / f"eval-{tag}.log", bench)
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
    for fraction in args.few_shot:
        case = f"nyc-bike-2019 (few-shot {fraction:g})"
        tag = f"few-shot-{fraction:g}"
        json_path = out / f"eval-{tag}.json"
        command = [*cli, "evaluate", "--model", str(model_dir), *BIKE_2019, "--few-shot", str(fraction),
                   "--few-shot-output", str(out / f"model-{tag}"), "--models", "historical_average", "stid",
                   "--json", str(json_path), "--quiet", "--output", str(out / f"eval-{tag}")]
        command += ["--max-windows", str(args.zero_shot_windows)] if args.zero_shot_windows else []
        # the no-LLM control is fine-tuned on the same windows (as zero-shot: the random-LLM one only in-domain)
        command += ["--controls", str(control_dirs["no_llm"])] if "no_llm" in control_dirs else []
        evaluate_stage(case, command, json_path, out / f"eval-{tag}.log", bench)
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(markdown(bench["evaluations"]))
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
