#!/usr/bin/env bash
# Create .venv and install emoe-gate with its development tools on a fresh machine (no GPU, no model hub).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: the CPU wheel of 2.13.0 is on this machine's disk; an unpinned torch downloads a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# Data-only packages, without their dependencies: open-clip-torch ships the CLIP BPE vocabulary and
# clip-benchmark the multilingual prompts; their dependency torchvision from PyPI does not import beside torch 2.13.
.venv/bin/python -m pip install --quiet --no-deps "open-clip-torch>=2.24" "clip-benchmark>=1.6"
echo "emoe-gate installed in .venv ($(.venv/bin/emoe-gate --help >/dev/null && echo ok))"
