"""Benchmark: the demo forecaster from scratch vs from an MAE-pretrained encoder vs from a forecast-pretrained one,
same budget, each with its no-LLM control beside it (issue 10).

Usage::

    .venv/bin/python scripts/bench_pretraining.py [--out outputs/bench_pretraining] [--reuse] [--max-steps N]

On the embedded synthetic city (no download), every variant is ``recipes/demo_sft.yaml`` (SmolLM2-135M first 4
layers, LoRA, 200 steps) with only the encoder's start changed:

- ``scratch``: a fresh encoder trained with the rest (``st_encoder_freeze: false``), the head's skip path closed
  (``head_skip_init: closed``), every module at the recipe's ``learning_rate`` (5e-4: ``st_learning_rate``
  ``0.0005``, as the demo trained before issue 10; the demo's 1e-4 is for modules that start pretrained);
- ``mae``: the encoder of ``recipes/demo_pretrain.yaml --pretrain_objective mae`` (UniST / UrbanMind mask
  families; the reconstruction decoder dropped), trained on like ``scratch``, skip path closed -- a reconstruction
  decoder is not a forecast, so there is no readout to start the head from;
- ``forecast``: the encoder of ``recipes/demo_pretrain.yaml`` (forecast objective), frozen, and the head started
  as its readout (``head_skip_init: readout``): the demo itself.

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
# the recipe keys of the variants whose encoder does not start from a forecast readout
TRAINED_ON = {"st_encoder_freeze": False, "head_skip_init": "closed", "st_learning_rate": 0.0005}


def variant_recipe(out: Path, variant: str, encoder: Path | None) -> Path:
    """``RECIPE`` with the variant's start: a recipe file in ``out`` (a flag cannot unset ``st_encoder_init``)."""
    import yaml

    recipe = yaml.safe_load(Path(RECIPE).read_text())
    recipe["st_encoder_init"] = None if encoder is None else str(encoder)
    if variant != "forecast":
        recipe.update(TRAINED_ON)
    path = out / f"recipe-{variant}.yaml"
    path.write_text(f"# st-instruct train {path}   ({RECIPE}, encoder start: {variant})\n"
                    + yaml.safe_dump(recipe, sort_keys=False))
    return path


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
        encoder = None
        if VARIANTS[variant] is not None:
            encoder = out / f"pretrain-{variant}"
            if not stage(f"pretrain-{variant}", [*cli, "pretrain", PRETRAIN_RECIPE, *VARIANTS[variant],
                                                 "--pretrain_output_dir", str(encoder)],
                         out, encoder / "encoder.safetensors", args.reuse, bench):
                return 1
        recipe = variant_recipe(out, variant, encoder)
        model, control = out / f"model-{variant}", out / f"model-{variant}-no-llm"
        for name, folder, extra in ((f"train-{variant}", model, []),
                                    (f"train-{variant}-no-llm", control, ["--control", "no_llm"])):
            if not stage(name, [*cli, "train", str(recipe), *common, *extra, "--output_dir", str(folder)], out,
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
