"""The MONAI Label app serving ``monai_wsol`` bundles (loaded by ``monai_wsol/monailabel/app/main.py``).

App options (``monailabel start_server --app <app> --studies <dir> --conf KEY VALUE``):

- ``bundle``: the bundle folder (default: the repository's ``bundle/`` for an editable install); several as
  ``name=path,name=path``;
- ``models``: the model name of a single ``bundle`` (default ``monai_wsol``);
- ``cam_model``: ``true`` (default) also serves ``<name>_cam``, the same network returning the CAM as label;
- ``preload``: ``true`` loads the networks at start-up (MONAI Label's option);
- ``dicomweb_store``: ``true`` stores, with ``--studies`` a DICOMweb URL, the CAM as a Parametric Map and the
  boxes as a Structured Report into the study of every series inferred (default ``false``: the viewer saves
  what it keeps).

With ``--studies http://<archive>/dicom-web`` the images come from a DICOMweb archive (MONAI Label's
``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``, default ``{"Modality": "CT"}``, says which series are listed) and a
saved final label is stored back as a DICOM-SEG (:mod:`monai_wsol.monailabel.datastore`).

Bad requests get 4xx instead of MONAI Label's 500: unknown model 404, unsupported upload format 415,
unreadable image or invalid parameter 400; the message says what was wrong. Training and active learning are
not offered (train with ``python -m monai.bundle run training``; see ``bundle/docs/README.md``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import monailabel
from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.utils.others.generic import strtobool

from monai_wsol import __version__
from monai_wsol.data.input_checks import InputCheckError
from monai_wsol.data.readers import ImageReadError
from monai_wsol.monailabel.datastore import DICOM_FILES_KEY, SERIES_DIR_KEY
from monai_wsol.monailabel.inferer import InputShapeError
from monai_wsol.monailabel.task import InvalidRequestError, UnsupportedImageError, WSOLInferTask

__all__ = ["WSOLApp", "client_error", "parse_bundles", "DEFAULT_MODEL"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "monai_wsol"


def _repository_bundle() -> Path:
    return Path(__file__).resolve().parents[2] / "bundle"


def parse_bundles(conf: dict[str, str]) -> dict[str, Path]:
    """Model name -> bundle folder from the app options (module docstring).

    Raises:
        ValueError: a bundle folder without ``configs/inference.json``, or a malformed ``name=path`` list.
    """
    spec = conf.get("bundle") or str(_repository_bundle())
    bundles: dict[str, Path] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if "=" in part:
            name, _, path = part.partition("=")
            if not name.strip() or not path.strip():
                raise ValueError(f"--conf bundle: '{part}' is not name=path.")
            bundles[name.strip()] = Path(path.strip())
        else:
            bundles[conf.get("models") or DEFAULT_MODEL] = Path(part)
    for name, path in bundles.items():
        if not (path / "configs" / "inference.json").is_file():
            raise ValueError(f"--conf bundle: model '{name}': '{path}' has no configs/inference.json.")
    return bundles


class WSOLApp(MONAILabelApp):
    """MONAI Label app with one :class:`WSOLInferTask` per bundle (and its ``_cam`` twin).

    See the module doc.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles = parse_bundles(conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=(
                f"monai_wsol lesion localization "
                f"(monai_wsol {__version__}, MONAI Label {monailabel.__version__})"
            ),
            description="Weakly supervised lesion localization: class, CAM, lesion mask and boxes",
            version=__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        with_cam = strtobool(self.conf.get("cam_model", "true"))
        for name, path in self.bundles.items():
            task = WSOLInferTask(str(path), self.conf)
            if not task.is_valid():
                raise ValueError(f"model '{name}': bundle '{path}' has no models/model.pt (train it first).")
            infers[name] = task
            if with_cam:
                infers[f"{name}_cam"] = WSOLInferTask(str(path), self.conf, output="cam")
            logger.info(f"+++ monai_wsol model '{name}' from {path}")
        return infers

    def _archive_store(self, request: dict[str, Any], datastore: Any) -> Any:
        """The DICOMweb datastore when the request infers an archive series and ``dicomweb_store`` is on."""
        from monai_wsol.monailabel.datastore import WSOLDicomWebDatastore

        store = datastore if datastore is not None else self.datastore()
        image = request.get("image")
        wanted = strtobool(self.conf.get("dicomweb_store", "false"))
        if not wanted or not isinstance(store, WSOLDicomWebDatastore) or not isinstance(image, str):
            return None
        return None if os.path.exists(image) else store

    def _init_dicomweb_datastore(self) -> Any:
        """MONAI Label's DICOMweb datastore with final labels stored as highdicom DICOM-SEGs
        (:class:`~monai_wsol.monailabel.datastore.WSOLDicomWebDatastore`)."""
        from monai_wsol.monailabel.datastore import WSOLDicomWebDatastore

        store = super()._init_dicomweb_datastore()
        # the stock method builds the client (credentials, Google Cloud, URL prefixes) and the cache; only
        # save_label differs, and the subclass adds no state, so the instance takes the subclass
        store.__class__ = WSOLDicomWebDatastore
        return store

    def _download_dcmqi_tools(self) -> None:
        """Nothing to download: labels become DICOM-SEGs through highdicom, not dcmqi's binaries (MONAI Label
        fetches those from GitHub at start-up)."""

    def init_trainers(self) -> dict:
        return {}

    def init_strategies(self) -> dict:
        return {}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's ``infer`` with bad requests turned into HTTP 4xx (FastAPI's ``HTTPException``); with
        ``dicomweb_store``, an archive series' Parametric Map and SR are stored and listed under
        ``dicom_stored``."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"unknown model '{model}'; available: {sorted(self._infers)}"
            )
        store = self._archive_store(request, datastore)
        if store is not None:
            request = {**request, SERIES_DIR_KEY: store.series_dir(str(request["image"]))}
        try:
            result = super().infer(request, datastore)
            files = (result.get("params") or {}).pop(DICOM_FILES_KEY, None)
            if store is not None and files:
                try:
                    result["params"]["dicom_stored"] = store.store_objects(files)
                finally:
                    shutil.rmtree(Path(files[0]).parent, ignore_errors=True)
            return result
        except Exception as e:
            status, cause = client_error(e)
            if status is None:
                raise
            raise HTTPException(status_code=status, detail=str(cause)) from e


def client_error(error: BaseException) -> tuple[int | None, BaseException]:
    """The HTTP status for an error caused by the request, and that cause; ``(None, error)`` for server
    errors.

    MONAI's ``Compose`` re-raises a transform's error as ``RuntimeError("applying transform ...")`` (the
    bundle's loading transforms are a nested ``Compose``), so the chain of causes is searched.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UnsupportedImageError):
            return 415, e
        if isinstance(e, (InvalidRequestError, ImageReadError, InputShapeError, InputCheckError)):
            return 400, e
        e = e.__cause__ or e.__context__
    return None, error
