"""Where the tests find their data files: ``tests/fixtures/`` (described in ``tests/fixtures/README.md``).

The golden fixture is required: a test that needs it fails (FileNotFoundError naming the path) rather than
skipping, so a checkout that lacks it cannot pass silently.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
GOLDEN = FIXTURES / "metric_golden.npz"
