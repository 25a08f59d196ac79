"""Benchmark: ST-VLM (``recipes/stvlm_sft.yaml``) against the text-only forecaster it extends, trained on nyc-taxi 2019
and adapted to nyc-bike 2019 with 5 % and 10 % of its training windows (issue 11), in one run.

Usage::

    .venv/bin/python scripts/bench_stvlm.py [--out outputs/bench_stvlm] [--reuse] [--few-shot 0.05 0.1]
        [--windows 300] [--max-steps N]

Stages, each one CLI command in its own process (wall time and peak memory its own, as in bench_forecaster.py):

0. ``st-instruct pretrain recipes/stlink_pretrain.yaml``: the ST encoder + readout both forecasters start from.
1. ``st-instruct train recipes/stvlm_sft.yaml``: the embedded VLM (SmolLM2-135M first 6 layers inside LLaVA, a small
   SigLIP-style tower trained here, 112 x 112 map images of 4 history steps, fusion gate starting at 0).
2. ``--control no_llm`` of the same recipe: the same encoder, projector and head, no backbone (and so no image).
3. ``st-instruct train recipes/stlink_sft.yaml --se_attention false --mrffn false``: the text-only forecaster of
   the same language model, encoder, head, steps and learning rates (the VLM recipe is this plus the image path).
4. In-domain (nyc-taxi 2019 test, ``--windows`` windows) and few-shot on nyc-bike 2019 for every fraction: the VLM
   and its no-LLM control each fine-tuned on the first fraction of the train split (same steps), then the text
   forecaster the same way, each beside historical average and STID fitted on the same windows; scored on the
   same ``--windows`` test windows (sampled alike for every command).

Figures: MAE / RMSE / per-horizon MAE of every row, the training seconds per step of the VLM vs the text forecaster
(the trainer's ``train_runtime`` / steps) and their ratio. Writes ``OUT/bench_stvlm.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecaster import (  # noqa: E402
    BASE_FORECASTER,
    BIKE_2019,
    PRETRAIN_RECIPE,
    evaluate_stage,
    run_training_stages,
)

VLM_RECIPE = "recipes/stvlm_sft.yaml"
TEXT_RECIPE = "recipes/stlink_sft.yaml"
TAXI_2019 = ["--dataset", "nyc-taxi", "--start", "2019-01-01", "--end", "2020-01-01"]
ROW_NAMES = {"st_forecaster": "forecaster", "st_forecaster_no_llm": "no-LLM control"}


def table(bench: dict) -> str:
    """Markdown: one row per (evaluation, model) with MAE, RMSE, per-horizon MAE at 1 / 6 / 12 and MAE / STID."""
    lines = ["| evaluation | model | MAE | RMSE | MAE h1 | MAE h6 | MAE h12 | MAE / STID |",
             "|---|---|---|---|---|---|---|---|"]
    for case, runs in bench.get("evaluations", {}).items():
        for kind, report in runs.items():
            if "results" not in report:
                lines.append(f"| {case} | {kind}: failed ({report.get('error', '?')}) | | | | | | |")
                continue
            stid = report["results"].get("stid", {}).get("MAE")
            for model, result in report["results"].items():
                if "MAE" not in result or (kind == "text" and model in ("historical_average", "stid")):
                    continue  # the baselines once, from the VLM's command (the text command fits the same ones)
                name = f"{kind} {ROW_NAMES[model]}" if model in ROW_NAMES else model
                horizon = result["per_horizon"]
                ratio = f"{result['MAE'] / stid:.3f}" if stid else ""
                lines.append(f"| {case} | {name} | {result['MAE']:.2f} | {result['RMSE']:.2f} | "
                             f"{horizon['1']['MAE']:.2f} | {horizon['6']['MAE']:.2f} | {horizon['12']['MAE']:.2f} | "
                             f"{ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_stvlm", help="folder for the models, logs and JSON")
    parser.add_argument("--reuse", action="store_true", help="skip each training stage whose folder is complete")
    parser.add_argument("--few-shot", nargs="*", type=float, default=[0.05, 0.1], metavar="F")
    parser.add_argument("--windows", type=int, default=300, help="test windows scored per evaluation")
    parser.add_argument("--max-steps", type=int, default=None, help="override both recipes' max_steps (a quick look)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "st_instruct.cli"]
    result_path = out / "bench_stvlm.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    bench: dict = {"vlm_recipe": VLM_RECIPE, "text_recipe": TEXT_RECIPE, "pretrain_recipe": PRETRAIN_RECIPE,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    pretrained = out / "pretrain"
    dirs = {"vlm": out / "stvlm", "no_llm": out / "stvlm-no-llm", "text": out / "text"}
    common = ["--st_encoder_init", str(pretrained), "--report_to", "none", "--disable_tqdm", "true"]
    common += ["--max_steps", str(args.max_steps)] if args.max_steps is not None else []
    stages = {
        "pretrain": ([*cli, "pretrain", PRETRAIN_RECIPE, "--pretrain_output_dir", str(pretrained)], pretrained,
                     "encoder.safetensors"),
        "train_vlm": ([*cli, "train", VLM_RECIPE, *common, "--output_dir", str(dirs["vlm"])], dirs["vlm"],
                      "trainer_state.json"),
        "train_no_llm": ([*cli, "train", VLM_RECIPE, *common, "--control", "no_llm", "--output_dir",
                          str(dirs["no_llm"])], dirs["no_llm"], "trainer_state.json"),
        "train_text": ([*cli, "train", TEXT_RECIPE, *BASE_FORECASTER, *common, "--output_dir", str(dirs["text"])],
                       dirs["text"], "trainer_state.json"),
    }
    if not run_training_stages(stages, args.reuse, previous, out, bench, result_path):
        return 1
    if "seconds_per_step" in bench.get("train_vlm", {}) and "seconds_per_step" in bench.get("train_text", {}):
        vlm, text = bench["train_vlm"]["seconds_per_step"], bench["train_text"]["seconds_per_step"]
        bench["step_time"] = {"vlm_seconds": vlm, "text_seconds": text, "vlm_over_text": round(vlm / text, 3)}
        print(f"training step: VLM {vlm:.2f} s, text {text:.2f} s ({vlm / text:.2f} x)")

    bench["evaluations"] = {}
    cases = {"nyc-taxi-2019 (in-domain)": (TAXI_2019, None)}
    cases.update({f"nyc-bike-2019 (few-shot {f:g})": (BIKE_2019, f) for f in args.few_shot})
    for case, (dataset, fraction) in cases.items():
        runs = bench["evaluations"][case] = {}
        for kind in ("vlm", "text"):
            tag = f"{'in-domain' if fraction is None else f'few-shot-{fraction:g}'}-{kind}"
            json_path = out / f"eval-{tag}.json"
            command = [*cli, "evaluate", "--model", str(dirs[kind]), *dataset, "--models", "historical_average",
                       "stid", "--max-windows", str(args.windows), "--json", str(json_path), "--quiet", "--output",
                       str(out / f"eval-{tag}")]
            if fraction is not None:
                command += ["--few-shot", str(fraction), "--few-shot-output", str(out / f"model-{tag}")]
            if kind == "vlm":  # the no-LLM control of the VLM recipe, fine-tuned alike for few-shot
                command += ["--controls", str(dirs["no_llm"])]
            evaluate_stage(kind, command, json_path, out / f"eval-{tag}.log", {"evaluations": runs})
            result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(table(bench))
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
