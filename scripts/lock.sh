#!/usr/bin/env bash
# Refresh constraints.txt, the exact versions a fresh machine installs (scripts/setup.sh reads it):
#   bash scripts/lock.sh            resolve the newest versions pyproject.toml allows in a throw-away venv, write them
#   bash scripts/setup.sh && .venv/bin/python -m pytest     then prove the new set green before committing it
# torch keeps the version already in constraints.txt (the CPU wheel on disk); change that line by hand to move it.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
VENV="$scratch/venv" CONSTRAINTS= bash scripts/setup.sh
{
  echo "# Exact versions the test suite passed with; written by scripts/lock.sh on $(date -u +%Y-%m-%d)."
  echo "# scripts/setup.sh installs with -c constraints.txt; pyproject.toml keeps the ranges for library users."
  "$scratch/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/^torch==\([^+]*\)+.*/torch==\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages); now: bash scripts/setup.sh && .venv/bin/python -m pytest"
