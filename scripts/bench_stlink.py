"""Benchmark: ST-LINK ablation -- the plain forecaster vs +SE-Attention vs +MRFFN vs both, beside STID.

Usage::

    .venv/bin/python scripts/bench_stlink.py [--out outputs/bench_stlink] [--steps 300] [--windows 300]
        [--seeds 0 1] [--pretrained outputs/bench_forecaster/pretrain]
    .venv/bin/python scripts/bench_stlink.py --recipe recipes/demo_sft.yaml --pretrain-recipe \
        recipes/demo_pretrain.yaml --dataset synthetic --skip-zero-shot     # the same ablation on the demo's city

One run, one budget: each variant is ``recipes/stlink_sft.yaml`` (nyc-taxi 2019, 12 -> 12, SmolLM2-135M first 6
layers, LoRA) on the converging path -- the encoder and the head's skip path start from the forecast-pretrained
encoder and readout (``--pretrained``, else ``recipes/stlink_pretrain.yaml`` is pretrained into ``OUT/pretrain``
first) -- with only the ST-LINK switches changed, trained for the same ``--steps`` optimizer steps on the same
samples, once per seed of ``--seeds``, then ``st-instruct evaluate`` on the same ``--windows`` test windows beside
STID and the historical average (fitted on the full train split in the same command) and the no-LLM control (the
same start and budget, trained once per seed). Reported: MAE / RMSE / MAPE averaged and per horizon (horizon 12 is
where MRFFN is claimed to help) for every seed, the mean over seeds and the spread (max - min) of each variant,
the training seconds per step, and zero-shot of the full ST-LINK model (first seed) on nyc-bike and los-loop (one
speed channel: ``--broadcast-channels``).

Overhead: the training step time of the full ST-LINK model over the plain forecaster's, measured side by side in
this process -- both models built from the recipe, alternating steps (forward, backward, AdamW) on the same
batches, median of ``--overhead-steps`` each -- so machine noise hits both alike.

Writes ``OUT/bench_stlink.json`` and prints markdown tables. Each command runs in its own process (``run`` from
``bench_forecaster.py``: wall time and peak RSS per stage); the in-process overhead test runs after them, since a
child forked from a process that has grown inherits its peak-RSS mark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_forecaster import BASE_FORECASTER, PRETRAIN_RECIPE, RECIPE, run, train_figures

VARIANTS = {
    "plain": BASE_FORECASTER,
    "+SE-Attention": ["--se_attention", "true", "--mrffn", "false"],
    "+MRFFN": ["--se_attention", "false", "--mrffn", "true"],
    "ST-LINK (both)": ["--se_attention", "true", "--mrffn", "true"],
}
CONTROL = "no-LLM control"  # the plain forecaster's encoder and head without the backbone
TAXI = ["--dataset", "nyc-taxi", "--start", "2019-01-01", "--end", "2020-01-01"]
ZERO_SHOT = {
    "nyc-bike-2019": ["--dataset", "nyc-bike", "--start", "2019-01-01", "--end", "2020-01-01"],
    "los-loop": ["--dataset", "los-loop", "--broadcast-channels"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def evaluate(cli: list[str], model_dir: Path, case_args: list[str], windows: int, out: Path, name: str,
             controls: list[Path] | None = None) -> dict:
    json_path = out / f"{name}.json"
    command = [*cli, "evaluate", "--model", str(model_dir), *case_args, "--max-windows", str(windows),
               "--models", "stid", "historical_average", "--json", str(json_path), "--quiet",
               "--output", str(out / name)]
    command += ["--controls", *map(str, controls)] if controls else []
    status = run(command, out / f"{name}.log")
    if status["exit_code"] != 0:
        print(f"  {name} failed: {status['error']}")
        return status
    report = json.loads(json_path.read_text())
    report.update(bench_wall_seconds=status["wall_seconds"], peak_rss_mib=status["peak_rss_mib"])
    return report


def overhead(steps: int, pretrained: Path, recipe: str) -> dict:
    """Median training-step seconds of the plain and the full ST-LINK forecaster, alternating on the same batches."""
    import torch

    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.samples.collator import STDataCollator
    from st_instruct.tasks import get_task
    from st_instruct.training.run import build_forecaster
    from st_instruct.training.trainer import forecaster_loss

    models = {}
    for name in ("plain", "ST-LINK (both)"):
        data_config, model_config, args = parse_recipe(train_dataclasses(), [
            recipe, *VARIANTS[name], "--st_encoder_init", str(pretrained), "--report_to", "none"])
        model, tokenizer, dataset, _ = build_forecaster(data_config, model_config, args.seed)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        models[name] = (model, optimizer, model_config)
    collate = STDataCollator(tokenizer)
    train = dataset["train"]
    batches = [collate([train[2 * i], train[2 * i + 1]]) for i in range(steps + 2)]
    times: dict[str, list[float]] = {name: [] for name in models}
    for i, batch in enumerate(batches):
        for name, (model, optimizer, model_config) in models.items():
            tic = time.perf_counter()
            loss = forecaster_loss(model, batch, get_task(data_config.task), model_config.loss_reg_weight,
                                   model_config.loss_lm_weight)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:  # the first two steps warm up allocations and thread pools
                times[name].append(time.perf_counter() - tic)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"steps": steps, "median_step_seconds": medians,
            "ratio_full_over_plain": medians["ST-LINK (both)"] / medians["plain"]}


def table(rows: dict[str, dict], entries: list[tuple[str, str, str]]) -> str:
    """Markdown rows ``(label, case, model)``: ``rows[case]["results"][model]`` averaged and per horizon."""
    lines = ["| model | MAE | RMSE | MAPE % | MAE h1 | MAE h6 | MAE h12 | RMSE h12 |", "|---" * 8 + "|"]
    for label, case, model in entries:
        result = rows.get(case, {}).get("results", {}).get(model)
        if result is None or "MAE" not in result:
            lines.append(f"| {label} | not run | | | | | | |")
            continue
        per, last = result["per_horizon"], str(len(result["per_horizon"]))
        mape = "n/a" if result["MAPE"] is None else f"{result['MAPE']:.1f}"  # metrics give MAPE in %
        lines.append(f"| {label} | {result['MAE']:.2f} | {result['RMSE']:.2f} | {mape} | "
                     f"{per['1']['MAE']:.2f} | {per['6']['MAE']:.2f} | {per[last]['MAE']:.2f} | "
                     f"{per[last]['RMSE']:.2f} |")
    return "\n".join(lines)


def spread_rows(bench: dict, names: list[str]) -> list[str]:
    """Markdown rows: each variant's MAE and horizon-12 MAE, mean over seeds and spread (max - min)."""
    lines = ["| variant | seeds | MAE mean | MAE spread | MAE h12 mean | MAE h12 spread |", "|---" * 6 + "|"]
    for name in names:
        maes, lasts = [], []
        for entry in bench["variants"].get(name, {}).values():
            result = entry.get("in_domain", {}).get("results", {}).get("st_forecaster")
            if result and "MAE" in result:
                maes.append(result["MAE"])
                lasts.append(result["per_horizon"][str(len(result["per_horizon"]))]["MAE"])
        if maes:
            lines.append(f"| {name} | {len(maes)} | {statistics.mean(maes):.2f} | {max(maes) - min(maes):.2f} | "
                         f"{statistics.mean(lasts):.2f} | {max(lasts) - min(lasts):.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_stlink")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per variant (same for all)")
    parser.add_argument("--windows", type=int, default=300, help="test windows per evaluation (same for all)")
    parser.add_argument("--overhead-steps", type=int, default=20, help="timed steps per model in the overhead test")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-zero-shot", action="store_true")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds of every variant")
    parser.add_argument("--pretrained", default=None,
                        help="forecast-pretrained encoder folder (default: pretrain recipes/stlink_pretrain.yaml "
                        "into OUT/pretrain)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--recipe", default=RECIPE, help=f"forecaster recipe (default {RECIPE})")
    parser.add_argument("--pretrain-recipe", default=PRETRAIN_RECIPE,
                        help=f"its encoder's pretraining recipe (default {PRETRAIN_RECIPE})")
    parser.add_argument("--dataset", default="nyc-taxi",
                        help="the recipe's dataset, for the in-domain evaluation (default nyc-taxi: its 2019 range)")
    args = parser.parse_args()
    recipe, in_domain = args.recipe, TAXI if args.dataset == "nyc-taxi" else ["--dataset", args.dataset]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "st_instruct.cli"]
    bench: dict = {"recipe": recipe, "pretrain_recipe": args.pretrain_recipe, "dataset": args.dataset,
                   "steps": args.steps, "windows": args.windows, "seeds": args.seeds,
                   "variants": {}}
    result_path = out / "bench_stlink.json"
    pretrained = Path(args.pretrained) if args.pretrained else out / "pretrain"
    if args.pretrained is None:
        print(f"pretraining {args.pretrain_recipe}", flush=True)
        bench["pretrain"] = run([*cli, "pretrain", args.pretrain_recipe, "--pretrain_output_dir", str(pretrained),
                                 "--overwrite"], out / "pretrain.log")
        if bench["pretrain"]["exit_code"] != 0:
            print(f"  failed: {bench['pretrain']['error']}")
            return 1
    bench["pretrained"] = str(pretrained)

    for seed in args.seeds:
        control_dir = out / f"{slug(CONTROL)}-seed{seed}"
        folders = {name: out / f"{slug(name)}-seed{seed}" for name in args.variants}
        for name, model_dir in [*folders.items(), (CONTROL, control_dir)]:
            flags = [*BASE_FORECASTER, "--control", "no_llm"] if name == CONTROL else VARIANTS[name]
            command = [*cli, "train", recipe, *flags, "--st_encoder_init", str(pretrained), "--seed", str(seed),
                       "--max_steps", str(args.steps), "--output_dir", str(model_dir), "--overwrite",
                       "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"]
            print(f"training {name}, seed {seed}", flush=True)
            status = run(command, out / f"train-{model_dir.name}.log")
            if status["exit_code"] == 0:
                status.update(train_figures(model_dir))
                print(f"  {status['seconds_per_step']:.2f} s/step, last loss {status['last_logged_loss']}", flush=True)
            else:
                print(f"  failed: {status['error']}")
            bench["variants"].setdefault(name, {})[f"seed {seed}"] = {"train": status}
            result_path.write_text(json.dumps(bench, indent=2) + "\n")
        for name, model_dir in folders.items():
            if bench["variants"][name][f"seed {seed}"]["train"]["exit_code"] != 0:
                continue
            # the control is scored in the plain variant's evaluation: the same windows, the same baselines
            control_ok = bench["variants"][CONTROL][f"seed {seed}"]["train"]["exit_code"] == 0
            controls = [control_dir] if name == "plain" and control_ok else None
            report = evaluate(cli, model_dir, in_domain, args.windows, out, f"eval-{model_dir.name}", controls)
            bench["variants"][name][f"seed {seed}"]["in_domain"] = report
            control = report.get("results", {}).get("st_forecaster_no_llm")
            if control:
                bench["variants"][CONTROL][f"seed {seed}"]["in_domain"] = {"results": {"st_forecaster": control}}
            result_path.write_text(json.dumps(bench, indent=2) + "\n")

    first = args.seeds[0]
    full = out / f"{slug('ST-LINK (both)')}-seed{first}"
    bench["zero_shot"] = {}
    if (full / "st_modules.safetensors").is_file() and not args.skip_zero_shot:
        for case, case_args in ZERO_SHOT.items():
            print(f"zero-shot ST-LINK on {case}", flush=True)
            bench["zero_shot"][case] = evaluate(cli, full, case_args, args.windows, out, f"zero-shot-{case}")
            result_path.write_text(json.dumps(bench, indent=2) + "\n")

    # last: a child forked after this process loaded two models would inherit its peak-RSS mark
    if not args.skip_overhead:
        print("overhead: alternating training steps of the plain and the full ST-LINK forecaster", flush=True)
        bench["overhead"] = overhead(args.overhead_steps, pretrained, recipe)
        print(json.dumps(bench["overhead"], indent=2), flush=True)
        result_path.write_text(json.dumps(bench, indent=2) + "\n")

    names = [*args.variants, CONTROL]
    for seed in args.seeds:
        rows = {name: bench["variants"].get(name, {}).get(f"seed {seed}", {}).get("in_domain", {}) for name in names}
        entries = [(name, name, "st_forecaster") for name in names]
        base = args.variants[0]
        entries += [("STID", base, "stid"), ("historical average", base, "historical_average")]
        print(f"\n{' '.join(in_domain[1:])}, {args.steps} steps each, seed {seed}, {args.windows} test windows\n")
        print(table(rows, entries))
    print("\nover seeds " + ", ".join(map(str, args.seeds)) + "\n")
    print("\n".join(spread_rows(bench, names)))
    for case, report in bench["zero_shot"].items():
        print(f"\nzero-shot ST-LINK on {case}\n")
        print(table({case: report}, [("ST-LINK", case, "st_forecaster"), ("STID", case, "stid"),
                                     ("historical average", case, "historical_average")]))
    if "overhead" in bench:
        print(f"\ntraining step time, full ST-LINK / plain: {bench['overhead']['ratio_full_over_plain']:.3f}")
    result_path.write_text(json.dumps(bench, indent=2) + "\n")
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
