#!/usr/bin/env bash
# Create .venv and install dicomnode with its test extras, pinned by constraints.txt.
# Used by the README's setup command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first, exactly as pinned: an unpinned resolution would pick a newer CUDA build. Its CPU
# build cannot be used: PyPI's torchvision is linked against the CUDA one and fails to import
# beside it, and nnunetv2's trainer lookup imports every trainer module, timm and so torchvision.
# No pip cache: torch's CUDA build would be kept twice (~4 GB more on disk).
.venv/bin/pip install -q --no-cache-dir -c constraints.txt torch torchvision
.venv/bin/pip install -q --no-cache-dir -c constraints.txt -e ".[dev]"
