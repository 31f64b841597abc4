"""Decathlon-style datalists, validated item by item before any training or inference starts.

``{"training": [{"image": ..., "label": ..., "mask": ..., "boxes": ...}], "validation": [...], "test":
[...]}``;
paths are relative to ``base_dir`` (default: the datalist's folder) or absolute; ``image`` may be a file or a
DICOM series folder; ``mask`` and ``boxes`` are optional (evaluation only).

Every problem is reported as ``<datalist>: <split>[<index>] (image <path>): <what is wrong>``; with
``skip_bad=True`` such items are logged and dropped instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_wsol.data.readers import (
    DICOM_SUFFIXES,
    SITK_SUFFIXES,
    ImageReadError,
    SimpleITKReader,
    dicom_series_files,
)

__all__ = ["DatalistError", "load_datalist", "probe_image", "ImageGrid"]

logger = logging.getLogger(__name__)

ImageGrid = tuple[tuple[int, ...], np.ndarray]  # spatial shape in MONAI's (x, y[, z]) order, RAS affine


class DatalistError(ValueError):
    """A datalist or one of its items is invalid; the message names the datalist, the item and the file."""


def _lower_name(path: Path) -> str:
    return path.name.lower()


def _is_dicom_file(path: Path) -> bool:
    """Extension-less DICOM files (common on PACS exports) carry the DICM preamble."""
    import pydicom

    return path.is_file() and not path.suffix and pydicom.misc.is_dicom(path)


def probe_image(path: str | os.PathLike, read_data: bool = True) -> ImageGrid:
    """Open an image (or DICOM series folder) and return its grid as MONAI would load it.

    Args:
        path: NIfTI, NRRD/MHA, DICOM file or series folder, PNG/JPEG.
        read_data: also decode the voxels, which catches truncated files (headers alone often parse).

    Returns:
        ``(spatial_shape, affine)``; spatial shape in MONAI's (x, y[, z]) order, affine in RAS.

    Raises:
        ImageReadError: the file is missing, unreadable, truncated, or a folder mixes DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    name = _lower_name(path)
    try:
        if path.is_dir() or name.endswith(tuple(f".{s}" for s in DICOM_SUFFIXES)) or _is_dicom_file(path):
            return _probe_dicom(path, read_data)
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            if read_data:
                np.asarray(img.dataobj)
            return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=float)
        if name.endswith(tuple(f".{s}" for s in SITK_SUFFIXES)):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if read_data:
                reader.Execute()
            return SimpleITKReader.geometry(reader)
        from PIL import Image

        with Image.open(path) as im:
            size = im.size  # (width, height) = MONAI's (x, y)
            if read_data:
                im.load()
        return (int(size[0]), int(size[1])), np.eye(3)
    except ImageReadError:
        raise
    except Exception as e:  # every library has its own exception types for damaged files
        raise ImageReadError(f"{path}: unreadable or truncated ({type(e).__name__}: {e})") from e


def _probe_dicom(path: Path, read_data: bool) -> ImageGrid:
    from monai_wsol.data.readers import DicomSeriesReader

    if path.is_dir():
        dicom_series_files(path)
    reader = DicomSeriesReader()
    if not read_data:
        import pydicom

        files = dicom_series_files(path) if path.is_dir() else [path]
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        shape = (int(ds.Columns), int(ds.Rows)) + ((len(files),) if len(files) > 1 else ())
        return shape, np.full((len(shape) + 1, len(shape) + 1), np.nan)  # affine unknown without decoding
    _, meta = reader.get_data(reader.read(str(path)))
    return tuple(int(s) for s in meta["spatial_shape"]), np.asarray(meta["affine"], dtype=float)


def _check_label(label: Any, num_classes: int | None) -> str | None:
    values = label if isinstance(label, list) else [label]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v) or int(v) < 0:
            return f"label {label!r} must be a non-negative integer (or a list of them)"
        if num_classes is not None and int(v) >= num_classes:
            return f"label {label!r} is out of range for num_classes={num_classes}"
    return None


def _check_boxes(boxes: Any) -> str | None:
    if not isinstance(boxes, list):
        return f"boxes must be a list of [min..., max...] boxes, got {type(boxes).__name__}"
    for b in boxes:
        if not isinstance(b, list) or len(b) not in (4, 6):
            return f"box {b!r} must have 4 (xyxy) or 6 (xyzxyz) numbers"
        d = len(b) // 2
        if any(b[i] > b[i + d] for i in range(d)):
            return f"box {b!r} has a min corner beyond its max corner"
    return None


def _same_grid(a: ImageGrid, b: ImageGrid, atol: float = 1e-3) -> bool:
    if tuple(a[0]) != tuple(b[0]):
        return False
    if np.isnan(a[1]).any() or np.isnan(b[1]).any() or a[1].shape != b[1].shape:
        return True  # geometry unknown (header-only DICOM probe) or 2D vs 3D affine: shape check only
    return bool(np.allclose(a[1], b[1], atol=atol))


def _resolve(value: Any, base: Path) -> str:
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (base / p))


def load_datalist(
    path: str | os.PathLike,
    split: str,
    base_dir: str | os.PathLike | None = None,
    require_label: bool = True,
    skip_bad: bool = False,
    num_classes: int | None = None,
    read_data: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str = "mask",
    path_keys: Sequence[str] = (),
) -> list[dict]:
    """Load one split of a datalist, validating every item.

    Checks per item: the image exists and reads (header and, with ``read_data``, voxels; DICOM folders hold
    one series); the label is present (if ``require_label``) and a non-negative integer (< ``num_classes``);
    the optional mask exists, reads and has the image's grid (shape and affine); optional boxes are well
    formed.

    Args:
        path: the datalist JSON.
        split: ``"training"``, ``"validation"``, ``"test"`` or any other top-level key holding a list.
        base_dir: folder relative paths are resolved against (default: the datalist's folder).
        require_label: items without ``label_key`` are errors (inference lists may set ``False``).
        skip_bad: log (warning) and drop bad items instead of raising.
        num_classes: upper bound for labels.
        read_data: decode images and masks during the check (catches truncated files; costs a read).
        image_key, label_key, mask_key: item keys.
        path_keys: further keys whose values are paths to resolve (no check).

    Returns:
        the valid items, with image / mask / ``path_keys`` paths made absolute; other fields unchanged.

    Raises:
        DatalistError: unreadable datalist, missing split, or (without ``skip_bad``) the first bad item.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatalistError(f"{path}: cannot read the datalist ({e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatalistError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, dict) or split not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatalistError(f"{path}: no split {split!r} (top-level keys: {keys})")
    items = data[split]
    if not isinstance(items, list):
        raise DatalistError(f"{path}: split {split!r} must be a list of items, got {type(items).__name__}")
    base = Path(base_dir) if base_dir is not None else path.parent
    out: list[dict] = []
    for i, item in enumerate(items):
        where = f"{path}: {split}[{i}]"
        try:
            out.append(
                _validate_item(
                    item,
                    base,
                    require_label,
                    num_classes,
                    read_data,
                    image_key,
                    label_key,
                    mask_key,
                    path_keys,
                )
            )
        except (DatalistError, ImageReadError) as e:
            image = item.get(image_key) if isinstance(item, dict) else None
            msg = f"{where} (image {_resolve(image, base) if image is not None else '<missing>'}): {e}"
            if not skip_bad:
                raise DatalistError(msg) from e
            logger.warning("skipping bad item: %s", msg)
    return out


def _validate_item(
    item: Any,
    base: Path,
    require_label: bool,
    num_classes: int | None,
    read_data: bool,
    image_key: str,
    label_key: str,
    mask_key: str,
    path_keys: Sequence[str],
) -> dict:
    if not isinstance(item, dict):
        raise DatalistError(f"item must be an object, got {type(item).__name__}")
    if item.get(image_key) is None:
        raise DatalistError(f"no {image_key!r} key")
    out = dict(item)
    out[image_key] = _resolve(item[image_key], base)
    grid = probe_image(out[image_key], read_data=read_data)
    if label_key in item:
        problem = _check_label(item[label_key], num_classes)
        if problem:
            raise DatalistError(problem)
    elif require_label:
        raise DatalistError(f"no {label_key!r} (image-level label) and require_label=True")
    if item.get(mask_key) is not None:
        out[mask_key] = _resolve(item[mask_key], base)
        try:
            mask_grid = probe_image(out[mask_key], read_data=read_data)
        except ImageReadError as e:
            raise DatalistError(f"mask: {e}") from e
        if not _same_grid(grid, mask_grid):
            raise DatalistError(
                f"mask {out[mask_key]} grid (shape {tuple(mask_grid[0])}, "
                f"affine {mask_grid[1].round(3).tolist()}) "
                f"differs from the image grid (shape {tuple(grid[0])}, affine {grid[1].round(3).tolist()})"
            )
    if "boxes" in item:
        problem = _check_boxes(item["boxes"])
        if problem:
            raise DatalistError(problem)
    for key in path_keys:
        if item.get(key) is not None:
            out[key] = _resolve(item[key], base)
    return out
