"""Outputs: NIfTI (MONAI ``SaveImage``), DICOM-SEG (highdicom, imported lazily) and box JSON."""

from monai_wsol.writers.boxes_json import BOXES_SCHEMA, write_boxes_json
from monai_wsol.writers.dicom_seg import source_instances, write_dicom_seg
from monai_wsol.writers.nifti import NIFTI_EXT, save_nifti, write_nifti

__all__ = [
    "BOXES_SCHEMA",
    "NIFTI_EXT",
    "save_nifti",
    "source_instances",
    "write_boxes_json",
    "write_dicom_seg",
    "write_nifti",
]
