"""Benchmark: every baseline on the real datasets, each run as the user would run it.

Usage::

    .venv/bin/python scripts/bench_baselines.py [--out outputs/bench_baselines.json] [--only nyc-taxi-2019 ...]

Each case is one complete ``st-instruct baselines`` command in its own process (start-up, loading, windowing,
fitting STID and the rest, scoring), so the wall time is what a user waits and the peak memory (the child's
maximum resident set size from ``os.wait4``) belongs to that case alone. Writes one JSON with every case's
metrics, wall time and peak memory, and prints a markdown table for the README. Cases whose data is absent
are reported as skipped, not silently dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "nyc-taxi-2019": ["--dataset", "nyc-taxi", "--start", "2019-01-01", "--end", "2020-01-01"],
    "nyc-bike-2019": ["--dataset", "nyc-bike", "--start", "2019-01-01", "--end", "2020-01-01"],
    "los-loop": ["--dataset", "los-loop"],
    "beijing-air-pm25": ["--dataset", "beijing-air", "--channels", "PM2.5", "--history", "24", "--horizon", "24"],
    "synthetic": ["--dataset", "synthetic"],
}


def run_case(args: list[str], json_path: Path) -> dict:
    """Run one ``st-instruct baselines`` command; return its report plus wall time and peak RSS."""
    command = [sys.executable, "-m", "st_instruct.cli", "baselines", *args, "--json", str(json_path), "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"command": " ".join(command), "error": stderr.strip().splitlines()[-1] if stderr.strip() else "?"}
    report = json.loads(json_path.read_text())
    report["command"] = "st-instruct baselines " + " ".join(args)
    report["bench_wall_seconds"] = round(wall, 2)
    report["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports KiB
    report["stdout"] = stdout
    return report


def markdown(cases: dict[str, dict]) -> str:
    models = ["historical_average", "last_value", "seasonal_naive_day", "seasonal_naive_week", "ridge", "stid"]
    lines = ["| dataset | model | MAE | RMSE | MAPE % | WAPE % |", "|---|---|---|---|---|---|"]
    for case, report in cases.items():
        if "results" not in report:
            lines.append(f"| {case} | skipped: {report.get('error', '?')} | | | | |")
            continue
        for model in models:
            r = report["results"].get(model)
            if r is None:
                reason = report.get("skipped", {}).get(model, "not run")
                lines.append(f"| {case} | {model} (skipped: {reason}) | | | | |")
                continue
            cells = ["n/a" if r[m] is None else f"{r[m]:.2f}" for m in ("MAE", "RMSE", "MAPE", "WAPE")]
            lines.append(f"| {case} | {model} | " + " | ".join(cells) + " |")
    lines += ["", "| dataset | windows (train/val/test) | wall time (s) | peak RSS (MiB) |", "|---|---|---|---|"]
    for case, report in cases.items():
        if "results" in report:
            w = report["windows"]
            lines.append(f"| {case} | {w['train']}/{w['validation']}/{w['test']} | {report['bench_wall_seconds']} "
                         f"| {report['peak_rss_mib']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_baselines.json")
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=None)
    args = parser.parse_args()
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (case, case_args) in enumerate(CASES.items()):
            if args.only and case not in args.only:
                continue
            print(f"running {case} ...", flush=True)
            cases[case] = run_case(case_args, Path(tmp) / f"case{i}.json")
            print(cases[case].get("stdout") or cases[case].get("error"), flush=True)
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "cases": {k: {key: v for key, v in r.items() if key != "stdout"} for k, r in cases.items()}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(cases))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
