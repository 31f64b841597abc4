"""The CAM as a DICOM Parametric Map on the source series (highdicom), for viewers that show one (3D Slicer,
OHIF's parametric map viewport) and for pipelines that read the map's values back.

One float32 frame per source instance (the mapping of
:func:`~monai_wsol.writers.dicom_source.frames_on_source`, the same as the DICOM-SEG's), values in [0, 1] with
an identity real-world value mapping (no units: the map is the lesion class's activation normalised to [0, 1],
not a probability), a window of [0, 1] so a viewer's default display spans the map, and the algorithm recorded
as the content creator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_wsol.writers.dicom_source import (
    DicomSource,
    frames_on_source,
    import_highdicom,
    new_instance_fields,
    require_frame_of_reference,
    save_dicom,
    source_instances,
    source_name,
)

__all__ = ["write_dicom_parametric_map"]


def write_dicom_parametric_map(
    cam: np.ndarray | torch.Tensor,
    source_dicom: DicomSource,
    out_path: str | os.PathLike,
    series_description: str = "monai_wsol class activation map",
    series_number: int = 9903,
    manufacturer: str = "monai_wsol",
) -> Path:
    """Write a CAM in [0, 1] as a DICOM Parametric Map that references its source series, atomically.

    Args:
        cam: (X, Y[, Z]) or (1, X, Y[, Z]) CAM on the grid MONAI's ``PydicomReader`` loads the source with
            (x = column, y = row, z = instances in InstanceNumber order), values in [0, 1].
        source_dicom: the source series folder, one DICOM file (2D), the series' files or its instances
            already read (:data:`~monai_wsol.writers.dicom_source.DicomSource`).
        out_path: the file to write.
        series_description, series_number, manufacturer: header fields of the new series.

    Returns:
        ``Path(out_path)``.

    Raises:
        ImportError: highdicom missing. ValueError: the CAM does not match the source geometry, is not finite
        or leaves [0, 1].
    """
    hd = import_highdicom("write_dicom_parametric_map")
    from pydicom.sr.codedict import codes

    datasets, frames = frames_on_source(cam, source_instances(source_dicom), source_dicom)
    frames = frames.astype(np.float32)
    if not np.isfinite(frames).all() or frames.min(initial=0.0) < 0.0 or frames.max(initial=0.0) > 1.0:
        raise ValueError(
            f"write_dicom_parametric_map: the CAM for {source_name(source_dicom)} must be finite and in "
            "[0, 1]"
        )
    require_frame_of_reference(datasets, source_dicom, "a Parametric Map")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CAM",
        lut_explanation="lesion class activation map, normalised to [0, 1]",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=datasets,
        pixel_array=frames,
        **new_instance_fields(hd, series_number, manufacturer),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        **_window(hd),
        content_label="CAM",
        content_description="monai_wsol lesion class activation map",
        # highdicom's default, the map is a quantity of its own; dicom3tools 2022's tables lack the term
        derived_pixel_contrast="QUANTITY",
    )
    pm.SeriesDescription = series_description
    return save_dicom(pm, out_path)


def _window(hd: Any) -> dict:
    """A [0, 1] display window: a VOI LUT transformation where the Parametric Map takes them (highdicom >=
    0.23; the window arguments are deprecated there), else the window arguments (the MONAI Label
    environment's highdicom 0.22, where they are required)."""
    import inspect

    if "voi_lut_transformations" in inspect.signature(hd.pm.ParametricMap.__init__).parameters:
        return {
            "voi_lut_transformations": [hd.content.VOILUTTransformation(window_center=0.5, window_width=1.0)]
        }
    return {"window_center": 0.5, "window_width": 1.0}
