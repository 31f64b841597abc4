"""Lesion boxes as a DICOM Structured Report: a TID 1500 Measurement Report (highdicom ``sr``) on the source.

Each box is one measurement group, its region drawn as closed rectangles (``SCOORD`` ``POLYLINE`` in the
pixel coordinates of the instances it spans), what viewers draw as measurements:

- a box on one slice (a radiograph, a 2D slice, or a 3D box one slice thick): TID 1410 *Planar ROI
  Measurements*, the rectangle on that instance, with its area (mm²) when the source has a pixel spacing;
- a box over several slices of a series: TID 1411 *Volumetric ROI Measurements*, one rectangle per instance it
  spans, with its volume (mm³) from the pixel spacing and the distance between the instances.

Each group names the finding (SCT *Lesion*), the algorithm (name, version) and a tracking identifier
(``lesion box <k>``, the box's index in the JSON beside it, from 1); the device that made the report is the
observer.

Box convention at this boundary: MONAI ``StandardMode`` in voxel coordinates of the array MONAI's
``PydicomReader`` loads the source as, ``(x0, y0[, z0], x1, y1[, z1])`` with x = column, y = row, z = the
instance index in InstanceNumber order (:func:`~monai_wsol.writers.dicom_source.source_instances`), max corner
= last index + 1. DICOM pixel coordinates put (0, 0) at the top-left corner of the top-left pixel, (column,
row), so a box's rectangle is its corners as they are: the rectangle covers exactly the box's pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_wsol import __version__
from monai_wsol.writers.dicom_source import (
    DicomSource,
    import_highdicom,
    new_instance_fields,
    save_dicom,
    source_instances,
    source_name,
)

__all__ = ["write_dicom_sr", "read_sr_boxes"]


def _as_boxes(boxes: np.ndarray | torch.Tensor | Sequence[Sequence[float]], spatial_dims: int) -> np.ndarray:
    values = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes, float)
    return values.reshape(-1, 2 * spatial_dims).astype(float)


def _slice_spacing(datasets: Sequence[Any]) -> float | None:
    """Mean distance between neighbouring instances along the slice normal (``None`` for one instance)."""
    if len(datasets) < 2 or "ImagePositionPatient" not in datasets[0]:
        return None
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.sort(
        [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for ds in datasets]
    )
    return float(np.mean(np.diff(positions)))


def write_dicom_sr(
    boxes: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    source_dicom: DicomSource,
    out_path: str | os.PathLike,
    spatial_dims: int,
    algorithm_name: str = "monai_wsol",
    series_description: str = "monai_wsol lesion boxes",
    series_number: int = 9904,
    manufacturer: str = "monai_wsol",
) -> Path:
    """Write boxes as a TID 1500 Measurement Report referencing the source series, atomically.

    Args:
        boxes: ``(N, 2 * spatial_dims)`` MONAI ``StandardMode`` voxel boxes on the source array (module
            docstring), at least one (TID 1500 as highdicom builds it needs one measurement group).
        source_dicom: the source series folder, one DICOM file (2D), the series' files or its instances
            already read (:data:`~monai_wsol.writers.dicom_source.DicomSource`).
        out_path: the file to write.
        spatial_dims: 2 (one instance) or 3 (a series).
        algorithm_name, series_description, series_number, manufacturer: header and report fields.

    Returns:
        ``Path(out_path)``.

    Raises:
        ImportError: highdicom missing. ValueError: no box, or a box outside the source's pixels or
        instances.
    """
    hd = import_highdicom("write_dicom_sr")
    from pydicom.sr.codedict import codes

    if spatial_dims not in (2, 3):
        raise ValueError(f"write_dicom_sr: spatial_dims={spatial_dims} must be 2 or 3")
    datasets = source_instances(source_dicom, pixels=False)
    values = _as_boxes(boxes, spatial_dims)
    if spatial_dims == 2:
        values = np.concatenate(
            [values[:, :2], np.zeros((len(values), 1)), values[:, 2:], np.ones((len(values), 1))], 1
        )
    if len(values) == 0:
        raise ValueError(f"write_dicom_sr: no box to report for {source_name(source_dicom)}")
    limits = np.array([int(datasets[0].Columns), int(datasets[0].Rows), len(datasets)], float)
    outside = (
        (values[:, :3] < 0).any(1) | (values[:, 3:] > limits).any(1) | (values[:, 3:] <= values[:, :3]).any(1)
    )
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"write_dicom_sr: box {k} {values[k].tolist()} is empty or outside the source "
            f"{source_name(source_dicom)} "
            f"(columns, rows, instances) = {tuple(int(v) for v in limits)}"
        )
    spacing = getattr(datasets[0], "PixelSpacing", None)
    pixel_area = None if spacing is None else float(spacing[0]) * float(spacing[1])  # mm² (row x column)
    slice_spacing = _slice_spacing(datasets)
    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=__version__)

    groups = []
    for k, (x0, y0, z0, x1, y1, z1) in enumerate(values):
        first, last = int(np.floor(z0)), int(np.ceil(z1)) - 1
        rectangle = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], float)  # (column, row)
        regions = [
            hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=rectangle,
                source_image=hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=datasets[z].SOPClassUID,
                    referenced_sop_instance_uid=datasets[z].SOPInstanceUID,
                ),
            )
            for z in range(first, last + 1)
        ]
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"lesion box {k + 1}")
        common = dict(
            tracking_identifier=tracking,
            finding_type=codes.SCT.Lesion,
            algorithm_id=algorithm,
        )
        area = None if pixel_area is None else float((x1 - x0) * (y1 - y0) * pixel_area)
        if len(regions) == 1:
            measurements = (
                [] if area is None else [_measurement(hd, codes.SCT.Area, area, codes.UCUM.SquareMillimeter)]
            )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    referenced_region=regions[0], measurements=measurements or None, **common
                )
            )
        else:
            volume = None if area is None or slice_spacing is None else area * len(regions) * slice_spacing
            measurements = (
                []
                if volume is None
                else [_measurement(hd, codes.SCT.Volume, volume, codes.UCUM.CubicMillimeter)]
            )
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    referenced_regions=regions, measurements=measurements or None, **common
                )
            )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm_name, model_name=f"{algorithm_name} {__version__}"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=datasets,
        content=report,
        **new_instance_fields(hd, series_number, manufacturer, equipment=False),
        is_complete=True,
    )
    sr.SeriesDescription = series_description
    sr.SoftwareVersions = __version__
    return save_dicom(sr, out_path)


def _measurement(hd: Any, name: Any, value: float, unit: Any) -> Any:
    return hd.sr.Measurement(name=name, value=round(value, 3), unit=unit)


def read_sr_boxes(sr: str | os.PathLike | Any, source_dicom: DicomSource) -> np.ndarray:
    """The boxes of a report written by :func:`write_dicom_sr`, back in its convention: ``(N, 6)`` voxel boxes
    ``(x0, y0, z0, x1, y1, z1)`` on the source array, in the order of the tracking identifiers.

    A reader for checks and pipelines; it reads the ``SCOORD`` rectangles of each measurement group and maps
    their referenced instances to MONAI's z indices. ``sr`` is the report's file or its dataset.
    """
    import pydicom

    datasets = source_instances(source_dicom, pixels=False)
    z_of = {ds.SOPInstanceUID: z for z, ds in enumerate(datasets)}
    sr = sr if isinstance(sr, pydicom.Dataset) else pydicom.dcmread(sr)
    boxes: dict[int, list[float]] = {}

    def walk(items: Any, box: list[float] | None) -> None:
        for item in items:
            if item.ValueType == "CONTAINER" and box is None:
                found = _tracking_number(item)
                if found is not None:
                    boxes[found] = [np.inf, np.inf, np.inf, -np.inf, -np.inf, -np.inf]
                    walk(getattr(item, "ContentSequence", []), boxes[found])
                    continue
            if item.ValueType == "SCOORD" and box is not None:
                points = np.asarray(item.GraphicData, float).reshape(-1, 2)
                z = z_of[item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
                box[:3] = np.minimum(box[:3], [points[:, 0].min(), points[:, 1].min(), z]).tolist()
                box[3:] = np.maximum(box[3:], [points[:, 0].max(), points[:, 1].max(), z + 1]).tolist()
            walk(getattr(item, "ContentSequence", []), box)

    walk(sr.ContentSequence, None)
    return np.array([boxes[k] for k in sorted(boxes)], float).reshape(-1, 6)


def _tracking_number(item: Any) -> int | None:
    """The 0-based ``k`` of a measurement group tracked as ``lesion box <k + 1>``, else ``None``."""
    for child in getattr(item, "ContentSequence", []):
        if child.ValueType == "TEXT" and str(child.TextValue).startswith("lesion box "):
            return int(str(child.TextValue).rsplit(" ", 1)[1]) - 1
    return None
