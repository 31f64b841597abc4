#!/usr/bin/env bash
# CI step for the MONAI Label integration: create/check .venv-monailabel, then run its tests with it.
# Kept apart from the core suite: MONAI Label needs pydicom<3 (highdicom needs 3) and a 3.4 GB install
# beside .venv (whose torch it hard-links).
# The tests train the bundle for one short epoch, start real servers on 127.0.0.1 and stop them (~2-3 min on CPU).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup_monailabel.sh
VENV=${MONAILABEL_VENV:-.venv-monailabel}
# the real DICOM series the tests send (a no-op when already fetched)
bash scripts/fetch_test_data.sh
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/monailabel "$@"
