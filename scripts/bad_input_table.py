"""The bad-input suite as a table: every case of ``tests/bad_input``, its exit code and the one line it printed.

    .venv/bin/python scripts/bad_input_table.py [--out bad_input.md]

Runs the suite with ``$ST_INSTRUCT_BAD_INPUT_LOG`` set, so ``tests/cli_check.py: assert_clean_failure`` records the
answer of each checked failure, and prints a markdown table (case, exit code, message). Cases that check a
positive outcome (a resumed run's weights, a sandboxed render) record nothing and are listed by the pytest summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "answers.jsonl"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/bad_input"],
                             cwd=ROOT, env={**os.environ, "ST_INSTRUCT_BAD_INPUT_LOG": str(log)})
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    lines = ["| case | exit | message |", "|---|---|---|"]
    for row in rows:
        case = row["test"].removeprefix("tests/bad_input/").replace("::", " :: ")
        message = row["message"].split(": error: ", 1)[-1].replace("|", "\\|")
        verb = row["message"].split(": error: ", 1)[0]
        lines.append(f"| {case} | {row['code']} | `{verb}`: {message} |")
    table = "\n".join(lines)
    print(table)
    print(f"\n{len(rows)} failures recorded; pytest exit code {run.returncode}")
    if args.out:
        Path(args.out).write_text(table + "\n")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
