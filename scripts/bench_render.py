"""Benchmark: images per second of the ST-VLM renderer (issue 11: at least 300 per second at 224 x 224 on 2 cores).

Usage::

    .venv/bin/python scripts/bench_render.py [--images 300] [--size 224] [--json outputs/bench_render.json]

For every dataset at hand (the embedded synthetic city always; nyc-taxi, nycbike1-grid and los-loop from
``../shared/data`` when present, else reported as skipped) and both image kinds, one :class:`WindowRenderer` is
built (layout, edges and value range: timed apart, as ``setup_seconds``), then ``--images`` consecutive test windows
are rendered: ``render`` is the image alone (what a collator hands to a processor), ``render + PNG`` adds the PNG
encoding (what a cache stores). One process, one thread (Pillow's drawing is single-threaded), the window histories
sliced inside the timed loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from st_instruct.data.registry import DatasetNotFoundError
from st_instruct.protocols.baselines import prepare_windows
from st_instruct.samples.render import IMAGE_KINDS, WindowRenderer, png_bytes

DATASETS = {"synthetic": {}, "nyc-taxi": {"start": "2019-01-01", "end": "2020-01-01"}, "nycbike1-grid": {},
            "los-loop": {}}
TARGET_PER_SECOND = 300


def rate(renderer: WindowRenderer, count: int, encode: bool) -> float:
    windows = min(count, renderer.windows.num_windows("test"))
    started = time.perf_counter()
    for index in range(count):
        image = renderer.render(renderer.window_history("test", index % windows))
        if encode:
            png_bytes(image)
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per dataset and kind")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json", default="outputs/bench_render.json")
    args = parser.parse_args()
    bench: dict = {"size": args.size, "images": args.images, "target_per_second": TARGET_PER_SECOND,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "datasets": {}}
    print(f"| dataset | nodes | kind | setup s | render / s | render + PNG / s | PNG KiB | >= {TARGET_PER_SECOND}/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, window_range in DATASETS.items():
        try:
            windows = prepare_windows(name, **window_range)
        except DatasetNotFoundError as err:
            bench["datasets"][name] = {"skipped": str(err).splitlines()[0]}
            print(f"| {name} | skipped: not in ../shared/data | | | | | | |")
            continue
        for kind in IMAGE_KINDS:
            tic = time.perf_counter()
            renderer = WindowRenderer(windows, kind, size=args.size)
            setup = time.perf_counter() - tic
            render_rate, png_rate = rate(renderer, args.images, False), rate(renderer, args.images, True)
            size_kib = len(png_bytes(renderer.render(renderer.window_history("test", 0)))) / 1024
            row = {"nodes": windows.data.num_nodes, "setup_seconds": round(setup, 3),
                   "render_per_second": round(render_rate, 1), "render_png_per_second": round(png_rate, 1),
                   "png_kib": round(size_kib, 1), "meets_target": render_rate >= TARGET_PER_SECOND}
            bench["datasets"].setdefault(name, {})[kind] = row
            print(f"| {name} | {row['nodes']} | {kind} | {setup:.2f} | {render_rate:.0f} | {png_rate:.0f} | "
                  f"{size_kib:.1f} | {'yes' if row['meets_target'] else 'no'} |", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(bench, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
