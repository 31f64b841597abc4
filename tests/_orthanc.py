"""A real DICOMweb archive for the tests: Orthanc (Debian ``orthanc``) with its DICOMweb plugin
(``orthanc-dicomweb``), on 127.0.0.1, a free port and a throw-away storage folder."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from _servers import free_port, serving

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: a Lua filter that makes the archive drop every DICOM-SEG it receives (while answering success)
DROP_SEG_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
   return dicom.Modality ~= 'SEG'
end
"""


def need_orthanc() -> None:
    """Skip (fail on CI, where the set-up installs them) without Orthanc and its DICOMweb plugin."""
    if Path(ORTHANC).is_file() and DICOMWEB_PLUGIN.is_file():
        return
    message = "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def orthanc(folder: Path, lua: str | None = None) -> Iterator[str]:
    """Start Orthanc storing under ``folder``; yield its base URL (``http://127.0.0.1:<port>``); stop it."""
    need_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "monai_wsol-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    if lua is not None:
        (folder / "filter.lua").write_text(lua)
        config["LuaScripts"] = [str(folder / "filter.lua")]
    (folder / "orthanc.json").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{port}"
    with serving(
        [ORTHANC, str(folder / "orthanc.json")], f"{url}/system", folder / "orthanc.log", timeout=30
    ):
        yield url


def upload(url: str, files: Sequence[Path]) -> None:
    """Store DICOM files in the archive through Orthanc's REST API."""
    for f in files:
        resp = requests.post(f"{url}/instances", data=Path(f).read_bytes(), timeout=30)
        resp.raise_for_status()
