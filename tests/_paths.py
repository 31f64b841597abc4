"""Where the tests find what lives beside the repository: ``../shared/fixtures`` (override: MONAI_WSOL_FIXTURES)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MONAI_WSOL_FIXTURES", REPO.parent / "shared" / "fixtures"))
GOLDEN = FIXTURES / "metric_golden.npz"
