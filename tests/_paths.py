"""Where the tests find what lives beside the repository: ``../shared/fixtures`` (override: MONAI_WSOL_FIXTURES).

The golden fixture is required: a test that needs it fails (FileNotFoundError naming the path) rather than
skipping, so a CI run without ``shared/`` beside the checkout cannot pass silently.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures"]
if os.environ.get("MONAI_WSOL_FIXTURES"):
    _CANDIDATES.insert(0, Path(os.environ["MONAI_WSOL_FIXTURES"]))
FIXTURES = next((c for c in _CANDIDATES if (c / "metric_golden.npz").is_file()), _CANDIDATES[0])
GOLDEN = FIXTURES / "metric_golden.npz"
