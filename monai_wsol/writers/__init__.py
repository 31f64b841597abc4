"""Outputs: NIfTI (MONAI ``SaveImage``), DICOM-SEG and the DICOM Secondary Capture overlay (highdicom,
imported lazily), box JSON and overlay PNGs (matplotlib, imported lazily)."""

from monai_wsol.writers.boxes_json import BOXES_SCHEMA, write_boxes_json
from monai_wsol.writers.dicom_sc import overlay_rgb, write_overlay_sc
from monai_wsol.writers.dicom_seg import source_instances, write_dicom_seg
from monai_wsol.writers.nifti import NIFTI_EXT, save_nifti, write_nifti
from monai_wsol.writers.overlay import overlay_slice, write_overlay_png

__all__ = [
    "BOXES_SCHEMA",
    "NIFTI_EXT",
    "save_nifti",
    "source_instances",
    "write_boxes_json",
    "write_dicom_seg",
    "write_nifti",
    "overlay_slice",
    "overlay_rgb",
    "write_overlay_png",
    "write_overlay_sc",
]
