"""The source series of a derived DICOM object: its instances in MONAI's order and an array's frames on them.

Every derived object the writers make (DICOM-SEG, Parametric Map, Structured Report, Secondary Capture) refers
to the instances of the series it was computed from. MONAI's ``PydicomReader`` loads a series as
``(x = column, y = row, z)`` with the slices in InstanceNumber order; :func:`source_instances` returns the
instances in that same order, so ``instances[k]`` is the source of the array's slice ``k``.
:func:`frames_on_source` turns such an array into ``(frames, rows, columns)`` with one frame per instance,
ordered together with the instances along the slice normal (what highdicom's multi-frame objects expect).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DicomSource",
    "import_highdicom",
    "source_instances",
    "source_name",
    "frames_on_source",
    "require_frame_of_reference",
    "new_instance_fields",
    "save_dicom",
]

#: a derived object's source: the series folder, one DICOM file (2D), the series' files, or its instances
#: already read (pydicom datasets, so that several objects written for one input read the series once)
DicomSource = str | os.PathLike | Sequence[str | os.PathLike | Any]


def import_highdicom(caller: str) -> Any:
    """highdicom, or an ImportError naming ``caller`` and the extra that installs it."""
    try:
        import highdicom as hd
    except ImportError as e:
        raise ImportError(f"{caller} needs highdicom (pip install 'monai_wsol[dicom]')") from e
    return hd


def source_name(source: DicomSource) -> str:
    """A short name of a source for messages: its path, or the folder of its instances and their count."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    items = list(source)
    if not items:
        return "(no instances)"
    first = getattr(items[0], "filename", items[0])
    return f"{Path(str(first)).parent} ({len(items)} instances)"


def source_instances(source: DicomSource, pixels: bool = True) -> list[Any]:
    """Read the source DICOM instances, sorted by InstanceNumber: the order of the z axis of MONAI's
    ``PydicomReader``.

    Args:
        source: the series folder, one DICOM file, the series' files, or its instances already read
            (pydicom datasets, returned sorted without reading anything).
        pixels: read the pixel data too (a SEG or Parametric Map needs it for the source's image
            attributes; a report's references need the headers only).

    Raises:
        ValueError: the files belong to more than one series.
    """
    import pydicom

    from monai_wsol.data.readers import dicom_series_files

    if isinstance(source, (str, os.PathLike)):
        files = dicom_series_files(source) if Path(source).is_dir() else [Path(source)]
        datasets = [pydicom.dcmread(f, stop_before_pixels=not pixels) for f in files]
    else:
        items = list(source)
        datasets = [
            f if isinstance(f, pydicom.Dataset) else pydicom.dcmread(f, stop_before_pixels=not pixels)
            for f in items
        ]
    uids = {ds.SeriesInstanceUID for ds in datasets}
    if len(uids) > 1:
        raise ValueError(
            f"source DICOM files {source_name(source)}: {len(uids)} series given ({sorted(uids)}); one is "
            "referenced"
        )
    return sorted(datasets, key=lambda ds: int(getattr(ds, "InstanceNumber", 0)))


def _slice_position(ds: Any) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))


def require_frame_of_reference(datasets: Sequence[Any], source: object, what: str) -> None:
    """Raise a ValueError naming ``source`` when its instances lack the patient geometry ``what`` needs
    (highdicom's own message does not say which source is at fault)."""
    missing = [
        n
        for n in ("FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient")
        if n not in datasets[0]
    ]
    if missing:
        raise ValueError(
            f"source_dicom {source}: {', '.join(missing)} missing, required to reference it from {what}"
        )


def frames_on_source(
    array: np.ndarray | torch.Tensor, datasets: Sequence[Any], source: object
) -> tuple[list[Any], np.ndarray]:
    """Map an array on the source grid to one frame per source instance.

    Args:
        array: ``(X, Y[, Z])`` or ``(1, X, Y[, Z])`` on the grid MONAI's ``PydicomReader`` loads the source
            with.
        datasets: the source instances in MONAI's z order (:func:`source_instances`).
        source: the source's name, for messages.

    Returns:
        ``(instances, frames)``: the instances and the ``(instances, rows, columns)`` frames, both ordered
        along the slice normal.

    Raises:
        ValueError: the array does not match the source geometry.
    """
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    in_plane = (int(datasets[0].Columns), int(datasets[0].Rows))
    if values.ndim in (3, 4) and values.shape[0] == 1 and values.shape[1:3] == in_plane:
        values = values[0]  # drop MONAI's channel axis
    if values.ndim == 2:
        values = values[..., None]
    expected = (*in_plane, len(datasets))
    if values.shape != expected:
        raise ValueError(
            f"array shape {values.shape} does not match the source series {source_name(source)} "
            f"(columns, rows, instances) = {expected}"
        )
    frames = np.ascontiguousarray(values.transpose(2, 1, 0))  # (instances, rows, columns)
    order = np.argsort([_slice_position(ds) for ds in datasets], kind="stable") if len(datasets) > 1 else [0]
    return [datasets[i] for i in order], frames[np.asarray(order)]


def new_instance_fields(hd: Any, series_number: int, manufacturer: str, equipment: bool = True) -> dict:
    """The constructor arguments every derived object of the writers shares: a new series and instance (new
    UIDs, instance number 1), the manufacturer and, for the image objects (``equipment``), the software."""
    from monai_wsol import __version__

    fields = {
        "series_instance_uid": hd.UID(),
        "series_number": series_number,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": manufacturer,
    }
    if equipment:
        fields.update(
            manufacturer_model_name="monai_wsol", software_versions=__version__, device_serial_number="0"
        )
    return fields


def save_dicom(dataset: Any, out_path: str | os.PathLike) -> Path:
    """Write a DICOM dataset atomically (a temporary name, then renamed); returns ``Path(out_path)``."""
    from monai_wsol.io_utils import atomic_path

    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".dcm") as tmp:
        dataset.save_as(tmp)
    return out_path
