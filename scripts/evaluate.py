"""Evaluate a trained forecaster beside the baselines: the same as ``st-instruct evaluate``.

    python scripts/evaluate.py --model outputs/smoke_sft --dataset synthetic-small --max-windows 8
"""

from __future__ import annotations

import sys

from st_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
