#!/usr/bin/env bash
# Optional MONAI Label environment: .venv-monailabel beside the core .venv.
#
# MONAI Label 0.8.5 crashes at import on pydicom 3 (it imports pydicom._storage_sopclass_uids) while
# the highdicom release of the core environment needs pydicom 3, so the two cannot share one environment.
# The install is ~8.6 GB (torch's CUDA wheels) / ~6.5 minutes, so it is kept out of the core set-up (scripts/setup.sh);
# where the core .venv exists, its torch stack (~5.4 GB) is hard-linked instead of installed again (share_torch.py).
# Idempotent: when the venv exists and imports monailabel + monai_wsol, nothing is reinstalled.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON_MONAILABEL:-python3.11}
VENV=${MONAILABEL_VENV:-.venv-monailabel}
CORE_VENV=${CORE_VENV:-.venv}
TORCH_PIN=(torch==2.14.1 torchvision==0.29.1)

check() {
  "$VENV/bin/python" - <<'PY'
import numpy, pydicom, highdicom, monailabel, monai, torch, monai_wsol, monai_wsol.engines, monai_wsol.writers, monai_wsol.monailabel
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
# MONAI Label 0.8.5's server imports pydicom._storage_sopclass_uids, gone in pydicom 3
assert int(pydicom.__version__.split(".")[0]) < 3, pydicom.__version__
# numpymaxflow and pydicom-seg (MONAI Label's scribbles / DICOM-SEG) are built for numpy 1
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
print("monailabel", monailabel.__version__, "monai", monai.__version__, "torch", torch.__version__)
PY
}

if [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/monailabel" ] && versions=$(check 2>/dev/null); then
  echo "$VENV present and working ($versions): skipping install"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
site_packages() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ -x "$CORE_VENV/bin/python" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # no second copy of the CUDA libraries: pip below finds torch installed (or replaces it if its version differs)
  "$VENV/bin/python" scripts/share_torch.py "$(site_packages "$CORE_VENV")" "$(site_packages "$VENV")" || true
fi
# torch first, from the local wheels; every later line repeats the pin so nothing resolves another torch
"$VENV/bin/python" -m pip install -q "${TORCH_PIN[@]}"
"$VENV/bin/python" -m pip install -q "monailabel==0.8.5" "pydicom<3" "${TORCH_PIN[@]}"
# monai_wsol without its deps (its [dicom] extra would pull pydicom 3 through highdicom), then its
# runtime deps that monailabel did not already bring; highdicom 0.22.0, a release that works with
# pydicom 2 (it needs pydicom>=2.3,!=2.4.0), writes the DICOM-SEG of a saved label. numpy stays < 2:
# MONAI Label's numpymaxflow and pydicom-seg require it (pip would otherwise upgrade it for OpenCV)
"$VENV/bin/python" -m pip install -q --no-deps -e "$here"
"$VENV/bin/python" -m pip install -q "numpy<2" "pytorch-ignite>=0.4.11" "scipy>=1.10" "nibabel>=5.0" \
  "opencv-python-headless>=4.8" "numba>=0.60" "fire>=0.5" "tqdm>=4.60" "pydicom<3" \
  "pytest>=8" "nilearn>=0.10" "highdicom==0.22.0" \
  "${TORCH_PIN[@]}"
check
