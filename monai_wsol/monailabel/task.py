"""MONAI Label infer task for the ``monai_wsol`` bundle, built on MONAI Label's ``BundleInferTask``.

What it adds to the stock bundle task:

- the bundle's ``configs/monailabel_infer.json``, if present, is merged over ``inference.json`` (for bundles
  whose ``inference.json`` lacks MONAI Label's keys; this project's has them): it defines the
  ``inferer`` (:class:`~monai_wsol.monailabel.LocalizationInferer`) and the ``post_transforms`` MONAI Label
  runs (the bundle's own ``postprocessing`` between :class:`~monai_wsol.monailabel.UnpackDictd` and
  :class:`~monai_wsol.monailabel.LocalizationResultd`);
- per-request parameters, validated: ``tau`` (CAM threshold in [0, 1]), ``box_mode`` (``all`` / ``largest``),
  ``min_size`` (voxels), ``output`` (``mask`` / ``cam``: what the label holds); they are also the task's
  config, so 3D Slicer's MONAI Label panel shows them as options. Each request parses its own copy of the
  configuration, so concurrent requests never see each other's thresholds;
- a DICOM series can be sent as one ``.zip`` upload (it is unpacked into a temporary folder for the request);
- the label is written with nibabel on the image's grid and affine (:func:`monai_wsol.writers.write_nifti`;
  MONAI Label's ITK writer drops the affine of 2D labels), always as ``.nii.gz``;
- bad input raises :class:`InvalidRequestError` / :class:`UnsupportedImageError` /
  :class:`monai_wsol.data.ImageReadError`, which :class:`~monai_wsol.monailabel.WSOLApp` answers with 4xx.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from monai.bundle import ConfigParser
from monai.data import MetaTensor

try:
    # a submodule: a bare "monailabel" could be a namespace package (a folder of that name on sys.path)
    from monailabel.interfaces.tasks.infer_v2 import InferType
except ImportError as e:  # pragma: no cover - exercised only outside the MONAI Label environment
    raise ImportError(
        "monai_wsol.monailabel.task needs MONAI Label, which lives in its own environment (it needs "
        "pydicom<3, the core package's DICOM-SEG writer needs pydicom 3): run "
        "`bash scripts/setup_monailabel.sh` and use `.venv-monailabel/bin/python` (see docs/monailabel.md)."
    ) from e
from monailabel.tasks.infer.bundle import BundleInferTask

from monai_wsol.data.readers import DICOM_SUFFIXES, SITK_SUFFIXES
from monai_wsol.engines.batch import IMAGE_SUFFIXES
from monai_wsol.monailabel.datastore import DICOM_FILES_KEY, SERIES_DIR_KEY, write_series_objects
from monai_wsol.monailabel.transforms import LABEL_OUTPUTS
from monai_wsol.transforms.functional import REGION_MODES, check_min_size, check_tau
from monai_wsol.writers import write_nifti

__all__ = [
    "WSOLInferTask",
    "InvalidRequestError",
    "UnsupportedImageError",
    "OVERRIDE_CONFIG",
    "SUPPORTED_SUFFIXES",
]

#: the bundle config merged over ``inference.json`` for MONAI Label
OVERRIDE_CONFIG = "monailabel_infer.json"
#: uploads the task reads (a ``.zip`` holds one DICOM series); DICOM files without a suffix are recognised too
SUPPORTED_SUFFIXES = tuple(
    dict.fromkeys((*IMAGE_SUFFIXES, *(f".{s}" for s in (*SITK_SUFFIXES, *DICOM_SUFFIXES)), ".zip"))
)


class InvalidRequestError(ValueError):
    """A request parameter is invalid (answered with HTTP 400)."""


class UnsupportedImageError(InvalidRequestError):
    """The uploaded file is not an image format the bundle reads (answered with HTTP 415)."""


def _first(value: Any) -> Any:
    # MONAI Label starts each request from the task's config, where a choice is a list (default first)
    return value[0] if isinstance(value, (list, tuple)) and value else value


def check_image_path(path: str) -> None:
    """Raise :class:`UnsupportedImageError` unless ``path`` is an image MONAI Label can load.

    That is a folder, a DICOM file or a file with a supported suffix.
    """
    from pydicom.misc import is_dicom

    if not path:
        raise InvalidRequestError("no image: send a file, or the id of an image of the studies folder.")
    p = Path(path)
    if p.is_dir():
        return
    if not p.is_file():
        raise InvalidRequestError(f"image '{path}' does not exist.")
    name = p.name.lower()
    if name.endswith(SUPPORTED_SUFFIXES) or is_dicom(str(p)):
        return
    raise UnsupportedImageError(
        f"image '{p.name}': unsupported format; send NIfTI, NRRD, MetaImage, DICOM (one file, or a series as "
        f".zip), PNG, JPEG or TIFF ({', '.join(SUPPORTED_SUFFIXES)})."
    )


@contextmanager
def dicom_zip_as_folder(path: str) -> Iterator[str]:
    """Yield ``path``, or for a ``.zip`` the temporary folder holding its DICOM files (removed afterwards).

    Raises:
        InvalidRequestError: the archive is unreadable, escapes its folder, or holds no DICOM file.
    """
    if not str(path).lower().endswith(".zip"):
        yield path
        return
    from pydicom.misc import is_dicom

    folder = tempfile.mkdtemp(prefix="monai_wsol_series_")
    try:
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    # one flat folder: the series reader reads a single folder; names are made safe here
                    target = Path(folder) / f"{len(os.listdir(folder)):05d}_{Path(info.filename).name}"
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, OSError) as e:
            raise InvalidRequestError(f"image '{Path(path).name}': unreadable .zip ({e}).") from e
        # MONAI's series reader reads every file of the folder: keep the DICOM ones (no DICOMDIR, notes, ...)
        for f in Path(folder).iterdir():
            if f.name.upper().endswith("DICOMDIR") or not is_dicom(str(f)):
                f.unlink()
        if not any(Path(folder).iterdir()):
            raise InvalidRequestError(f"image '{Path(path).name}': the .zip holds no DICOM file.")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class WSOLInferTask(BundleInferTask):
    """``BundleInferTask`` for the ``monai_wsol`` bundle (module docstring).

    Args:
        path: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        conf: the app's ``--conf`` options (``preload`` is honoured as in MONAI Label).
        output: the default of the ``output`` request parameter (``"mask"`` or ``"cam"``).
        override_config: file name, in ``<path>/configs``, merged over ``inference.json`` when it exists.
        kwargs: more ``BundleInferTask`` arguments.

    Request parameters (JSON ``params`` of ``POST /infer/<model>``; defaults from the bundle config):
    ``tau``, ``box_mode``, ``min_size``, ``output``. The response's JSON carries the ``monai_wsol.boxes/1``
    document (``predicted_class``, ``class_probabilities``, ``probabilities``, ``boxes`` with ``voxel`` and
    ``world`` corners, ``affine``, ``tau``, ...).
    """

    def __init__(
        self,
        path: str,
        conf: Mapping[str, str] | None = None,
        output: str = "mask",
        override_config: str = OVERRIDE_CONFIG,
        **kwargs: Any,
    ) -> None:
        if output not in LABEL_OUTPUTS:
            raise ValueError(f"output must be one of {LABEL_OUTPUTS}, got {output!r}.")
        self.override_config = override_config
        kwargs.setdefault("type", InferType.SEGMENTATION)
        # the label is produced on the image grid already; MONAI Label's Restored would only add a resize
        super().__init__(str(path), dict(conf or {}), add_post_restore=False, **kwargs)
        if not self.valid:
            return
        cfg = self.bundle_config
        if cfg.get("inferer") is None or cfg.get("post_transforms") is None:
            raise ValueError(
                f"bundle '{path}': no 'inferer'/'post_transforms' for MONAI Label; put {override_config} in "
                f"{Path(path) / 'configs'} (the repository's bundle/configs has it)."
            )
        self.class_names = [str(n) for n in cfg.get_parsed_content("class_names")]
        cam_class = cfg.get_parsed_content("cam_class")
        if isinstance(cam_class, bool) or not isinstance(cam_class, int):
            raise ValueError(
                f"bundle '{path}': cam_class={cam_class!r}; serving needs the lesion class index (an int), "
                "whose CAM is the returned mask."
            )
        self.cam_class = cam_class
        # a segmentation with one label: the lesion class, value 1 in the mask
        self.labels = {self.class_names[self.cam_class]: 1}
        # 2D networks run slice by slice through volumes (LocalizationInferer), so volumes are accepted
        self.dimension = 3
        self.defaults = {
            "tau": check_tau(float(cfg.get_parsed_content("tau"))),
            "box_mode": str(cfg.get_parsed_content("box_mode")),
            "min_size": check_min_size(float(cfg.get_parsed_content("min_size"))),
            "output": output,
        }
        self._config.update(
            {
                "tau": self.defaults["tau"],
                "box_mode": [
                    self.defaults["box_mode"],
                    *(m for m in REGION_MODES if m != self.defaults["box_mode"]),
                ],
                "min_size": self.defaults["min_size"],
                "output": [output, *(o for o in LABEL_OUTPUTS if o != output)],
            }
        )

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        parser = ConfigParser()
        override = Path(path) / "configs" / self.override_config
        parser.read_config([config, str(override)] if override.is_file() else config)
        parser.config.update({self.const.key_bundle_root(): path})  # type: ignore[union-attr]
        return parser

    def request_params(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """The validated ``tau``, ``box_mode``, ``min_size``, ``output`` of a request (defaults filled in).

        Raises:
            InvalidRequestError: a value out of range or not one of the choices (named in the message).
        """
        data = data or {}
        out = {}
        try:
            out["tau"] = check_tau(float(_first(data.get("tau", self.defaults["tau"]))))
            out["min_size"] = check_min_size(float(_first(data.get("min_size", self.defaults["min_size"]))))
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"invalid request parameter: {e}") from e
        for key, choices in (("box_mode", REGION_MODES), ("output", LABEL_OUTPUTS)):
            value = str(_first(data.get(key, self.defaults[key])))
            if value not in choices:
                raise InvalidRequestError(
                    f"invalid request parameter: {key}={value!r}, expected one of {choices}."
                )
            out[key] = value
        return out

    def __call__(self, request: dict, callbacks: dict | None = None) -> Any:
        self.request_params(request)  # fail before any work
        image = request.get("image")
        if isinstance(image, str):
            check_image_path(image)
            with dicom_zip_as_folder(image) as folder:
                return super().__call__({**request, "image": folder}, callbacks)
        return super().__call__(request, callbacks)

    def post_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``post_transforms`` parsed from a per-request copy of the config (thresholds set)."""
        params = self.request_params(data)
        parser = ConfigParser(copy.deepcopy(self.bundle_config.get()))
        parser.update(
            {
                "tau": params["tau"],
                "box_mode": params["box_mode"],
                "min_size": params["min_size"],
                "label_output": params["output"],
            }
        )
        device = data.get(self.const.key_device()) if data else None
        if device:
            parser[self.const.key_device()] = device
        post: Any = []
        for key in self.const.key_postprocessing():  # as BundleInferTask: the last key present wins
            if parser.get(key) is not None:
                post = parser.get_parsed_content(key, instantiate=True)
        post = list(post.transforms) if hasattr(post, "transforms") else list(post)
        return self._filter_transforms(post, self.post_filter)

    def writer(self, data: dict, extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        """Write ``data["pred"]`` as ``.nii.gz``; return (file, JSON params).

        The file is on the image's grid and affine.
        """
        label = data[self.output_label_key]
        label = label.as_tensor() if isinstance(label, MetaTensor) else label
        array = np.asarray(label.detach().cpu().numpy() if hasattr(label, "detach") else label)
        image = data[self.input_key]
        affine = np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4), dtype=np.float64)
        fd, name = tempfile.mkstemp(prefix="monai_wsol_label_", suffix=".nii.gz")
        os.close(fd)
        out = str(write_nifti(array, affine, name))
        result = dict(data.get(self.output_json_key) or {})
        result["label_file_format"] = "nii.gz"
        series_dir = data.get(SERIES_DIR_KEY)
        if series_dir:  # an archive series whose results the app stores (WSOLApp, dicomweb_store)
            cam = np.asarray(data["cam"])[0].astype(np.float32)
            boxes = np.asarray(data["pred_boxes"], dtype=float).reshape(-1, 6)
            result[DICOM_FILES_KEY] = write_series_objects(cam, boxes, affine, series_dir, tempfile.mkdtemp())
        return out, result
