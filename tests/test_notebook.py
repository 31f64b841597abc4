"""notebooks/quickstart.ipynb executes end to end (nbclient, the venv's python3 kernel)."""

from __future__ import annotations

import json

import pytest
from _bundle_helpers import REPO

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    client.execute()
    # it trained, ran inference and drew the overlays
    assert (tmp_path / "runs" / "quickstart" / "metrics.csv").is_file()
    rows = json.loads((tmp_path / "inference" / "predictions.json").read_text())
    assert len(rows) == 4
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the overlay figure was not produced"
    assert not any(o.get("output_type") == "error" for o in outputs)
