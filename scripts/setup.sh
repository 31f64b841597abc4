#!/usr/bin/env bash
# Fresh-machine set-up: .venv with torch 2.14.1 (pinned first, so nothing pulls another
# torch), monai_wsol editable with its test extras, and the real test data.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
# the pin is repeated so that no extra can resolve another torch
.venv/bin/python -m pip install -q -e ".[test]" torch==2.14.1 torchvision==0.29.1
bash scripts/fetch_test_data.sh
.venv/bin/python -c "import torch, monai, monai_wsol; print('torch', torch.__version__, 'monai', monai.__version__, 'monai_wsol', monai_wsol.__version__)"
