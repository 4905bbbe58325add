#!/usr/bin/env bash
# Create .venv and install dicomnode with its test extras, pinned by constraints.txt.
# Used by the README's setup command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first, exactly as pinned: an unpinned resolution would pick a newer CUDA build.
.venv/bin/pip install -q -c constraints.txt torch torchvision
.venv/bin/pip install -q -c constraints.txt -e ".[dev]"
