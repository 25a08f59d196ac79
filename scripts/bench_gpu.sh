#!/usr/bin/env bash
# The GPU path (issue 26, point 5): in ONE device call of at most 8 minutes on one H100 (or H200), with no network
# there and no ../shared, print (a) the MFU of recipes/stlink_sft.yaml's training step (bf16, SDPA; --compile to
# compile the decoder layers), (b) the forecaster against its no-LLM / random-LLM controls on nyc-taxi 2019 and (c)
# the ST-LINK ablation (plain / +SE-Attention / +MRFFN / both) with seeds 0 and 1, steps sized to the time left
# (scripts/bench_gpu_steps.py says how; every figure in the final tables and in $OUT/bench_gpu.json).
#
#   scripts/bench_gpu.sh --prepare [--pretrained DIR]   here (CPU, network): build .gpu_bundle/ -- the wheels the
#                                                      device image lacks, SmolLM2's GGUF cut to the recipe's 6
#                                                      layers, the nyc-taxi files, the pretrained encoder -- and
#                                                      check it (scripts/gpu_bundle.py)
#   scripts/bench_gpu.sh --dry-run                     here (CPU), under a minute: check the bundle, then run every
#                                                      stage once with tiny sizes and plan the device run
#   scripts/bench_gpu.sh [bench_gpu_steps.py flags]    on the device machine (what the call below runs)
#
# The device call (the `run` tool; after --prepare and a passing --dry-run, from the repository root):
#
#   run(command="bash scripts/bench_gpu.sh", carry=[".gpu_bundle"], timeout_s=480)
#
# (with --compile: command="bash scripts/bench_gpu.sh --compile"). The tree plus the bundle must stay under the
# 64 MiB a call carries: --prepare and --dry-run print both sizes. BENCH_GPU_LIMIT (default 470) is the seconds
# this script may take on the device in all, install included; the Python part gets what is left.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.gpu_bundle
HERE_PY=.venv/bin/python
[ -x "$HERE_PY" ] || HERE_PY=python3

case "${1:-}" in
  --prepare)
    shift
    exec "$HERE_PY" scripts/gpu_bundle.py prepare "$@"
    ;;
  --dry-run)
    shift
    started=$SECONDS
    "$HERE_PY" scripts/gpu_bundle.py check
    "$HERE_PY" scripts/bench_gpu_steps.py --dry-run --out "${OUT:-.gpu_dry/out}" "$@"
    echo "dry run: $((SECONDS - started)) s"
    exit 0
    ;;
esac

# ---- on the device machine
started=$SECONDS
LIMIT=${BENCH_GPU_LIMIT:-470}
PY=${PYTHON:-python3}
SITE=/tmp/bench_gpu_site
OUTDIR=${OUT:-/tmp/bench_gpu_out}
mkdir -p "$OUTDIR"
if [ ! -f "$BUNDLE/manifest.json" ]; then
  echo "no $BUNDLE/manifest.json: build it here with scripts/bench_gpu.sh --prepare and name it in carry" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$BUNDLE"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
left=$((LIMIT - (SECONDS - started)))
echo "wheels installed in $((SECONDS - started)) s; $left s left for scripts/bench_gpu_steps.py"
set -o pipefail
# our own timeout ends Python (SIGTERM: it prints the tables of what finished) before the call's limit does
timeout -s TERM -k 10 "$((left - 5))" "$PY" scripts/bench_gpu_steps.py --budget-seconds "$((left - 20))" \
  --out "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/bench_gpu.log"
