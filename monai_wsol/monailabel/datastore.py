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

__all__ = ["WSOLDicomWebDatastore", "label_on_series_grid"]

logger = logging.getLogger(__name__)


def label_on_series_grid(label_file: str | os.PathLike, series_dir: str | os.PathLike) -> np.ndarray:
    """A label image resampled (nearest) onto a DICOM series' grid as ``monai_wsol`` loads it: ``(X, Y, Z)``
    with x = column, y = row, z = the instances in InstanceNumber order (what
    :func:`~monai_wsol.writers.write_dicom_seg` takes)."""
    from monai.transforms import LoadImage, ResampleToMatch

    from monai_wsol.data import make_load_transforms

    series = make_load_transforms("image", 3)({"image": str(series_dir)})["image"]
    label = LoadImage(image_only=True, ensure_channel_first=True)(str(label_file))
    on_grid = ResampleToMatch(mode="nearest", padding_mode="zeros")(label, img_dst=series)
    return np.asarray(on_grid[0])


class WSOLDicomWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore whose final labels are stored as highdicom DICOM-SEGs (module doc)."""

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
        import pydicom

        from monai_wsol.engines.dicomweb import store_verified
        from monai_wsol.writers import write_dicom_seg

        converted = ""
        if "".join(Path(label_filename).suffixes) == ".bin":  # the raw buffer some clients send
            converted = label_filename = binary_to_image(self.get_image_uri(image_id), label_filename)
        series_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        try:
            mask = label_on_series_grid(label_filename, series_dir)
            with tempfile.TemporaryDirectory() as tmp:
                seg_file = write_dicom_seg(mask, series_dir, Path(tmp) / "seg.dcm")
                seg = pydicom.dcmread(seg_file)
            store_verified(
                self._client, self._client.base_url, [seg], [f"the DICOM-SEG of series {image_id}"]
            )
            logger.info(
                "stored the label of series %s as DICOM-SEG %s (series %s)",
                image_id,
                seg.SOPInstanceUID,
                seg.SeriesInstanceUID,
            )
            image_info = self.get_image_info(image_id)
            label_info.update(
                {
                    "SeriesInstanceUID": str(seg.SeriesInstanceUID),
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
