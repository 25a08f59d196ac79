"""Benchmark: ST-LINK ablation -- the plain forecaster vs +SE-Attention vs +MRFFN vs both, beside STID.

Usage::

    .venv/bin/python scripts/bench_stlink.py [--out outputs/bench_stlink] [--steps 300] [--windows 300]

One run, one budget: each variant is ``recipes/stlink_sft.yaml`` (nyc-taxi 2019, 12 -> 12, SmolLM2-135M first 6
layers, LoRA) with only the ST-LINK switches changed, trained for the same ``--steps`` optimizer steps on the same
samples (same seed), then ``st-instruct evaluate`` on the same ``--windows`` test windows beside STID and the
historical average (fitted on the full train split in the same command). Reported: MAE / RMSE / MAPE averaged and
per horizon (horizon 12 is where MRFFN is claimed to help), the training seconds per step, and zero-shot of the
full ST-LINK model on nyc-bike and los-loop (one speed channel: ``--broadcast-channels``).

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

from bench_forecaster import BASE_FORECASTER, RECIPE, run, train_figures

VARIANTS = {
    "plain": BASE_FORECASTER,
    "+SE-Attention": ["--se_attention", "true", "--mrffn", "false"],
    "+MRFFN": ["--se_attention", "false", "--mrffn", "true"],
    "ST-LINK (both)": ["--se_attention", "true", "--mrffn", "true"],
}
TAXI = ["--dataset", "nyc-taxi", "--start", "2019-01-01", "--end", "2020-01-01"]
ZERO_SHOT = {
    "nyc-bike-2019": ["--dataset", "nyc-bike", "--start", "2019-01-01", "--end", "2020-01-01"],
    "los-loop": ["--dataset", "los-loop", "--broadcast-channels"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def evaluate(cli: list[str], model_dir: Path, case_args: list[str], windows: int, out: Path, name: str) -> dict:
    json_path = out / f"{name}.json"
    command = [*cli, "evaluate", "--model", str(model_dir), *case_args, "--max-windows", str(windows),
               "--models", "stid", "historical_average", "--json", str(json_path), "--quiet",
               "--output", str(out / name)]
    status = run(command, out / f"{name}.log")
    if status["exit_code"] != 0:
        print(f"  {name} failed: {status['error']}")
        return status
    report = json.loads(json_path.read_text())
    report.update(bench_wall_seconds=status["wall_seconds"], peak_rss_mib=status["peak_rss_mib"])
    return report


def overhead(steps: int) -> dict:
    """Median training-step seconds of the plain and the full ST-LINK forecaster, alternating on the same batches."""
    import torch

    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.training.collator import STDataCollator
    from st_instruct.training.run import build_forecaster
    from st_instruct.training.trainer import forecaster_loss

    models = {}
    for name in ("plain", "ST-LINK (both)"):
        data_config, model_config, args = parse_recipe(train_dataclasses(), [RECIPE, *VARIANTS[name],
                                                                             "--report_to", "none"])
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
            loss = forecaster_loss(model, batch, model_config.loss_reg_weight, model_config.loss_lm_weight)[0]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_stlink")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per variant (same for all)")
    parser.add_argument("--windows", type=int, default=300, help="test windows per evaluation (same for all)")
    parser.add_argument("--overhead-steps", type=int, default=20, help="timed steps per model in the overhead test")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-zero-shot", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every variant (run-to-run spread)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "st_instruct.cli"]
    bench: dict = {"recipe": RECIPE, "steps": args.steps, "windows": args.windows, "seed": args.seed, "variants": {}}
    result_path = out / "bench_stlink.json"

    for name in args.variants:
        model_dir = out / slug(name)
        command = [*cli, "train", RECIPE, *VARIANTS[name], "--seed", str(args.seed), "--max_steps", str(args.steps),
                   "--output_dir", str(model_dir),
                   "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"]
        print(f"training {name}", flush=True)
        status = run(command, out / f"train-{slug(name)}.log")
        entry: dict = {"train": status}
        if status["exit_code"] == 0:
            status.update(train_figures(model_dir))
            print(f"  {status['seconds_per_step']:.2f} s/step, last loss {status['last_logged_loss']}", flush=True)
            entry["nyc-taxi"] = evaluate(cli, model_dir, TAXI, args.windows, out, f"eval-{slug(name)}-nyc-taxi")
        else:
            print(f"  failed: {status['error']}")
        bench["variants"][name] = entry
        result_path.write_text(json.dumps(bench, indent=2) + "\n")

    full = out / slug("ST-LINK (both)")
    bench["zero_shot"] = {}
    if (full / "st_modules.safetensors").is_file() and not args.skip_zero_shot:
        for case, case_args in ZERO_SHOT.items():
            print(f"zero-shot ST-LINK on {case}", flush=True)
            bench["zero_shot"][case] = evaluate(cli, full, case_args, args.windows, out, f"zero-shot-{case}")
            result_path.write_text(json.dumps(bench, indent=2) + "\n")

    # last: a child forked after this process loaded two models would inherit its peak-RSS mark
    if not args.skip_overhead:
        print("overhead: alternating training steps of the plain and the full ST-LINK forecaster", flush=True)
        bench["overhead"] = overhead(args.overhead_steps)
        print(json.dumps(bench["overhead"], indent=2), flush=True)
        result_path.write_text(json.dumps(bench, indent=2) + "\n")

    rows = {name: entry.get("nyc-taxi", {}) for name, entry in bench["variants"].items()}
    entries = [(name, name, "st_forecaster") for name in args.variants]
    first = args.variants[0]
    entries += [("STID", first, "stid"), ("historical average", first, "historical_average")]
    print(f"\nnyc-taxi 2019, 12 -> 12, {args.steps} steps each, {args.windows} test windows\n")
    print(table(rows, entries))
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
