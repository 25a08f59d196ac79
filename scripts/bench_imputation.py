"""Benchmark: imputation of sparse spatio-temporal data, the LLM4HRS imputer against its controls and the imputation
field's baselines (issue 25).

Usage::

    .venv/bin/python scripts/bench_imputation.py [--cases los-loop beijing-air:PM2.5] [--windows 64]
        [--sft-steps N] [--controls no_llm] [--out outputs/bench_imputation] [--reuse]
        [--seed 0] [--dry-run]

Per case (``OUT/CASE/``), each stage one CLI command in its own process (``--reuse`` skips a stage whose folder or
JSON is complete):

1. ``imputer-sS``: ``st-instruct train recipes/llm4hrs_impute.yaml`` on the case's dataset with its training
   pattern (LLM4HRS, Wang et al., IEEE TGRS 2025: the frozen LLM blocks read each window forward, backward and
   across locations), and ``imputer-sS-no-llm`` (``--control no_llm``: the same imputer without the backbone).
2. ``PATTERN.json``: ``st-instruct evaluate --missing-pattern PATTERN`` on the case's test windows (a seeded subset
   of ``--windows``, the same for every row): the imputer, its control and every imputation baseline (mean, linear
   interpolation in time, graph-neighbour mean, historical average by time of week, PyPOTS' SAITS and BRITS), MAE
   and RMSE on the hidden entries only -- never an observed one, never one missing from the data.

Cases: ``los-loop`` (the METR-LA loop detectors), trained on ``point:0.5`` and scored under SPIN's ``spin_point``
and ``spin_block`` presets and ``point`` at 50 / 80 / 95 %; ``beijing-air:PM2.5`` (its real gaps kept unscored),
trained on ``point:0.25`` and scored at 25 % and 80 % of the known values hidden. One model per case, scored at every
pattern of the case (a model per rate, as LLM4HRS trains them, is not run).

Writes ``OUT/bench_imputation.json`` (every stage's command, wall seconds and peak memory, every report) and prints
one table per case: MAE of every row at every pattern, and whether the goals hold -- the imputer below linear
interpolation, neighbour mean and HA at every pattern; below SAITS and BRITS at >= 80 % missing -- and what the LLM
adds over its control as the rate grows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecaster import evaluate_stage, run_training_stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/llm4hrs_impute.yaml"
BASELINES = ("mean", "linear_interpolation", "neighbour_mean", "historical_average", "saits", "brits")
# case -> (dataset entry, training pattern, scored patterns)
CASES = {
    "los-loop": ("los-loop", "point:0.5", ["spin_point", "spin_block", "point:0.5", "point:0.8", "point:0.95"]),
    "beijing-air:PM2.5": ("beijing-air[PM2.5]", "point:0.25", ["point:0.25", "point:0.8"]),
}
GOAL_ROWS = ("linear_interpolation", "neighbour_mean", "historical_average")
HEAVY = ("saits", "brits")  # to beat at >= 80 % missing


def rate(pattern: str) -> float:
    """The fraction a pattern hides (SPIN's presets: their expected rates, 25 % and about 9 %)."""
    return {"spin_point": 0.25, "spin_block": 0.09}.get(pattern, None) or float(pattern.split(":")[1])


def stages(case: str, seed: int, out: Path, cli: list[str], sft_steps: int | None, controls: list[str]) -> dict:
    """``name -> (command, folder, marker)`` of a case's training runs."""
    dataset, pattern, _ = CASES[case]
    budget = [] if sft_steps is None else ["--max_steps", str(sft_steps)]
    found = {}
    for control in ("none", *controls):
        folder = out / (f"imputer-s{seed}" + ("" if control == "none" else f"-{control.replace('_', '-')}"))
        found[folder.name] = ([*cli, "train", RECIPE, "--dataset_names", dataset, "--missing_pattern", pattern,
                               "--seed", str(seed), "--control", control, "--output_dir", str(folder),
                               "--report_to", "none", *budget], folder, "trainer_state.json")
    return found


def evaluations(case: str, seed: int, windows: int, out: Path, cli: list[str], controls: list[str]
                ) -> dict[str, tuple[list[str], Path]]:
    """``pattern -> (command, its --json path)``."""
    dataset, _, patterns = CASES[case]
    name, _, channel = case.partition(":")
    model = out / f"imputer-s{seed}"
    control_dirs = [str(out / f"imputer-s{seed}-{control.replace('_', '-')}") for control in controls]
    found = {}
    for pattern in patterns:
        json_path = out / f"{pattern.replace(':', '-')}.json"
        found[pattern] = ([*cli, "evaluate", "--model", str(model), "--dataset", name,
                           *(["--channels", channel] if channel else []), "--missing-pattern", pattern,
                           "--max-windows", str(windows), *(["--controls", *control_dirs] if control_dirs else []),
                           "--models", *BASELINES, "--seed", str(seed), "--json", str(json_path), "--output",
                           str(out / f"eval-{json_path.stem}"), "--overwrite", "--quiet"], json_path)
    return found


def table(case: str, reports: dict[str, dict]) -> tuple[str, dict]:
    """Markdown of MAE / RMSE per row and pattern, and the goals' verdicts."""
    patterns = [p for p in CASES[case][2] if "results" in reports.get(p, {})]
    rows: list[str] = []
    for pattern in patterns:
        for row in reports[pattern]["results"]:
            if row not in rows:
                rows.append(row)
    lines = [f"**{case}: MAE / RMSE on the hidden entries**", "",
             "| row | " + " | ".join(patterns) + " |", "|---|" + "---|" * len(patterns)]
    for row in rows:
        cells = []
        for pattern in patterns:
            found = reports[pattern]["results"].get(row)
            cells.append("skipped" if found is None else f"{found['MAE']:.3f} / {found['RMSE']:.3f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    verdicts: dict[str, dict] = {}
    for pattern in patterns:
        results = reports[pattern]["results"]
        mine = results["st_forecaster"]["MAE"]
        beaten = {row: mine < results[row]["MAE"] for row in GOAL_ROWS if row in results}
        if rate(pattern) >= 0.8:
            beaten.update({row: mine < results[row]["MAE"] for row in HEAVY if row in results})
        control = results.get("st_forecaster_no_llm", {}).get("MAE")
        verdicts[pattern] = {"below": beaten, "llm_minus_control": None if control is None else mine - control,
                             "scored_entries": reports[pattern].get("scored_entries")}
    lines.append("")
    for pattern, verdict in verdicts.items():
        below = ", ".join(f"{row} {'yes' if ok else 'NO'}" for row, ok in verdict["below"].items())
        delta = verdict["llm_minus_control"]
        lines.append(f"- {pattern}: imputer below {below}; LLM - control "
                     f"{'n/a' if delta is None else f'{delta:+.3f}'} ({verdict['scored_entries']} entries scored)")
    return "\n".join(lines), verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--windows", type=int, default=64, help="test windows scored per pattern")
    parser.add_argument("--sft-steps", type=int, default=None, help="override the recipe's max_steps")
    parser.add_argument("--controls", nargs="*", default=["no_llm"], choices=["no_llm", "random_llm"])
    parser.add_argument("--out", default="outputs/bench_imputation", help="folder for the models, logs and JSON")
    parser.add_argument("--reuse", action="store_true", help="skip the stages whose outputs are complete")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    cli = [sys.executable, "-m", "st_instruct.cli"]
    if args.dry_run:
        for case in args.cases:
            folder = out / case.replace(":", "-")
            for _, (command, _, _) in stages(case, args.seed, folder, cli, args.sft_steps, args.controls).items():
                print(" ".join(command[2:]))
            for command, _ in evaluations(case, args.seed, args.windows, folder, cli, args.controls).values():
                print(" ".join(command[2:]))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "bench_imputation.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    bench = {**previous, "commit": commit, "machine": machine}
    try:
        for case in args.cases:
            folder = out / case.replace(":", "-")
            folder.mkdir(parents=True, exist_ok=True)
            old = bench.get(case, {})
            record = {"stages": dict(old.get("stages", {})), "evaluations": dict(old.get("evaluations", {}))}
            bench[case] = record
            if not run_training_stages(stages(case, args.seed, folder, cli, args.sft_steps, args.controls),
                                       args.reuse, old.get("stages", {}), folder, record["stages"],
                                       folder / "stages.json"):
                continue
            for pattern, (command, json_path) in evaluations(case, args.seed, args.windows, folder, cli,
                                                             args.controls).items():
                if args.reuse and json_path.is_file():
                    record["evaluations"][pattern] = json.loads(json_path.read_text())
                    continue
                evaluate_stage(pattern, command, json_path, folder / f"{json_path.stem}.log", record)
            text, record["verdicts"] = table(case, record["evaluations"])
            print(text, flush=True)
    finally:
        result_path.write_text(json.dumps(bench, indent=2, default=str) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
