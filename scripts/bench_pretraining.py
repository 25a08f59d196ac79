"""Benchmark: the demo forecaster from scratch vs from an MAE-pretrained encoder vs from a forecast-pretrained one,
same budget, each with its no-LLM control beside it (issue 10).

Usage::

    .venv/bin/python scripts/bench_pretraining.py [--out outputs/bench_pretraining] [--reuse] [--max-steps N]

On the embedded synthetic city (no download), every variant is ``recipes/demo_sft.yaml`` (SmolLM2-135M first 4
layers, LoRA, 200 steps) with only the encoder's start changed:

- ``scratch``: a fresh encoder, the head's skip path closed (``head_skip_init: closed``);
- ``mae``: the encoder of ``recipes/demo_pretrain.yaml --pretrain_objective mae`` (UniST / UrbanMind mask
  families, reconstruction decoder dropped), skip path closed -- a reconstruction decoder is not a forecast, so
  there is no readout to start the head from;
- ``forecast``: the encoder of ``recipes/demo_pretrain.yaml`` (forecast objective) and the head started as its
  readout (``head_skip_init: readout``): the demo itself.

Pretraining runs the same number of steps for both objectives. Each model and its no-LLM control
(``--control no_llm``, the same start and budget) are scored by one ``st-instruct evaluate`` on every test window
beside STID and the historical average fitted in that command. Writes ``OUT/bench_pretraining.json`` and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from bench_forecaster import run, train_figures

PRETRAIN_RECIPE = "recipes/demo_pretrain.yaml"
RECIPE = "recipes/demo_sft.yaml"
VARIANTS = {
    "scratch": None,
    "mae": ["--pretrain_objective", "mae"],
    "forecast": ["--pretrain_objective", "forecast"],
}


def stage(name: str, command: list[str], out: Path, marker: Path, reuse: bool, bench: dict) -> bool:
    """Run ``command`` into ``bench[name]`` unless ``reuse`` and ``marker`` exists; False when it failed."""
    if reuse and marker.is_file():
        print(f"{name}: reusing {marker.parent}")
        return True
    print(f"{name}:", " ".join(command[3:]), flush=True)
    bench[name] = run([*command, "--overwrite"], out / f"{name}.log")
    if bench[name]["exit_code"] != 0:
        print(f"{name} failed: {bench[name]['error']}")
        return False
    if marker.name == "trainer_state.json":
        bench[name].update(train_figures(marker.parent))
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_pretraining")
    parser.add_argument("--reuse", action="store_true", help="skip stages whose folder is complete")
    parser.add_argument("--max-steps", type=int, default=None, help="override the forecaster's max_steps")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "st_instruct.cli"]
    result_path = out / "bench_pretraining.json"
    bench: dict = json.loads(result_path.read_text()) if args.reuse and result_path.is_file() else {}
    bench.update(recipe=RECIPE, pretrain_recipe=PRETRAIN_RECIPE,
                 machine={"cpus": os.cpu_count(), "platform": platform.platform()})
    bench.setdefault("results", {})
    common = ["--report_to", "none", "--disable_tqdm", "true"]
    if args.max_steps is not None:
        common += ["--max_steps", str(args.max_steps)]
    for variant in args.variants:
        flags = list(common)
        if VARIANTS[variant] is not None:
            encoder = out / f"pretrain-{variant}"
            if not stage(f"pretrain-{variant}", [*cli, "pretrain", PRETRAIN_RECIPE, *VARIANTS[variant],
                                                 "--pretrain_output_dir", str(encoder)],
                         out, encoder / "encoder.safetensors", args.reuse, bench):
                return 1
            flags += ["--st_encoder_init", str(encoder)]
        flags += ["--head_skip_init", "readout" if variant == "forecast" else "closed"]
        model, control = out / f"model-{variant}", out / f"model-{variant}-no-llm"
        for name, folder, extra in ((f"train-{variant}", model, []),
                                    (f"train-{variant}-no-llm", control, ["--control", "no_llm"])):
            if not stage(name, [*cli, "train", RECIPE, *flags, *extra, "--output_dir", str(folder)], out,
                         folder / "trainer_state.json", args.reuse, bench):
                return 1
        json_path = out / f"eval-{variant}.json"
        status = run([*cli, "evaluate", "--model", str(model), "--dataset", "synthetic", "--controls", str(control),
                      "--models", "stid", "historical_average", "--json", str(json_path), "--quiet", "--output",
                      str(out / f"eval-{variant}")], out / f"eval-{variant}.log")
        if status["exit_code"] != 0:
            print(f"eval-{variant} failed: {status['error']}")
            return 1
        bench["results"][variant] = json.loads(json_path.read_text())["results"]
        result_path.write_text(json.dumps(bench, indent=2) + "\n")
    lines = ["| encoder start | forecaster MAE | no-LLM control MAE | STID MAE | historical average MAE |",
             "|---|---|---|---|---|"]
    for variant, results in bench["results"].items():
        row = [results.get(name, {}).get("MAE") for name in
               ("st_forecaster", "st_forecaster_no_llm", "stid", "historical_average")]
        lines.append(f"| {variant} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in row) + " |")
    print("\n".join(lines))
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
