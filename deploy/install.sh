#!/usr/bin/env bash
# Create .venv and install dicomnode with its test extras, pinned by constraints.txt.
# Used by the README's setup command and by .ci/run.
#
# torch is installed first, as one of two builds pinned by deploy/torch-{cuda,cpu}.txt
# (DICOMNODE_TORCH=cuda|cpu overrides the choice):
#   cuda  where nvidia-smi lists a GPU: PyPI's build, with its ~4 GB of CUDA libraries.
#   cpu   elsewhere: the CPU build (~0.7 GB), from pip's find-links or PyTorch's CPU index.
# On the CPU build torchvision is removed again after the install: only timm requires it (for
# dynamic_network_architectures' ViT architectures, which no pipeline here uses), PyPI's
# torchvision is linked against the CUDA build and fails to import beside the CPU one
# ("operator torchvision::nms does not exist"), and torchmetrics, which SPINEPS imports, imports
# torchvision whenever it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPU_INDEX=https://download.pytorch.org/whl/cpu

variant=${DICOMNODE_TORCH:-auto}
if [ "$variant" = auto ]; then
  variant=cpu
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    variant=cuda
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/pip install -q --no-cache-dir)
.venv/bin/pip install -q --upgrade pip
case "$variant" in
  cuda|cpu) pins=(-c constraints.txt -c "deploy/torch-$variant.txt") ;;
  *) echo "DICOMNODE_TORCH must be cuda, cpu or auto, not '$variant'" >&2; exit 2 ;;
esac
if [ "$variant" = cuda ]; then
  "${pip[@]}" "${pins[@]}" torch
else
  "${pip[@]}" "${pins[@]}" torch 2>/dev/null \
    || "${pip[@]}" "${pins[@]}" --extra-index-url "$CPU_INDEX" torch
fi
"${pip[@]}" "${pins[@]}" -e ".[dev]"
[ "$variant" = cuda ] || .venv/bin/pip uninstall -q -y torchvision
echo "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') ($variant build)"
