"""Benchmark: does the universal forecaster transfer? Leave-one-dataset-out, zero-shot and few-shot (issue 23).

Usage::

    .venv/bin/python scripts/bench_transfer.py [--targets nyc-bike nyc-taxi los-loop beijing-air:PM2.5]
        [--variants unist universal] [--out outputs/bench_transfer] [--reuse] [--seeds 0 1]
        [--fractions 0.05 0.1] [--windows 100] [--max-nodes 32] [--few-shot-steps 200] [--pretrain-steps N]
        [--sft-steps N]

For every target ``T`` (``NAME`` or ``NAME:CHANNEL``), in ``OUT/T/``, each stage one CLI command in its own process
(as in bench_forecaster.py; ``--reuse`` skips a stage whose folder or JSON is complete, so the table can be built
target by target over several sessions):

1. ``pretrain``: ``st-instruct pretrain recipes/universal_pretrain.yaml --leave_out T`` -- the universal encoder on
   every other dataset of the corpus (T is never read).
2. ``V-sS``: ``st-instruct train RECIPE --leave_out T --st_encoder_init OUT/T/pretrain --seed S`` per variant ``V``
   -- ``unist`` (recipes/unist_sft.yaml: the universal forecaster with UniST's memory prompts) and ``universal``
   (recipes/universal_sft.yaml: the same without them) -- and per seed; each with its no-LLM control
   ``V-sS-no-llm`` (the same recipe with ``--control no_llm``: the same encoder start, head and budget, no
   backbone).
3. ``zero-shot-V-sS.json``: ``st-instruct evaluate`` on T's test windows (a seeded subset of at most ``--windows``
   windows and ``--max-nodes`` series, the same for every row): the forecaster, its control and the three kinds of
   reference rows of zero-shot/2 -- input-only, source-fitted and target-fitted.
4. ``few-shot-F-V-sS.json`` (the first variant only): ``--few-shot F`` (few-shot/2: the whole forecaster and its
   control fine-tuned on the first F of T's train windows for at most ``--few-shot-steps`` steps, early-stopped on
   its validation windows) beside STID and the historical average fitted on the same windows, scored like 3.

Writes ``OUT/bench_transfer.json`` (every stage's command, wall seconds and peak memory, and every report) and
prints, per target, the MAE of every row with the mean and spread over the seeds of the forecaster rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecaster import evaluate_stage, provenance, run_training_stages  # noqa: E402

PRETRAIN_RECIPE = "recipes/universal_pretrain.yaml"
# the forecaster with UniST's memory prompts, and the same model without them (the ablation)
VARIANTS = {"unist": "recipes/unist_sft.yaml", "universal": "recipes/universal_sft.yaml"}
TARGETS = ("nyc-bike", "nyc-taxi", "los-loop", "beijing-air:PM2.5")
# seasonal_naive_*: the values one day / one week earlier, which the UniST prompts' period prior reads too
REFERENCES = ["window_last_value", "window_mean", "window_linear_trend", "global_ridge", "historical_average",
              "last_value", "seasonal_naive_day", "seasonal_naive_week", "ridge", "stid"]
FEW_SHOT_REFERENCES = ["window_last_value", "historical_average", "stid"]
FORECASTER_ROWS = ("st_forecaster", "st_forecaster_no_llm")


def target_stages(target: str, variants: list[str], seeds: list[int], out: Path, cli: list[str],
                  pretrain_steps: int | None, sft_steps: int | None) -> dict:
    """The training stages of one target: ``name -> (command, folder, marker file)``."""
    name = target.split(":")[0]
    pretrain = out / "pretrain"
    steps = [] if pretrain_steps is None else ["--pretrain_steps", str(pretrain_steps)]
    stages = {"pretrain": ([*cli, "pretrain", PRETRAIN_RECIPE, "--leave_out", name, "--pretrain_output_dir",
                            str(pretrain), *steps], pretrain, "pretrain_log.json")}
    budget = [] if sft_steps is None else ["--max_steps", str(sft_steps)]
    for variant in variants:
        for seed in seeds:
            for control in ("none", "no_llm"):
                folder = out / (f"{variant}-s{seed}" + ("" if control == "none" else "-no-llm"))
                stages[folder.name] = ([*cli, "train", VARIANTS[variant], "--leave_out", name, "--st_encoder_init",
                                        str(pretrain), "--seed", str(seed), "--control", control, "--output_dir",
                                        str(folder), "--report_to", "none", *budget], folder, "trainer_state.json")
    return stages


def evaluation_commands(target: str, variants: list[str], seeds: list[int], fractions: list[float], windows: int,
                        nodes: int, few_shot_steps: int, out: Path, cli: list[str],
                        ) -> dict[str, tuple[list[str], Path]]:
    """``case -> (command, its --json path)`` of every evaluation of one target (few-shot: the first variant only)."""
    name, _, channel = target.partition(":")
    data = ["--dataset", name, *(["--channels", channel] if channel else []), "--max-windows", str(windows),
            "--max-nodes", str(nodes)]
    cases = {}
    for variant in variants:
        for seed in seeds:
            model, control = out / f"{variant}-s{seed}", out / f"{variant}-s{seed}-no-llm"
            json_path = out / f"zero-shot-{variant}-s{seed}.json"
            cases[f"{variant} zero-shot s{seed}"] = (
                [*cli, "evaluate", "--model", str(model), *data, "--controls", str(control), "--models", *REFERENCES,
                 "--seed", str(seed), "--json", str(json_path), "--output", str(out / f"eval-{json_path.stem}"),
                 "--overwrite", "--quiet"], json_path)
            if variant != variants[0]:
                continue
            for fraction in fractions:
                tuned = out / f"few-shot-{fraction:g}-{variant}-s{seed}"
                json_path = out / f"{tuned.name}.json"  # not with_suffix: "0.05" holds a dot
                cases[f"{variant} few-shot {fraction:g} s{seed}"] = (
                    [*cli, "evaluate", "--model", str(model), *data, "--controls", str(control), "--few-shot",
                     str(fraction), "--few-shot-steps", str(few_shot_steps), "--few-shot-output", str(tuned),
                     "--models", *FEW_SHOT_REFERENCES, "--seed", str(seed), "--json", str(json_path), "--output",
                     str(out / f"eval-{tuned.name}"), "--overwrite", "--quiet"], json_path)
    return cases


def summary(evaluations: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """``{protocol: {row: {"kind", "MAE": [per seed], "mean", "spread"}}}`` from ``case -> report``: the seeds of a
    protocol pooled (``spread`` = max - min over the seeds; one seed: 0)."""
    table: dict[str, dict[str, dict]] = {}
    for case, report in evaluations.items():
        protocol = case.rsplit(" s", 1)[0]  # "VARIANT PROTOCOL"
        for row, result in report.get("results", {}).items():
            entry = table.setdefault(protocol, {}).setdefault(row, {"kind": result.get("kind"), "MAE": []})
            entry["MAE"].append(result["MAE"])
    for rows in table.values():
        for entry in rows.values():
            values = np.asarray(entry["MAE"], dtype=float)
            entry.update(mean=float(values.mean()), spread=float(values.max() - values.min()), seeds=len(values))
    return table


def markdown(target: str, table: dict[str, dict[str, dict]]) -> str:
    """One table per protocol: rows best MAE first, with their kind, the mean MAE and the spread over the seeds."""
    parts = []
    for protocol, rows in table.items():
        lines = [f"**{target}, {protocol}**", "", "| row | kind | MAE (mean over seeds) | spread | seeds |",
                 "|---|---|---|---|---|"]
        for row, entry in sorted(rows.items(), key=lambda item: item[1]["mean"]):
            lines.append(f"| {row} | {entry['kind']} | {entry['mean']:.3f} | {entry['spread']:.3f} | "
                         f"{entry['seeds']} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), help="NAME or NAME:CHANNEL, each left out")
    parser.add_argument("--out", default="outputs/bench_transfer", help="folder for the models, logs and JSON")
    parser.add_argument("--reuse", action="store_true", help="skip the stages whose outputs are complete")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the forecaster and its control")
    parser.add_argument("--fractions", nargs="*", type=float, default=[0.05, 0.1], help="few-shot fractions")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="forecasters to train and score (few-shot: the first one only)")
    parser.add_argument("--windows", type=int, default=100, help="test windows scored per evaluation")
    parser.add_argument("--max-nodes", type=int, default=32,
                        help="series scored per window (a seeded subset, the same for every row)")
    parser.add_argument("--few-shot-steps", type=int, default=200,
                        help="at most this many steps per few-shot fine-tune (early-stopped on validation)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override the pretraining recipe's steps")
    parser.add_argument("--sft-steps", type=int, default=None, help="override the forecaster recipe's max_steps")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "bench_transfer.json"
    previous = json.loads(result_path.read_text()) if args.reuse and result_path.is_file() else {}
    cli = [sys.executable, "-m", "st_instruct.cli"]
    bench = {**provenance(), "few_shot_steps": args.few_shot_steps, "seeds": args.seeds,
             "fractions": args.fractions, "windows": args.windows, "max_nodes": args.max_nodes,
             "variants": args.variants, "targets": previous.get("targets", {})}
    for target in args.targets:
        folder = out / target.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        old = bench["targets"].get(target, {})
        # the other variants' and seeds' figures of earlier runs stay in the JSON
        record = {"stages": dict(old.get("stages", {})), "evaluations": dict(old.get("evaluations", {}))}
        stages = target_stages(target, args.variants, args.seeds, folder, cli, args.pretrain_steps, args.sft_steps)
        target_path = folder / "stages.json"
        if not run_training_stages(stages, args.reuse, old.get("stages", {}), folder, record["stages"], target_path):
            bench["targets"][target] = record
            result_path.write_text(json.dumps(bench, indent=2) + "\n")
            continue
        for case, (command, json_path) in evaluation_commands(target, args.variants, args.seeds, args.fractions,
                                                              args.windows, args.max_nodes, args.few_shot_steps,
                                                              folder, cli).items():
            if args.reuse and json_path.is_file():
                record["evaluations"][case] = json.loads(json_path.read_text())
                continue
            evaluate_stage(case, command, json_path, folder / f"{case.replace(' ', '-')}.log", record)
        record["summary"] = summary({case: report for case, report in record["evaluations"].items()
                                     if "results" in report})
        bench["targets"][target] = record
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
        print(markdown(target, record["summary"]), flush=True)
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
