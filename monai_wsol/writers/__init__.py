"""Outputs: NIfTI (MONAI ``SaveImage``), DICOM-SEG, the CAM's Parametric Map, the boxes' Structured Report and
the Secondary Capture overlay (highdicom, imported lazily), box JSON and overlay PNGs (matplotlib, imported
lazily)."""

from monai_wsol.writers.boxes_json import BOXES_SCHEMA, write_boxes_json
from monai_wsol.writers.dicom_pm import write_dicom_parametric_map
from monai_wsol.writers.dicom_sc import overlay_rgb, write_overlay_sc
from monai_wsol.writers.dicom_seg import write_dicom_seg
from monai_wsol.writers.dicom_source import source_instances
from monai_wsol.writers.dicom_sr import read_sr_boxes, write_dicom_sr
from monai_wsol.writers.nifti import NIFTI_EXT, save_nifti, write_nifti
from monai_wsol.writers.overlay import overlay_slice, write_overlay_png

__all__ = [
    "BOXES_SCHEMA",
    "NIFTI_EXT",
    "save_nifti",
    "source_instances",
    "write_boxes_json",
    "write_dicom_seg",
    "write_dicom_parametric_map",
    "write_dicom_sr",
    "read_sr_boxes",
    "write_nifti",
    "overlay_slice",
    "overlay_rgb",
    "write_overlay_png",
    "write_overlay_sc",
]
