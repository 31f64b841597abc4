"""MONAI Label over DICOMweb: a saved label goes back to the archive as a DICOM-SEG written by highdicom.

MONAI Label's ``DICOMWebDatastore`` (``--studies http://.../dicom-web``) lists the archive's series, fetches
one when it is asked for (WADO-RS) and converts it to NIfTI for the model; saving a *final* label (what OHIF's
and Slicer's "save" send) converts the label to a DICOM-SEG with dcmqi's ``itkimage2segimage`` and stores it
(STOW-RS). :class:`WSOLDicomWebDatastore` keeps all of that but the conversion: the label is resampled
(nearest) from the NIfTI grid it was drawn on to the series' own grid as ``monai_wsol`` loads it, written with
:func:`monai_wsol.writers.write_dicom_seg` (one segment, every non-zero label voxel; the algorithm and its
version identified) and stored with :func:`monai_wsol.engines.dicomweb.store_verified`, which fails when the
archive does not hold the SEG afterwards. No dcmqi binary is needed (MONAI Label would download one from
GitHub at start-up).

With the app option ``dicomweb_store`` (``true``), each inference on an archive series also stores the CAM
as a Parametric Map and the boxes as a Structured Report into its study (:func:`write_series_objects`, the
bundle's writers; the CAM and boxes mapped from the NIfTI grid onto the series' own), and the answer lists
them under ``dicom_stored``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.interfaces.datastore import DefaultLabelTag

__all__ = [
    "WSOLDicomWebDatastore",
    "label_on_series_grid",
    "boxes_onto_grid",
    "write_series_objects",
    "SERIES_DIR_KEY",
    "DICOM_FILES_KEY",
]

#: the request key through which the app tells the task which archive series an inference is on
SERIES_DIR_KEY = "monai_wsol_dicomweb_series_dir"
#: the result key of the DICOM objects the task wrote for that series (taken out before the answer)
DICOM_FILES_KEY = "monai_wsol_dicom_files"

logger = logging.getLogger(__name__)


def _series_image(series_dir: str | os.PathLike) -> Any:
    from monai_wsol.data import make_load_transforms

    return make_load_transforms("image", 3)({"image": str(series_dir)})["image"]


def label_on_series_grid(
    label: str | os.PathLike | np.ndarray,
    series_dir: str | os.PathLike,
    affine: np.ndarray | None = None,
    series: Any = None,
) -> np.ndarray:
    """A label image (a file, or an ``(X, Y, Z)`` array with its ``affine``) resampled (nearest: values are
    kept) onto a DICOM series' grid as ``monai_wsol`` loads it: ``(X, Y, Z)`` with x = column, y = row,
    z = the instances in InstanceNumber order (what :func:`~monai_wsol.writers.write_dicom_seg` takes).
    ``series``: the series already loaded that way, when the caller has it."""
    from monai.data import MetaTensor
    from monai.transforms import LoadImage, ResampleToMatch

    if isinstance(label, np.ndarray):
        image = MetaTensor(np.asarray(label)[None], affine=np.asarray(affine, dtype=np.float64))
    else:
        image = LoadImage(image_only=True, ensure_channel_first=True)(str(label))
    target = _series_image(series_dir) if series is None else series
    on_grid = ResampleToMatch(mode="nearest", padding_mode="zeros")(image, img_dst=target)
    return np.asarray(on_grid[0])


def boxes_onto_grid(boxes: np.ndarray, affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Voxel boxes (MONAI ``StandardMode``, max corner = last index + 1) on one grid, on another grid of the
    same voxels in another axis order or direction (e.g. a series converted to NIfTI and the series itself).

    Raises:
        ValueError: the grids' voxels are not the same up to axis order and direction.
    """
    boxes = np.asarray(boxes, float).reshape(-1, 6)
    to_target = np.linalg.inv(np.asarray(target_affine, float)) @ np.asarray(affine, float)
    # the grids of one series may differ by a hair: converters estimate the slice direction from different
    # instances (SimpleITK's NIfTI of an oblique series shears by 0.003 voxel per slice against MONAI's)
    permutation = np.rint(to_target[:3, :3])
    is_permutation = (np.abs(permutation).sum(0) == 1).all() and (np.abs(permutation).sum(1) == 1).all()
    if not is_permutation or np.abs(to_target[:3, :3] - permutation).max() > 0.02:
        raise ValueError("boxes_onto_grid: the two grids are not the same voxels in another axis order")
    offset = np.rint(to_target[:3, 3])
    # a voxel i spans [i - 0.5, i + 0.5]: map the boxes' edges, take the new corners, back to indices
    low, high = boxes[:, :3] - 0.5, boxes[:, 3:] - 0.5
    mapped = np.stack([(permutation @ c.T).T + offset for c in (low, high)])  # (2, N, 3)
    return np.concatenate([mapped.min(0), mapped.max(0)], axis=1) + 0.5


def write_series_objects(
    cam: np.ndarray,
    boxes: np.ndarray,
    affine: np.ndarray,
    series_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
) -> list[str]:
    """The CAM as a Parametric Map and the boxes as a Structured Report of a DICOM series, from maps on
    another grid of its voxels (the NIfTI MONAI Label converted it to): written under ``out_dir``; returns
    the files (no report when there is no box)."""
    from monai_wsol.writers import source_instances, write_dicom_parametric_map, write_dicom_sr

    instances = source_instances(series_dir)
    series = _series_image(series_dir)
    out = [
        str(
            write_dicom_parametric_map(
                label_on_series_grid(cam, series_dir, affine, series), instances, Path(out_dir) / "pm.dcm"
            )
        )
    ]
    if len(boxes):
        on_series = boxes_onto_grid(boxes, affine, np.asarray(series.affine, dtype=np.float64))
        out.append(str(write_dicom_sr(on_series, instances, Path(out_dir) / "sr.dcm", spatial_dims=3)))
    return out


class WSOLDicomWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore whose final labels are stored as highdicom DICOM-SEGs (module doc)."""

    def series_dir(self, image_id: str) -> str:
        """The local folder of an archive series (filled when the series is first asked for)."""
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id))

    def store_objects(self, files: list[str]) -> list[dict[str, str]]:
        """Store DICOM files of one study into the archive (verified); returns their SOP classes, SOP
        instances and series."""
        import pydicom

        from monai_wsol.engines.dicomweb import store_verified

        objects = [pydicom.dcmread(f) for f in files]
        store_verified(self._client, self._client.base_url, objects, [Path(f).name for f in files])
        return [
            {
                "sop_class": str(o.SOPClassUID),
                "sop_instance": str(o.SOPInstanceUID),
                "series_instance": str(o.SeriesInstanceUID),
            }
            for o in objects
        ]

    def save_label(
        self,
        image_id: str,
        label_filename: str,
        label_tag: str,
        label_info: dict[str, Any],
        label_id: str = "",
    ) -> str:
        if label_tag != DefaultLabelTag.FINAL:
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        from monai_wsol.writers import write_dicom_seg

        converted = ""
        if "".join(Path(label_filename).suffixes) == ".bin":  # the raw buffer some clients send
            converted = label_filename = binary_to_image(self.get_image_uri(image_id), label_filename)
        series_dir = self.series_dir(image_id)
        try:
            mask = label_on_series_grid(label_filename, series_dir)
            with tempfile.TemporaryDirectory() as tmp:
                (seg,) = self.store_objects([str(write_dicom_seg(mask, series_dir, Path(tmp) / "seg.dcm"))])
            logger.info("stored the label of series %s as DICOM-SEG %s", image_id, seg["sop_instance"])
            image_info = self.get_image_info(image_id)
            label_info.update(
                {
                    "SeriesInstanceUID": seg["series_instance"],
                    "Modality": image_info.get("Modality"),
                    "PatientID": image_info.get("PatientID"),
                    "StudyInstanceUID": image_info.get("StudyInstanceUID"),
                }
            )
            # the local copy, as the stock datastore keeps it (MONAI Label's label listing reads it)
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        finally:
            if converted:
                os.unlink(converted)
