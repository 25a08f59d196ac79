"""Benchmark: AirGPT (``recipes/airgpt_cot.yaml``) on beijing-air PM2.5 24 h -> 24 h, its ablations and controls, in
one run (issue 12).

Usage::

    .venv/bin/python scripts/bench_airgpt.py [--out outputs/bench_airgpt] [--reuse] [--max-steps N] [--windows N]

Stages, each one CLI command in its own process (as in bench_forecaster.py), every forecaster with the same steps,
batch and learning rates:

1. ``static``: the recipe with ``--st_graph static --rationale_teacher none`` (the distance graph only, direct
   answers);
2. ``static_wind``: ``--rationale_teacher none`` (AirGPT's gated static + wind graphs, direct answers);
3. ``no_llm``: the no-LLM control of ``static_wind`` (same encoder, graphs, projector and head; no backbone);
4. ``cot``: the recipe as it is (static + wind graphs, half the training answers start with the analytic teacher's
   rationale);
5. evaluation on the same ``--windows`` test windows: every forecaster's single pass, the ``cot`` student's forecast
   after a rationale it generates (``--generate-rationales``), beside historical average, seasonal naive (day) and
   STID fitted on the same train split.

Figures: MAE / RMSE / per-horizon MAE of every row, training seconds per step, and the generated rationales' cost.
Writes ``OUT/bench_airgpt.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecaster import evaluate_stage, run_training_stages  # noqa: E402

RECIPE = "recipes/airgpt_cot.yaml"
BASELINES = ["historical_average", "seasonal_naive_day", "stid"]
HORIZONS = ("1", "6", "12", "24")
ROW_NAMES = {"st_forecaster": "forecaster", "st_forecaster_no_llm": "no-LLM control",
             "st_forecaster_generated": "forecaster, generated rationale"}


def table(bench: dict) -> str:
    """Markdown: one row per (model, way of forecasting) with MAE, RMSE and per-horizon MAE."""
    lines = ["| model | MAE | RMSE | " + " | ".join(f"MAE h{h}" for h in HORIZONS) + " | predict s |",
             "|---|---|---|" + "---|" * len(HORIZONS) + "---|"]
    for kind, report in bench.get("evaluations", {}).items():
        if "results" not in report:
            lines.append(f"| {kind}: failed ({report.get('error', '?')}) |" + " |" * (len(HORIZONS) + 3))
            continue
        for model, result in report["results"].items():
            if "MAE" not in result or (model in BASELINES and kind != "static"):
                continue  # the baselines once (every command fits the same ones on the same windows)
            name = f"{kind} {ROW_NAMES[model]}" if model in ROW_NAMES else model
            horizon = result["per_horizon"]
            lines.append(f"| {name} | {result['MAE']:.2f} | {result['RMSE']:.2f} | "
                         + " | ".join(f"{horizon[h]['MAE']:.2f}" for h in HORIZONS)
                         + f" | {result.get('predict_seconds', 0):.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_airgpt", help="folder for the models, logs and JSON")
    parser.add_argument("--reuse", action="store_true", help="skip each training stage whose folder is complete")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's max_steps")
    parser.add_argument("--windows", type=int, default=None, help="test windows scored (default all)")
    parser.add_argument("--max-new-tokens", type=int, default=384, help="generated rationale budget per sample")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "st_instruct.cli"]
    result_path = out / "bench_airgpt.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    bench: dict = {"recipe": RECIPE, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    dirs = {kind: out / kind for kind in ("static", "static_wind", "no_llm", "cot")}
    common = ["--report_to", "none", "--disable_tqdm", "true"]
    common += ["--max_steps", str(args.max_steps)] if args.max_steps is not None else []
    direct = ["--rationale_teacher", "none"]
    stages = {
        "train_static": ([*cli, "train", RECIPE, *common, *direct, "--st_graph", "static", "--output_dir",
                          str(dirs["static"])], dirs["static"], "trainer_state.json"),
        "train_static_wind": ([*cli, "train", RECIPE, *common, *direct, "--output_dir", str(dirs["static_wind"])],
                              dirs["static_wind"], "trainer_state.json"),
        "train_no_llm": ([*cli, "train", RECIPE, *common, *direct, "--control", "no_llm", "--output_dir",
                          str(dirs["no_llm"])], dirs["no_llm"], "trainer_state.json"),
        "train_cot": ([*cli, "train", RECIPE, *common, "--output_dir", str(dirs["cot"])], dirs["cot"],
                      "trainer_state.json"),
    }
    if not run_training_stages(stages, args.reuse, previous, out, bench, result_path):
        return 1
    bench["evaluations"] = {}
    windows = ["--max-windows", str(args.windows)] if args.windows else []
    for kind in ("static", "static_wind", "cot"):
        json_path = out / f"eval-{kind}.json"
        command = [*cli, "evaluate", "--model", str(dirs[kind]), "--dataset", "beijing-air", "--models", *BASELINES,
                   *windows, "--json", str(json_path), "--quiet", "--output", str(out / f"eval-{kind}")]
        if kind == "static_wind":
            command += ["--controls", str(dirs["no_llm"])]
        if kind == "cot":
            command += ["--generate-rationales", "--max-new-tokens", str(args.max_new_tokens)]
        evaluate_stage(kind, command, json_path, out / f"eval-{kind}.log", bench)
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(table(bench))
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
