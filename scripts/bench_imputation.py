"""Benchmark: imputation of sparse spatio-temporal data, the LLM4HRS imputer against its controls and the imputation
field's baselines, and forecasting from a sparse history, directly or after imputation (issue 25).

Usage::

    .venv/bin/python scripts/bench_imputation.py [--cases los-loop beijing-air:PM2.5 nyc-taxi:sparse-history]
        [--windows 64] [--sft-steps N] [--mae-steps 2000] [--controls no_llm random_llm]
        [--train-pattern PATTERN] [--patterns PATTERN ...] [--forecast-windows 32] [--forecast-nodes 32]
        [--out outputs/bench_imputation] [--reuse] [--seed 0]
        [--dry-run]

Per case (``OUT/CASE/``), each stage one CLI command in its own process (``--reuse`` skips a stage whose folder or
JSON is complete):

Imputation cases -- ``los-loop`` (the METR-LA loop detectors), trained on ``point:0.5`` and scored under SPIN's
``spin_point`` and ``spin_block`` presets and ``point`` at 50 / 80 / 95 %; ``beijing-air:PM2.5`` (its real gaps kept
unscored), trained on ``point:0.25`` and scored at 25 % and 80 % of the known values hidden:

1. ``imputer-sS``: ``st-instruct train recipes/llm4hrs_impute.yaml`` on the case's dataset with its training
   pattern (LLM4HRS, Wang et al., IEEE TGRS 2025: the frozen LLM blocks read each window forward, backward and
   across locations), and its controls ``imputer-sS-no-llm`` / ``-random-llm`` (``--control``: the same imputer
   without the backbone, or with a randomly initialised one).
2. ``mae-encoder``: ``st-instruct pretrain recipes/pretrain_mae.yaml`` on the case's train split with the imputer's
   history (masked-autoencoder pretraining, UniST / UrbanMind, no LLM): the ``mae_encoder`` row.
3. ``PATTERN.json``: ``st-instruct evaluate --missing-pattern PATTERN`` on the case's test windows (a seeded subset
   of ``--windows``, the same for every row): the imputer, its controls, the pretrained encoder and every imputation
   baseline (mean, linear interpolation in time, graph-neighbour mean, historical average by time of week, PyPOTS'
   SAITS and BRITS fitted on the train split), MAE and RMSE on the hidden entries only -- never an observed one,
   never one missing from the data.

One imputer per case, scored at every pattern of the case (a model per rate, as LLM4HRS trains them, is not run).

Sparse-history case -- ``nyc-taxi:sparse-history``: a forecaster (``recipes/unist_sft.yaml`` on nyc-taxi alone, its
encoder from ``recipes/universal_pretrain.yaml``) and its no-LLM control trained on the full series, then
``st-instruct evaluate --missing-pattern point:R --history-fill FILL`` for R 0.5 / 0.8 and FILL ``none`` (forecast
directly from the sparse history) / ``forward`` (impute-then-forecast, causal), and once on the full history
(``dense``); the baselines (STID among them) fit
on the full train split, as the forecaster did, and read the same sparse or filled history; scored on every truly
observed target (``--forecast-windows`` x ``--forecast-nodes``).

Writes ``OUT/bench_imputation.json`` (every stage's command, wall seconds and peak memory, every report) and prints
one table per case: MAE of every row at every pattern, and for the imputation cases whether the goals hold -- the
imputer below linear interpolation, neighbour mean and HA at every pattern; below SAITS and BRITS at >= 80 %
missing -- and what the LLM adds over its control as the rate grows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecaster import evaluate_stage, provenance, run_training_stages  # noqa: E402

RECIPE = "recipes/llm4hrs_impute.yaml"
MAE_RECIPE = "recipes/pretrain_mae.yaml"
FORECAST_RECIPE = "recipes/unist_sft.yaml"
FORECAST_PRETRAIN_RECIPE = "recipes/universal_pretrain.yaml"
BASELINES = ("mean", "linear_interpolation", "neighbour_mean", "historical_average", "saits", "brits")
HISTORY = 24  # the imputer recipe's window length: the masked autoencoder is pretrained with it
# case -> (dataset entry, training pattern, scored patterns)
CASES = {
    "los-loop": ("los-loop", "point:0.5", ["spin_point", "spin_block", "point:0.5", "point:0.8", "point:0.95"]),
    "beijing-air:PM2.5": ("beijing-air[PM2.5]", "point:0.25", ["point:0.25", "point:0.8"]),
}
SPARSE_CASE = "nyc-taxi:sparse-history"
SPARSE_PATTERNS = ("point:0.5", "point:0.8")
FILLS = ("none", "forward")
GOAL_ROWS = ("linear_interpolation", "neighbour_mean", "historical_average")
HEAVY = ("saits", "brits")  # to beat at >= 80 % missing


def rate(pattern: str) -> float:
    """The fraction a pattern hides (SPIN's presets: their expected rates, 25 % and about 9 %)."""
    return {"spin_point": 0.25, "spin_block": 0.09}.get(pattern, None) or float(pattern.split(":")[1])


def control_folder(out: Path, name: str, control: str) -> Path:
    return out / (name + ("" if control == "none" else f"-{control.replace('_', '-')}"))


def stages(case: str, args: argparse.Namespace, out: Path, cli: list[str]) -> dict:
    """``name -> (command, folder, marker)`` of a case's training runs."""
    seed = args.seed
    budget = [] if args.sft_steps is None else ["--max_steps", str(args.sft_steps)]
    found = {}
    if case == SPARSE_CASE:
        pretrain = out / "pretrain"
        found["pretrain"] = ([*cli, "pretrain", FORECAST_PRETRAIN_RECIPE, "--pretrain_output_dir", str(pretrain)],
                             pretrain, "pretrain_log.json")
        for control in ("none", "no_llm"):
            folder = control_folder(out, f"forecaster-s{seed}", control)
            found[folder.name] = ([*cli, "train", FORECAST_RECIPE, "--dataset_names", "nyc-taxi", "--st_encoder_init",
                                   str(pretrain), "--seed", str(seed), "--control", control, "--output_dir",
                                   str(folder), "--report_to", "none", *budget], folder, "trainer_state.json")
        return found
    dataset, pattern, _ = CASES[case]
    pattern = args.train_pattern or pattern
    for control in ("none", *args.controls):
        folder = control_folder(out, f"imputer-s{seed}", control)
        found[folder.name] = ([*cli, "train", RECIPE, "--dataset_names", dataset, "--missing_pattern", pattern,
                               "--seed", str(seed), "--control", control, "--output_dir", str(folder),
                               "--report_to", "none", *budget], folder, "trainer_state.json")
    mae = out / "mae-encoder"
    found[mae.name] = ([*cli, "pretrain", MAE_RECIPE, "--dataset_names", dataset, "--history", str(HISTORY),
                        "--pretrain_steps", str(args.mae_steps), "--pretrain_seed", str(seed), "--pretrain_output_dir",
                        str(mae)], mae, "pretrain_log.json")
    return found


def evaluations(case: str, args: argparse.Namespace, out: Path, cli: list[str]) -> dict[str, tuple[list[str], Path]]:
    """``column -> (command, its --json path)``: a pattern of an imputation case, ``PATTERN FILL`` of the
    sparse-history case."""
    seed, found = args.seed, {}
    if case == SPARSE_CASE:
        model = out / f"forecaster-s{seed}"
        for column in columns(case, args.patterns):
            pattern, _, fill = column.partition(" ")
            sparse = ["--missing-pattern", pattern, "--history-fill", fill] if fill else []
            json_path = out / f"{column.replace(':', '-').replace(' ', '-')}.json"
            found[column] = (
                [*cli, "evaluate", "--model", str(model), "--dataset", "nyc-taxi", *sparse, "--max-windows",
                 str(args.forecast_windows), "--max-nodes", str(args.forecast_nodes), "--controls",
                 str(control_folder(out, model.name, "no_llm")), "--seed", str(seed), "--json", str(json_path),
                 "--output", str(out / f"eval-{json_path.stem}"), "--overwrite", "--quiet"], json_path)
        return found
    patterns = columns(case, args.patterns)
    name, _, channel = case.partition(":")
    model = out / f"imputer-s{seed}"
    control_dirs = [str(control_folder(out, model.name, control)) for control in args.controls]
    for pattern in patterns:
        json_path = out / f"{pattern.replace(':', '-')}.json"
        found[pattern] = ([*cli, "evaluate", "--model", str(model), "--task", "imputation", "--dataset", name,
                           *(["--channels", channel] if channel else []), "--missing-pattern", pattern,
                           "--max-windows", str(args.windows),
                           *(["--controls", *control_dirs] if control_dirs else []), "--models", *BASELINES,
                           "--pretrained-encoder", str(out / "mae-encoder"),
                           "--seed", str(seed), "--json", str(json_path), "--output",
                           str(out / f"eval-{json_path.stem}"), "--overwrite", "--quiet"], json_path)
    return found


def columns(case: str, patterns: list[str] | None = None) -> list[str]:
    """The case's evaluation columns, in table order (only those of ``patterns`` when given)."""
    if case == SPARSE_CASE:  # the full history first, for what the gaps cost
        found = ["dense", *(f"{pattern} {fill}" for pattern in SPARSE_PATTERNS for fill in FILLS)]
    else:
        found = CASES[case][2]
    return [c for c in found if patterns is None or c.partition(" ")[0] in patterns or c in patterns]


def table(case: str, reports: dict[str, dict], patterns: list[str] | None = None) -> tuple[str, dict]:
    """Markdown of MAE / RMSE per row and column, and the verdicts: an imputation case's goals, or the
    sparse-history case's direct vs impute-then-forecast per row."""
    found_columns = [c for c in columns(case, patterns) if "results" in reports.get(c, {})]
    rows: list[str] = []
    for column in found_columns:
        for row in reports[column]["results"]:
            if row not in rows:
                rows.append(row)
    scored = "the hidden entries" if case != SPARSE_CASE else "every observed target (history sparse)"
    lines = [f"**{case}: MAE / RMSE on {scored}**", "",
             "| row | " + " | ".join(found_columns) + " |", "|---|" + "---|" * len(found_columns)]
    for row in rows:
        cells = []
        for column in found_columns:
            found = reports[column]["results"].get(row)
            cells.append("skipped" if found is None or "MAE" not in found
                         else f"{found['MAE']:.3f} / {found['RMSE']:.3f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    verdicts: dict[str, dict] = {}
    mae = {column: {row: found["MAE"] for row, found in reports[column]["results"].items() if "MAE" in found}
           for column in found_columns}
    if case == SPARSE_CASE:
        for pattern in SPARSE_PATTERNS:
            direct, filled = mae.get(f"{pattern} none"), mae.get(f"{pattern} forward")
            if direct is None or filled is None:
                continue
            verdicts[pattern] = {row: {"direct": direct[row], "impute_then_forecast": filled[row]}
                                 for row in direct if row in filled}
            lines.append(f"- {pattern}: impute-then-forecast minus direct: " + ", ".join(
                f"{row} {filled[row] - direct[row]:+.3f}" for row in direct if row in filled))
        return "\n".join(lines), verdicts
    for pattern in found_columns:
        results = mae[pattern]
        mine = results["st_forecaster"]
        beaten = {row: mine < results[row] for row in GOAL_ROWS if row in results}
        if rate(pattern) >= 0.8:
            beaten.update({row: mine < results[row] for row in HEAVY if row in results})
        verdicts[pattern] = {"below": beaten, "scored_entries": reports[pattern].get("scored_entries"),
                             **{f"llm_minus_{control}": mine - results[f"st_forecaster_{control}"]
                                for control in ("no_llm", "random_llm") if f"st_forecaster_{control}" in results}}
    for pattern, verdict in verdicts.items():
        below = ", ".join(f"{row} {'yes' if ok else 'NO'}" for row, ok in verdict["below"].items())
        deltas = "; ".join(f"LLM - {key.removeprefix('llm_minus_')} {value:+.3f}" for key, value in verdict.items()
                           if key.startswith("llm_minus_")) or "no control"
        lines.append(f"- {pattern}: imputer below {below}; {deltas} ({verdict['scored_entries']} entries scored)")
    return "\n".join(lines), verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*CASES, SPARSE_CASE]
    parser.add_argument("--cases", nargs="+", default=choices, choices=choices)
    parser.add_argument("--windows", type=int, default=64, help="test windows scored per imputation pattern")
    parser.add_argument("--sft-steps", type=int, default=None, help="override the recipes' max_steps")
    parser.add_argument("--mae-steps", type=int, default=2000, help="steps of the masked-autoencoder pretraining")
    parser.add_argument("--controls", nargs="*", default=["no_llm", "random_llm"], choices=["no_llm", "random_llm"],
                        help="the imputer's controls (the sparse-history forecaster has its no-LLM one)")
    parser.add_argument("--train-pattern", default=None, metavar="PATTERN",
                        help="train the imputers on this pattern instead of the case's (LLM4HRS trains one per rate)")
    parser.add_argument("--patterns", nargs="+", default=None, metavar="PATTERN",
                        help="score only these of the case's patterns (the sparse-history case: its rates)")
    parser.add_argument("--forecast-windows", type=int, default=32, help="test windows of the sparse-history case")
    parser.add_argument("--forecast-nodes", type=int, default=32, help="series per window of the sparse-history case")
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
            for command, _, _ in stages(case, args, folder, cli).values():
                print(" ".join(command[2:]))
            for command, _ in evaluations(case, args, folder, cli).values():
                print(" ".join(command[2:]))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "bench_imputation.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    bench = {**previous, **provenance()}
    try:
        for case in args.cases:
            folder = out / case.replace(":", "-")
            folder.mkdir(parents=True, exist_ok=True)
            old = bench.get(case, {})
            record = {"stages": dict(old.get("stages", {})), "evaluations": dict(old.get("evaluations", {}))}
            bench[case] = record
            if not run_training_stages(stages(case, args, folder, cli), args.reuse, old.get("stages", {}), folder,
                                       record["stages"], folder / "stages.json"):
                continue
            for column, (command, json_path) in evaluations(case, args, folder, cli).items():
                if args.reuse and json_path.is_file():
                    record["evaluations"][column] = json.loads(json_path.read_text())
                    continue
                evaluate_stage(column, command, json_path, folder / f"{json_path.stem}.log", record)
            text, record["verdicts"] = table(case, record["evaluations"], args.patterns)
            print(text, flush=True)
    finally:
        result_path.write_text(json.dumps(bench, indent=2, default=str) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
