"""The CAM as a DICOM Secondary Capture overlay, for viewers that cannot show a DICOM-SEG (many PACS viewers).

:func:`overlay_rgb` draws one slice as a person reads it: the image in gray (1st to 99th percentile window),
the CAM blended on it in colour where it is high (blue -> red, its weight growing with the CAM, so low values
leave the image as it was), the mask's outline in green and the boxes in yellow. :func:`write_overlay_sc`
writes that picture as an RGB Secondary Capture (highdicom ``SCImage``) in the source's study, referencing the
source instance of the slice it shows (``SourceImageSequence``), in a series of its own.

Axes: the arrays are MONAI's (x = column, y = row) of the source, as loaded by MONAI's ``PydicomReader``; the
picture is ``(rows, columns, 3)``, the source's own frame, so it lines up with the image it was drawn from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_wsol import __version__
from monai_wsol.io_utils import atomic_path

__all__ = ["overlay_rgb", "write_overlay_sc"]

#: RGB of the mask outline and of the box outlines
MASK_COLOUR = (0, 255, 0)
BOX_COLOUR = (255, 255, 0)


def _jet(values: np.ndarray) -> np.ndarray:
    """(...) in [0, 1] -> (..., 3) in [0, 1]: blue, cyan, yellow, red (a piecewise-linear jet)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peak at 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def overlay_rgb(
    image: np.ndarray,
    cam: np.ndarray,
    mask: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]] = (),
    alpha: float = 0.5,
) -> np.ndarray:
    """One slice's overlay picture, ``(rows, columns, 3)`` uint8 (see the module docstring).

    Args:
        image: (X, Y) intensities, any range (windowed between its 1st and 99th percentiles).
        cam: (X, Y) CAM in [0, 1] on the image grid.
        mask: (X, Y) binary mask.
        boxes: (N, 4) boxes in MONAI ``StandardMode`` voxel coordinates ``[x0, y0, x1, y1)`` of the array's
            axes; outlined on the pixels along their edges.
        alpha: the largest weight of the CAM colour (where the CAM is 1).
    """
    from scipy.ndimage import binary_erosion

    image, cam, mask = np.asarray(image, float), np.asarray(cam, float), np.asarray(mask) > 0
    if not image.shape == cam.shape == mask.shape or image.ndim != 2:
        raise ValueError(
            f"overlay_rgb: image, CAM and mask must be 2D of one shape, got {image.shape}, {cam.shape}, "
            f"{mask.shape}."
        )
    low, high = np.percentile(image, [1.0, 99.0])
    gray = np.clip((image - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(image)
    weight = (alpha * np.clip(cam, 0.0, 1.0))[..., None]
    rgb = gray[..., None] * (1.0 - weight) + _jet(cam) * weight
    picture = np.round(rgb * 255.0).astype(np.uint8)
    outline = mask & ~binary_erosion(mask, border_value=0)
    picture[outline] = MASK_COLOUR
    size_x, size_y = image.shape
    for box in np.asarray(boxes, float).reshape(-1, 4):
        x0, y0 = (int(np.clip(np.floor(v), 0, n - 1)) for v, n in zip(box[:2], (size_x, size_y), strict=True))
        x1, y1 = (
            int(np.clip(np.ceil(v) - 1, 0, n - 1)) for v, n in zip(box[2:], (size_x, size_y), strict=True)
        )
        picture[x0 : x1 + 1, [y0, y1]] = BOX_COLOUR
        picture[[x0, x1], y0 : y1 + 1] = BOX_COLOUR
    return np.ascontiguousarray(picture.transpose(1, 0, 2))  # (X, Y) -> (rows, columns)


def write_overlay_sc(
    picture: np.ndarray,
    source_instance: str | os.PathLike,
    out_path: str | os.PathLike,
    series_description: str = "monai_wsol lesion overlay",
    series_number: int = 9902,
    manufacturer: str = "monai_wsol",
    caption: str = "",
) -> Path:
    """Write ``picture`` (``(rows, columns, 3)`` uint8, e.g. :func:`overlay_rgb`) as a Secondary Capture in
    the study of ``source_instance`` (the DICOM file it was drawn on), atomically.

    Raises:
        ImportError: highdicom missing. ValueError: the picture's size is not the source's.
    """
    try:
        import highdicom as hd
    except ImportError as e:  # pragma: no cover - the dicom extra installs it
        raise ImportError("write_overlay_sc needs highdicom (pip install 'monai_wsol[dicom]')") from e
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    source = pydicom.dcmread(source_instance, stop_before_pixels=True)
    picture = np.asarray(picture)
    expected = (int(source.Rows), int(source.Columns), 3)
    if picture.shape != expected or picture.dtype != np.uint8:
        raise ValueError(
            f"write_overlay_sc: picture {picture.shape} {picture.dtype}, expected {expected} uint8 for the "
            f"source {source_instance}."
        )
    spacing = getattr(source, "PixelSpacing", None)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=picture,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        pixel_spacing=None if spacing is None else tuple(float(v) for v in spacing),
        patient_orientation=_patient_orientation(source),
    )
    sc.SeriesDescription = series_description
    if getattr(source, "Laterality", None):
        sc.Laterality = source.Laterality  # the new series' (Type 2C, paired body parts): the source's
    sc.SoftwareVersions = __version__
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = (caption or "class activation map, mask outline and boxes")[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = DicomSequence([reference])
    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".dcm") as tmp:
        sc.save_as(tmp)
    return out_path


def _patient_orientation(ds: object) -> tuple[str, str]:
    """The Patient Orientation (0020,0020) of an image's row and column directions, from its Image
    Orientation (Patient): the dominant patient axes, e.g. ``("L", "P")``; ``("", "")`` without it."""
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None:
        return ("", "")
    letters = (("L", "R"), ("P", "A"), ("H", "F"))  # +x left, +y posterior, +z head (LPS)

    def name(direction: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(direction)))
        return letters[axis][0] if direction[axis] > 0 else letters[axis][1]

    values = np.asarray(iop, float)
    return (name(values[:3]), name(values[3:]))
