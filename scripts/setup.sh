#!/usr/bin/env bash
# Set up mbrl in ./.venv on a fresh machine: a virtualenv, the pinned CPU build of torch
# (installed first, so no requirement can pull a multi-GB CUDA build), then mbrl itself
# with its test extra. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
fi
.venv/bin/python -m pip install -q -e '.[test]'
echo "mbrl is installed in $(pwd)/.venv (run: .venv/bin/mbrl --help)"
