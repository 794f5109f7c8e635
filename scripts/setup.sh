#!/usr/bin/env bash
# Creates .venv with vwe installed (editable) and its test extras.
# The CPU build of torch goes in first so that resolving `torch` never pulls a multi-GB CUDA build;
# on a GPU machine, install the torch build you want before running this (it is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==${VWE_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test]"
