"""Benchmark: adapting one shared model cheaply -- UrbanMind's test-time adaptation and semantic prompts, PromptST's
attribute prompt tuning (issue 24).

Usage::

    .venv/bin/python scripts/bench_adapt.py prompt [--fractions 0.05 0.2 1] [--plans prompt whole scratch]
        [--few-shot-steps 100] [--windows 64] [--out outputs/bench_adapt] [--reuse] [--seed 0]
    .venv/bin/python scripts/bench_adapt.py tta [--targets nyc-bike nyc-taxi los-loop beijing-air:PM2.5]
        [--out outputs/bench_adapt] [--reuse] [--pretrain-from outputs/bench_transfer] [--tta-steps 3]
        [--tta-lr LR] [--modes reset carry matured] [--templates semantic_node bare_node] [--windows 16]
        [--max-nodes 16] [--batch-size 64] [--seed 0] [--sft-steps N]

``tta``: zero-shot on the transfer benchmark's targets (scripts/bench_transfer.py), in ``OUT/tta/T/``, each stage
one CLI command in its own process (``--reuse`` skips a stage whose folder or JSON is complete):

1. ``pretrain``: the universal encoder with ``T`` left out -- ``--pretrain-from DIR`` reuses ``DIR/T/pretrain``
   (the transfer benchmark's, the same command), else ``st-instruct pretrain recipes/universal_pretrain.yaml
   --leave_out T``.
2. ``TEMPLATE-sS``: ``st-instruct train recipes/urbanmind_tta.yaml --leave_out T --template TEMPLATE`` per
   template -- ``semantic_node`` (UrbanMind's semantic prompt) and ``bare_node`` (the same sample without the
   description: the switch) -- with its no-LLM control ``TEMPLATE-sS-no-llm``.
3. ``TEMPLATE-tta.json``: ``st-instruct evaluate --tta STEPS --tta-mode MODE ...`` on T's test windows (a seeded
   subset of ``--windows`` windows and ``--max-nodes`` series, the same for every row and every run): the plain
   forecaster and ``st_forecaster+tta-MODE`` per mode (each from the trained weights) beside the control and the
   three kinds of reference rows of zero-shot/2 (input-only, source-fitted, target-fitted).

``prompt``: PromptST on beijing-air, 24 -> 24, in ``OUT/promptst/``: ``shared`` is
``st-instruct train recipes/promptst_shared.yaml`` (one universal forecaster on every pollutant but CO, with its
no-LLM control ``shared-no-llm``); then per fraction ``F`` and plan ``P`` -- ``prompt`` (a fresh soft prompt and the
head's output layer on the frozen shared model: an attribute adapter), ``whole`` (the whole model fine-tuned) and
``scratch`` (the same model trained from nothing) -- ``st-instruct evaluate --dataset beijing-air --channels CO
--few-shot F --few-shot-plan P`` (at most ``--few-shot-steps`` steps, early-stopped on CO's validation windows)
beside STID and the historical average fitted on the same windows; the table gives the trainable weights and the
fine-tune's seconds beside the MAE.

Writes ``OUT/bench_adapt.json`` (every stage's command, wall seconds and peak memory, every report) and prints, per
target, the MAE of every row and whether each label-free mode (reset, carry) lowered the forecaster's MAE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecaster import evaluate_stage, provenance, run_training_stages  # noqa: E402
from bench_transfer import PRETRAIN_RECIPE, REFERENCES, TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TTA_RECIPE = "recipes/urbanmind_tta.yaml"
TEMPLATES = ("semantic_node", "bare_node")
MODES = ("reset", "carry", "matured")
LABEL_FREE = ("reset", "carry")


def tta_stages(target: str, templates: list[str], seed: int, out: Path, cli: list[str], pretrain_from: Path | None,
               sft_steps: int | None) -> tuple[dict, Path]:
    """``(name -> (command, folder, marker file), pretrained encoder folder)`` of one target's training."""
    name = target.split(":")[0]
    stages = {}
    pretrain = pretrain_from / target.replace(":", "-") / "pretrain" if pretrain_from else out / "pretrain"
    if not (pretrain / "pretrain_log.json").is_file():
        pretrain = out / "pretrain"
        stages["pretrain"] = ([*cli, "pretrain", PRETRAIN_RECIPE, "--leave_out", name, "--pretrain_output_dir",
                               str(pretrain)], pretrain, "pretrain_log.json")
    budget = [] if sft_steps is None else ["--max_steps", str(sft_steps)]
    for template in templates:
        for control in ("none", "no_llm"):
            folder = out / (f"{template}-s{seed}" + ("" if control == "none" else "-no-llm"))
            stages[folder.name] = ([*cli, "train", TTA_RECIPE, "--leave_out", name, "--st_encoder_init",
                                    str(pretrain), "--template", template, "--seed", str(seed), "--control",
                                    control, "--output_dir", str(folder), "--report_to", "none", *budget], folder,
                                   "trainer_state.json")
    return stages, pretrain


def tta_evaluations(target: str, templates: list[str], modes: list[str], seed: int, steps: int, rate: float | None,
                    windows: int, nodes: int, batch_size: int, out: Path, cli: list[str]
                    ) -> dict[str, tuple[list[str], Path]]:
    """``case -> (command, its --json path)``: every template's forecaster under every mode."""
    name, _, channel = target.partition(":")
    data = ["--dataset", name, *(["--channels", channel] if channel else []), "--max-windows", str(windows),
            "--max-nodes", str(nodes), "--batch-size", str(batch_size)]
    adapt = ["--tta", str(steps), "--tta-mode", *modes, *(["--tta-lr", str(rate)] if rate else [])]
    cases = {}
    for template in templates:
        model, control = out / f"{template}-s{seed}", out / f"{template}-s{seed}-no-llm"
        json_path = out / f"{template}-tta.json"
        cases[template] = (
            [*cli, "evaluate", "--model", str(model), *data, "--controls", str(control), "--models", *REFERENCES,
             *adapt, "--seed", str(seed), "--json", str(json_path), "--output",
             str(out / f"eval-{json_path.stem}"), "--overwrite", "--quiet"], json_path)
    return cases


def tta_table(evaluations: dict[str, dict]) -> tuple[list[tuple[str, str, float]], dict[str, dict[str, bool]]]:
    """``(rows, lowered)``: ``(row, kind, MAE)`` of every forecaster row (``TEMPLATE: ROW``) and, once, every
    reference row; ``lowered[template][mode]``: whether that label-free mode lowered the forecaster's MAE."""
    rows: dict[str, tuple[str, float]] = {}
    lowered: dict[str, dict[str, bool]] = {}
    for template, report in evaluations.items():
        if "results" not in report:
            continue
        for row, result in report["results"].items():
            if result.get("kind") in ("forecaster", "control"):
                rows[f"{template}: {row}"] = (result["kind"], result["MAE"])
            else:
                rows.setdefault(row, (result["kind"], result["MAE"]))
        plain = report["results"]["st_forecaster"]["MAE"]
        for mode in LABEL_FREE:
            adapted = report["results"].get(f"st_forecaster+tta-{mode}", {}).get("MAE")
            if adapted is not None:
                lowered.setdefault(template, {})[mode] = adapted < plain
    ordered = sorted(rows.items(), key=lambda item: item[1][1])
    return [(row, kind, mae) for row, (kind, mae) in ordered], lowered


def markdown(target: str, rows: list[tuple[str, str, float]], lowered: dict[str, dict[str, bool]]) -> str:
    lines = [f"**{target}, zero-shot with test-time adaptation**", "", "| row | kind | MAE |", "|---|---|---|"]
    lines += [f"| {row} | {kind} | {mae:.3f} |" for row, kind, mae in rows]
    for template, modes in lowered.items():
        lines.append(f"\n{template}: " + ", ".join(f"{mode} {'lowers' if low else 'does not lower'} the MAE"
                                                   for mode, low in modes.items()))
    return "\n".join(lines)


def run_tta(args: argparse.Namespace, out: Path, cli: list[str], bench: dict) -> None:
    for target in args.targets:
        folder = out / "tta" / target.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        old = bench["tta"].get(target, {})
        record = {"stages": dict(old.get("stages", {})), "evaluations": dict(old.get("evaluations", {}))}
        stages, _ = tta_stages(target, args.templates, args.seed, folder, cli, args.pretrain_from, args.sft_steps)
        if not run_training_stages(stages, args.reuse, old.get("stages", {}), folder, record["stages"],
                                   folder / "stages.json"):
            bench["tta"][target] = record
            continue
        for case, (command, json_path) in tta_evaluations(target, args.templates, args.modes, args.seed,
                                                          args.tta_steps, args.tta_lr, args.windows, args.max_nodes,
                                                          args.batch_size, folder, cli).items():
            if args.reuse and json_path.is_file():
                record["evaluations"][case] = json.loads(json_path.read_text())
                continue
            evaluate_stage(case, command, json_path, folder / f"{case.replace(' ', '-')}.log", record)
        rows, lowered = tta_table(record["evaluations"])
        record["table"], record["lowered"] = rows, lowered
        bench["tta"][target] = record
        print(markdown(target, rows, lowered), flush=True)


SHARED_RECIPE = "recipes/promptst_shared.yaml"
PLANS = ("prompt", "whole", "scratch")
ATTRIBUTE = ("beijing-air", "CO")  # held out of the shared model's pollutants
FEW_SHOT_REFERENCES = ["historical_average", "stid", "window_last_value"]


def run_prompt(args: argparse.Namespace, out: Path, cli: list[str], bench: dict) -> None:
    """PromptST's part (module docstring): the shared model, then every fraction x plan."""
    folder = out / "promptst"
    folder.mkdir(parents=True, exist_ok=True)
    record = bench["prompt"]
    record.setdefault("stages", {})
    record.setdefault("evaluations", {})
    shared = folder / f"shared-s{args.seed}"
    budget = [] if args.sft_steps is None else ["--max_steps", str(args.sft_steps)]
    stages = {shared.name + suffix: ([*cli, "train", SHARED_RECIPE, "--seed", str(args.seed), "--control", control,
                                      "--output_dir", str(shared) + suffix, "--report_to", "none", *budget],
                                     Path(str(shared) + suffix), "trainer_state.json")
              for control, suffix in (("none", ""), ("no_llm", "-no-llm"))}
    if not run_training_stages(stages, args.reuse, dict(record["stages"]), folder, record["stages"],
                               folder / "stages.json"):
        return
    name, channel = ATTRIBUTE
    for fraction in args.fractions:
        for plan in args.plans:
            case = f"few-shot {fraction:g} {plan}"
            tuned = folder / f"few-shot-{fraction:g}-{plan}"
            json_path = folder / f"{tuned.name}.json"
            if args.reuse and json_path.is_file():
                record["evaluations"][case] = json.loads(json_path.read_text())
                continue
            command = [*cli, "evaluate", "--model", str(shared), "--dataset", name, "--channels", channel,
                       "--controls", f"{shared}-no-llm", "--few-shot", str(fraction), "--few-shot-plan", plan,
                       "--few-shot-steps", str(args.few_shot_steps), "--few-shot-output", str(tuned),
                       "--max-windows", str(args.windows), "--models", *FEW_SHOT_REFERENCES, "--seed",
                       str(args.seed), "--json", str(json_path), "--output", str(folder / f"eval-{tuned.name}"),
                       "--overwrite", "--quiet"]
            evaluate_stage(case, command, json_path, folder / f"{tuned.name}.log", record)
            for kind, path in (("forecaster", tuned), ("control", Path(f"{tuned}-{shared.name}-no-llm"))):
                few_shot = path / "few_shot.json"
                if few_shot.is_file() and "results" in record["evaluations"][case]:
                    record["evaluations"][case].setdefault("adaptation", {})[kind] = {
                        key: json.loads(few_shot.read_text()).get(key)
                        for key in ("plan", "trainable", "fine_tune_seconds", "train_windows", "steps_run")}
    bench["prompt"] = record
    print(prompt_markdown(record["evaluations"]), flush=True)


def prompt_markdown(evaluations: dict[str, dict]) -> str:
    """One table: per fraction and plan the forecaster's and the control's MAE with their trainable weights and
    fine-tune seconds, and the references fitted on the same windows."""
    lines = ["| fraction | plan | forecaster MAE | trainable | seconds | no-LLM control MAE | trainable | seconds | "
             "STID | HA | last value |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, report in evaluations.items():
        _, fraction, plan = case.split(" ")
        if "results" not in report:
            lines.append(f"| {fraction} | {plan} | failed: {report.get('error', '?')} | | | | | | | | |")
            continue
        results, adaptation = report["results"], report.get("adaptation", {})
        mae = {row: f"{results[row]['MAE']:.3f}" if row in results else "-"
               for row in ("st_forecaster", "st_forecaster_no_llm", "stid", "historical_average", "window_last_value")}
        fig = {(kind, key): str(adaptation.get(kind, {}).get(key, "-"))
               for kind in ("forecaster", "control") for key in ("trainable", "fine_tune_seconds")}
        lines.append(f"| {fraction} | {plan} | {mae['st_forecaster']} | {fig['forecaster', 'trainable']} | "
                     f"{fig['forecaster', 'fine_tune_seconds']} | {mae['st_forecaster_no_llm']} | "
                     f"{fig['control', 'trainable']} | {fig['control', 'fine_tune_seconds']} | {mae['stid']} | "
                     f"{mae['historical_average']} | {mae['window_last_value']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    tta = parts.add_parser("tta", help="zero-shot with and without test-time adaptation and semantic prompts")
    tta.add_argument("--targets", nargs="+", default=list(TARGETS), help="NAME or NAME:CHANNEL, each left out")
    tta.add_argument("--pretrain-from", type=Path, default=ROOT / "outputs" / "bench_transfer",
                     help="reuse the transfer benchmark's pretrained encoders (DIR/TARGET/pretrain) where complete")
    tta.add_argument("--templates", nargs="+", default=list(TEMPLATES), help="prompt templates to train and compare")
    tta.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="test-time adaptation modes")
    tta.add_argument("--tta-steps", type=int, default=3, help="adaptation steps per test batch")
    tta.add_argument("--tta-lr", type=float, default=None, help="the adaptation's learning rate (default: the "
                     "recipe's tta_learning_rate)")
    tta.add_argument("--windows", type=int, default=16, help="test windows scored per evaluation")
    tta.add_argument("--max-nodes", type=int, default=16, help="series scored per window (seeded, the same for all)")
    tta.add_argument("--batch-size", type=int, default=64, help="samples per test batch: what one adaptation step "
                     "sees")
    tta.add_argument("--seed", type=int, default=0)
    prompt = parts.add_parser("prompt", help="PromptST: attribute prompt tuning vs fine-tuning vs from scratch")
    prompt.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.2, 1.0],
                        help="few-shot fractions of CO's train windows")
    prompt.add_argument("--plans", nargs="+", default=list(PLANS), choices=PLANS, help="what adapts")
    prompt.add_argument("--few-shot-steps", type=int, default=100, help="at most this many steps per fine-tune")
    prompt.add_argument("--windows", type=int, default=64, help="test windows scored per evaluation")
    prompt.add_argument("--seed", type=int, default=0)
    for part in (tta, prompt):
        part.add_argument("--sft-steps", type=int, default=None, help="override the recipes' max_steps")
        part.add_argument("--out", default="outputs/bench_adapt", help="folder for the models, logs and JSON")
        part.add_argument("--reuse", action="store_true", help="skip the stages whose outputs are complete")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "bench_adapt.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    bench = {**previous, **provenance(), args.part: previous.get(args.part, {})}
    cli = [sys.executable, "-m", "st_instruct.cli"]
    try:
        (run_tta if args.part == "tta" else run_prompt)(args, out, cli, bench)
    finally:
        result_path.write_text(json.dumps(bench, indent=2, default=str) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
