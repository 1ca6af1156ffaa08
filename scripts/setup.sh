#!/usr/bin/env bash
# Idempotent setup of fvtool's virtual environment (.venv by default, override with FVTOOL_VENV).
# Why a script and not just `pip install -e .`: facenet-pytorch 2.6.0 pins ancient torch/numpy/
# Pillow, so it must be installed with --no-deps beside the torch build that lies on this disk.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FVTOOL_VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp="$VENV/.fvtool-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.14.1 torchvision==0.29.1
pip install --no-deps facenet-pytorch==2.6.0
pip install requests tqdm
pip install -e '.[dev]'
"$VENV/bin/python" -c "import torch, torchvision, facenet_pytorch, fvtool; print('fvtool', fvtool.__version__, 'torch', torch.__version__)"
rm -f "$VENV"/.fvtool-setup-*
touch "$stamp"
