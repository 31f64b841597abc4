"""Decathlon-style datalists, validated entry by entry before any training or inference starts.

``{"training": [{"image": ..., "label": ..., "mask": ..., "boxes": ...}], "validation": [...], "test":
[...]}``; paths are relative to ``base_dir`` (default: the datalist's folder) or absolute; ``image`` may be a
file or a DICOM series folder; ``mask`` and ``boxes`` are optional (evaluation only).

Every problem is reported as ``<split>[<index>] (image <path>): <what is wrong>``, all of them at once:

- :func:`validate_datalist` checks several splits of a training datalist together (labels against the
  class count, a split holding one class only, an empty split, non-finite voxels) and raises one
  :class:`DatalistError` listing every bad entry;
- :func:`load_datalist` checks one split (the inference and evaluation lists); with ``skip_bad=True`` bad
  entries are logged and dropped instead.

Headers are read for the checks that need only them (existence, grid, box bounds); voxels are decoded where
asked (``check_voxels`` / ``read_data``), which catches truncated files and NaN/Inf voxels. Entries are
checked in a thread pool: decompression and the finiteness test release the GIL.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

__all__ = [
    "DatalistError",
    "DatalistProblem",
    "load_datalist",
    "validate_datalist",
    "probe_image",
    "ImageGrid",
]

logger = logging.getLogger(__name__)

ImageGrid = tuple[tuple[int, ...], np.ndarray]  # spatial shape in MONAI's (x, y[, z]) order, RAS affine

#: splits with fewer entries are checked in the calling thread, larger ones in a thread pool
_POOL_THRESHOLD = 16


@dataclass(frozen=True)
class DatalistProblem:
    """One finding of a datalist check: the split, the entry's index (``None`` for the whole split), the
    entry's image path (resolved; ``None`` when the entry has none) and what is wrong."""

    split: str
    index: int | None
    image: str | None
    message: str

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.split}: {self.message}"
        return f"{self.split}[{self.index}] (image {self.image or '<missing>'}): {self.message}"


class DatalistError(ValueError):
    """A datalist or some of its entries are invalid; the message names the datalist, and every bad entry
    by split, index and image path (``problems`` holds them one by one)."""

    def __init__(self, message: str, problems: Sequence[DatalistProblem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def _lower_name(path: Path) -> str:
    return path.name.lower()


def _is_dicom_file(path: Path) -> bool:
    """Extension-less DICOM files (common on PACS exports) carry the DICM preamble."""
    import pydicom

    return path.is_file() and not path.suffix and pydicom.misc.is_dicom(path)


@dataclass
class _Probe:
    """What reading one image told: its grid and, when the voxels were decoded and checked, the number of
    NaN and infinite voxels."""

    grid: ImageGrid
    n_nan: int = 0
    n_inf: int = 0


def _count_non_finite(array: np.ndarray) -> tuple[int, int]:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return 0, 0  # integer voxels are always finite
    finite = np.isfinite(array)
    if finite.all():
        return 0, 0
    n_nan = int(np.isnan(array).sum())
    return n_nan, int(array.size - finite.sum()) - n_nan


class _NotPlain(Exception):
    """The quick NIfTI path does not apply (or suspects damage): nibabel decides."""


def _probe_nifti_quick(path: Path, read_data: bool, check_finite: bool) -> _Probe:
    """A single-file NIfTI-1 read with the header parsed by nibabel and the voxels by ``numpy.frombuffer``.

    About five times faster than ``nibabel.load`` + ``dataobj`` on small images (the time is then the
    decompression). Raises :class:`_NotPlain` (or any decoding error) for anything it does not vouch for: a
    NIfTI-2 or pair header, a stream shorter than the header says, a gzip trailer that does not record the
    expected size (header-only mode); the caller then lets nibabel read the file.
    """
    import nibabel as nib

    gz = _lower_name(path).endswith(".gz")
    if read_data:
        blob = path.read_bytes()
        raw = gzip.decompress(blob) if gz else blob  # gzip checks the CRC and length of every member
        header_block = raw[:348]
    else:
        with (gzip.open if gz else open)(path, "rb") as f:
            header_block = f.read(348)
    if len(header_block) < 348 or int.from_bytes(header_block[:4], "little") not in (348, 348 << 24):
        raise _NotPlain("not a NIfTI-1 header")
    header = nib.Nifti1Header(header_block, check=False)
    if header["magic"].item() != b"n+1":
        raise _NotPlain("not a single-file NIfTI-1")
    shape = tuple(int(s) for s in header.get_data_shape())
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    count = int(np.prod(shape))
    grid = tuple(shape[:3]), np.asarray(header.get_best_affine(), dtype=float)
    if read_data:
        voxels = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)  # ValueError when short
        return _Probe(grid, *(_count_non_finite(voxels) if check_finite else (0, 0)))
    expected = offset + count * dtype.itemsize
    size = path.stat().st_size
    if gz:
        with open(path, "rb") as f:
            f.seek(max(size - 4, 0))
            isize = int.from_bytes(f.read(4), "little")
        if isize != expected % (1 << 32):  # a truncated stream, or a multi-member gzip
            raise _NotPlain("gzip trailer does not record the expected size")
    elif size < expected:
        raise _NotPlain("file shorter than its header says")
    return _Probe(grid)


def _probe_nifti(path: Path, read_data: bool, check_finite: bool) -> _Probe:
    """:func:`_probe_nifti_quick`, or nibabel (voxels decoded) where it declines: nibabel's verdict and error
    message count."""
    try:
        return _probe_nifti_quick(path, read_data, check_finite)
    except Exception:  # damaged, truncated, NIfTI-2, ...: nibabel names the problem below
        pass
    import nibabel as nib

    img = nib.load(str(path))
    grid = tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=float)
    voxels = np.asarray(img.dataobj.get_unscaled())  # raises on a truncated or corrupt stream
    return _Probe(grid, *(_count_non_finite(voxels) if check_finite and read_data else (0, 0)))


def _probe(path: str | os.PathLike, read_data: bool, check_finite: bool = False) -> _Probe:
    """Open an image: its grid, and with ``read_data`` its voxels decoded (with ``check_finite``, counted)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    name = _lower_name(path)
    try:
        if path.is_dir() or name.endswith(tuple(f".{s}" for s in DICOM_SUFFIXES)) or _is_dicom_file(path):
            return _probe_dicom(path, read_data, check_finite)
        if name.endswith((".nii", ".nii.gz")):
            return _probe_nifti(path, read_data, check_finite)
        if name.endswith(tuple(f".{s}" for s in SITK_SUFFIXES)):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            grid = SimpleITKReader.geometry(reader)
            if not read_data:
                return _Probe(grid)
            image = reader.Execute()
            counts = _count_non_finite(sitk.GetArrayViewFromImage(image)) if check_finite else (0, 0)
            return _Probe(grid, *counts)
        from PIL import Image

        with Image.open(path) as im:
            size = im.size  # (width, height) = MONAI's (x, y)
            counts = (0, 0)
            if read_data:
                im.load()
                if check_finite and im.mode == "F":
                    counts = _count_non_finite(np.asarray(im))
        return _Probe(((int(size[0]), int(size[1])), np.eye(3)), *counts)
    except ImageReadError:
        raise
    except Exception as e:  # every library has its own exception types for damaged files
        raise ImageReadError(f"{path}: unreadable or truncated ({type(e).__name__}: {e})") from None


def probe_image(path: str | os.PathLike, read_data: bool = True) -> ImageGrid:
    """Open an image (or DICOM series folder) and return its grid as MONAI would load it.

    Args:
        path: NIfTI, NRRD/MHA, DICOM file or series folder, PNG/JPEG.
        read_data: also decode the voxels, which catches every truncated file. Without it, NIfTI files are
            still tested for truncation from their size or gzip trailer (and decoded only when that test
            fails).

    Returns:
        ``(spatial_shape, affine)``; spatial shape in MONAI's (x, y[, z]) order, affine in RAS.

    Raises:
        ImageReadError: the file is missing, unreadable, truncated, or a folder mixes DICOM series.
    """
    return _probe(path, read_data).grid


def _probe_dicom(path: Path, read_data: bool, check_finite: bool) -> _Probe:
    from monai_wsol.data.readers import DicomSeriesReader

    if path.is_dir():
        dicom_series_files(path)
    reader = DicomSeriesReader()
    if not read_data:
        import pydicom

        files = dicom_series_files(path) if path.is_dir() else [path]
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        shape = (int(ds.Columns), int(ds.Rows)) + ((len(files),) if len(files) > 1 else ())
        affine = np.full((len(shape) + 1, len(shape) + 1), np.nan)  # affine unknown without decoding
        return _Probe((shape, affine))
    array, meta = reader.get_data(reader.read(str(path)))
    counts = _count_non_finite(array) if check_finite else (0, 0)
    grid = tuple(int(s) for s in meta["spatial_shape"]), np.asarray(meta["affine"], dtype=float)
    return _Probe(grid, *counts)


def _check_label(label: Any, num_classes: int | None) -> str | None:
    values = label if isinstance(label, list) else [label]
    classes = f" (classes 0..{num_classes - 1}, num_classes={num_classes})" if num_classes else ""
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v) or int(v) < 0:
            return (
                f"label {label!r} ({type(label).__name__}) must be a non-negative integer class index "
                f'(or a list of them){classes}; write it as a JSON number, e.g. 1, not "1"'
            )
        if num_classes is not None and int(v) >= num_classes:
            return f"label {label!r} is outside the class set{classes}; fix the label or set num_classes"
    return None


def _check_boxes(boxes: Any, shape: Sequence[int] | None = None) -> list[str]:
    """Problems of ``boxes`` (MONAI StandardMode along the array axes, max corner exclusive) on an image of
    spatial ``shape`` (``None``: shape unknown, only the form is checked)."""
    if not isinstance(boxes, list):
        return [f"boxes must be a list of [min..., max...] boxes, got {type(boxes).__name__}"]
    problems = []
    for b in boxes:
        if (
            not isinstance(b, list)
            or len(b) not in (4, 6)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        ):
            problems.append(f"box {b!r} must have 4 (xyxy) or 6 (xyzxyz) numbers")
            continue
        d = len(b) // 2
        if any(b[i] > b[i + d] for i in range(d)):
            problems.append(f"box {b!r} has a min corner beyond its max corner (negative size)")
            continue
        if shape is None:
            continue
        if len(shape) < d or any(int(s) != 1 for s in shape[d:]):
            problems.append(f"box {b!r} has {d} spatial dimensions but the image has shape {tuple(shape)}")
        elif any(b[i] < 0 or b[i + d] > shape[i] for i in range(d)):
            problems.append(
                f"box {b!r} lies (partly) outside the image of shape {tuple(shape[:d])} (boxes are "
                "[min..., max...] along the array axes, max corner exclusive)"
            )
    return problems


def _same_grid(a: ImageGrid, b: ImageGrid, atol: float = 1e-3) -> bool:
    if tuple(a[0]) != tuple(b[0]):
        return False
    if np.isnan(a[1]).any() or np.isnan(b[1]).any() or a[1].shape != b[1].shape:
        return True  # geometry unknown (header-only DICOM probe) or 2D vs 3D affine: shape check only
    return bool(np.allclose(a[1], b[1], atol=atol))


def _resolve(value: Any, base: Path) -> str:
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (base / p))


@dataclass(frozen=True)
class _Rules:
    base: Path
    require_label: bool
    num_classes: int | None
    read_data: bool
    check_finite: bool
    image_key: str
    label_key: str
    mask_key: str
    path_keys: tuple[str, ...]


_NAN_IMAGE = "one NaN makes the whole percentile-scaled image NaN, and training stops on a non-finite loss"
_NAN_MASK = "the localisation metrics on it are undefined"


def _non_finite(what: str, probe: _Probe, consequence: str) -> str | None:
    if not (probe.n_nan or probe.n_inf):
        return None
    counts = f"{probe.n_nan} NaN and {probe.n_inf} infinite voxels"
    return f"{what} has {counts}: {consequence}; repair or remove the file"


def _check_entry(item: Any, rules: _Rules) -> tuple[dict | None, list[str]]:
    """One entry: its paths made absolute (``None`` when it cannot be used) and every problem found."""
    if not isinstance(item, dict):
        return None, [f"entry must be an object, got {type(item).__name__}"]
    problems: list[str] = []
    out = dict(item)
    grid = None
    if item.get(rules.image_key) is None:
        problems.append(f"no {rules.image_key!r} key")
    else:
        out[rules.image_key] = _resolve(item[rules.image_key], rules.base)
        try:
            probe = _probe(out[rules.image_key], rules.read_data, rules.check_finite)
            grid = probe.grid
            problems += [p for p in [_non_finite("the image", probe, _NAN_IMAGE)] if p]
        except ImageReadError as e:
            message = str(e)  # the entry's line already names the image: drop the leading path
            prefix = f"{out[rules.image_key]}: "
            problems.append(message[len(prefix) :] if message.startswith(prefix) else message)
    if rules.label_key in item:
        label_problem = _check_label(item[rules.label_key], rules.num_classes)
        if label_problem:
            problems.append(label_problem)
    elif rules.require_label:
        problems.append(f"no {rules.label_key!r} (image-level label) and require_label=True")
    if item.get(rules.mask_key) is not None:
        out[rules.mask_key] = _resolve(item[rules.mask_key], rules.base)
        try:
            mask = _probe(out[rules.mask_key], rules.read_data, rules.check_finite)
            problems += [p for p in [_non_finite(f"mask {out[rules.mask_key]}", mask, _NAN_MASK)] if p]
            if grid is not None and not _same_grid(grid, mask.grid):
                problems.append(
                    f"mask {out[rules.mask_key]} grid (shape {tuple(mask.grid[0])}, affine "
                    f"{mask.grid[1].round(3).tolist()}) differs from the image grid (shape {tuple(grid[0])}, "
                    f"affine {grid[1].round(3).tolist()})"
                )
        except ImageReadError as e:
            problems.append(f"mask: {e}")
    if "boxes" in item:
        problems += _check_boxes(item["boxes"], None if grid is None else grid[0])
    for key in rules.path_keys:
        if item.get(key) is not None:
            out[key] = _resolve(item[key], rules.base)
    return (None if problems else out), problems


def _check_split(items: list, split: str, rules: _Rules, workers: int | None) -> tuple[list, list]:
    """``(valid entries, problems)`` of one split, entries checked in a thread pool when there are many."""
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(items) >= _POOL_THRESHOLD:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda it: _check_entry(it, rules), items))
    else:
        results = [_check_entry(it, rules) for it in items]
    valid, problems = [], []
    for i, (item, (out, found)) in enumerate(zip(items, results, strict=True)):
        image = item.get(rules.image_key) if isinstance(item, dict) else None
        image = _resolve(image, rules.base) if image is not None else None
        problems += [DatalistProblem(split, i, image, p) for p in found]
        if out is not None:
            valid.append(out)
    return valid, problems


def _read_datalist(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatalistError(f"{path}: cannot read the datalist ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatalistError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}; fix the file (a truncated "
            "copy ends early)"
        ) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise DatalistError(f"{path}: the datalist must be a JSON object of splits, got {kind}")
    return data


def _split_items(data: dict, path: Path, split: str) -> list:
    if split not in data:
        raise DatalistError(f"{path}: no split {split!r} (top-level keys: {sorted(data)})")
    items = data[split]
    if not isinstance(items, list):
        raise DatalistError(f"{path}: split {split!r} must be a list of items, got {type(items).__name__}")
    return items


def _report(path: Path, problems: Sequence[DatalistProblem], what: str) -> str:
    entries = {(p.split, p.index) for p in problems if p.index is not None}
    head = f"{path}: {len(problems)} problem{'s' * (len(problems) > 1)}"
    if entries:
        head += f" in {len(entries)} entr{'ies' if len(entries) > 1 else 'y'}"
    return "\n  ".join([f"{head} ({what}):", *map(str, problems)])


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
    check_finite: bool = False,
) -> list[dict]:
    """Load one split of a datalist, validating every item.

    Checks per item: the image exists and reads (header and, with ``read_data``, voxels; DICOM folders hold
    one series); the label is present (if ``require_label``) and a non-negative integer (< ``num_classes``);
    the optional mask exists, reads and has the image's grid (shape and affine); optional boxes are well
    formed, of non-negative size and inside the image.

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
        check_finite: with ``read_data``, NaN/Inf voxels are errors too.

    Returns:
        the valid items, with image / mask / ``path_keys`` paths made absolute; other fields unchanged.

    Raises:
        DatalistError: unreadable datalist, missing split, or (without ``skip_bad``) bad items, every one
            named on its own line.
    """
    path = Path(path)
    items = _split_items(_read_datalist(path), path, split)
    rules = _Rules(
        base=Path(base_dir) if base_dir is not None else path.parent,
        require_label=require_label,
        num_classes=num_classes,
        read_data=read_data,
        check_finite=check_finite and read_data,
        image_key=image_key,
        label_key=label_key,
        mask_key=mask_key,
        path_keys=tuple(path_keys),
    )
    valid, problems = _check_split(items, split, rules, workers=None)
    if problems and not skip_bad:
        if len(problems) == 1:
            raise DatalistError(f"{path}: {problems[0]}", problems)
        raise DatalistError(_report(path, problems, "fix or remove these entries"), problems)
    for p in problems:
        logger.warning("skipping bad item: %s: %s", path, p)
    return valid


def _label_key_of(label: Any) -> Any:
    return tuple(label) if isinstance(label, list) else int(label)


def validate_datalist(
    path: str | os.PathLike,
    splits: Sequence[str] = ("training", "validation"),
    base_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    require_label: bool = True,
    allow_empty: bool = False,
    allow_single_class: bool = False,
    check_voxels: bool = True,
    workers: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str = "mask",
) -> dict[str, list[dict]]:
    """Check every entry of ``splits`` of a training datalist and report all problems at once.

    Per entry (as :func:`load_datalist`): an ``image`` key; the image and the optional mask exist and read;
    the label is an integer class index below ``num_classes``; the mask has the image's grid; boxes are
    well formed, of non-negative size and inside the image; with ``check_voxels``, the voxels decode (no
    truncated file) and are finite (no NaN/Inf). Per split: it is not empty (unless ``allow_empty``), and
    its labels hold at least two classes (unless ``allow_single_class``).

    Args:
        path: the datalist JSON.
        splits: the splits to check; each must be present.
        base_dir: folder relative paths are resolved against (default: the datalist's folder).
        num_classes: the classifier's class count; labels must lie in ``0 .. num_classes - 1``.
        require_label: entries without a label are errors.
        allow_empty: an empty split is not an error.
        allow_single_class: a split whose labels are all one class is not an error (a warning is logged).
        check_voxels: decode every image and mask (truncation, NaN/Inf); ``False`` reads headers only (NIfTI
            files are still tested for truncation from their size or gzip trailer).
        workers: threads checking entries (default ``min(8, cpu_count)``).
        image_key, label_key, mask_key: entry keys.

    Returns:
        ``{split: entries}`` with image and mask paths made absolute.

    Raises:
        DatalistError: an unreadable datalist, a missing split, or any problem; the message has one line per
            problem (``<split>[<index>] (image <path>): <what>``), and ``problems`` holds them.
    """
    path = Path(path)
    data = _read_datalist(path)
    rules = _Rules(
        base=Path(base_dir) if base_dir is not None else path.parent,
        require_label=require_label,
        num_classes=num_classes,
        read_data=check_voxels,
        check_finite=check_voxels,
        image_key=image_key,
        label_key=label_key,
        mask_key=mask_key,
        path_keys=(),
    )
    missing = [s for s in splits if s not in data]
    if missing:
        raise DatalistError(
            f"{path}: no split {', '.join(map(repr, missing))} (top-level keys: {sorted(data)}); a training "
            f"datalist needs {', '.join(map(repr, splits))}"
        )
    result: dict[str, list[dict]] = {}
    problems: list[DatalistProblem] = []
    for split in splits:
        items = _split_items(data, path, split)
        valid, found = _check_split(items, split, rules, workers)
        problems += found
        result[split] = valid
        if not items and not allow_empty:
            problems.append(DatalistProblem(split, None, None, "the split is empty; add entries to it"))
        labels = [
            _label_key_of(it[label_key])
            for it in items
            if isinstance(it, dict) and label_key in it and _check_label(it[label_key], None) is None
        ]
        classes = sorted(set(labels), key=str)
        if len(labels) >= 1 and len(classes) == 1:
            consequence = (
                "a classifier trained on one class learns nothing that separates classes, so its CAM "
                "localises nothing"
                if split == "training"
                else "validation metrics that compare classes (val_auc, val_acc) say nothing and the best "
                "checkpoint (key_metric) is chosen on them"
            )
            message = (
                f"all {len(labels)} labels are class {classes[0]}: {consequence}; add entries of the other "
                "class(es), or set allow_single_class=true to train anyway"
            )
            if allow_single_class:
                logger.warning("%s: %s: %s (allow_single_class=true)", path, split, message.split("; add")[0])
            else:
                problems.append(DatalistProblem(split, None, None, message))
        elif split == "training" and num_classes and 1 < len(classes) < num_classes:
            logger.warning(
                "%s: training labels hold %d of the %d classes (%s)", path, len(classes), num_classes, classes
            )
    if problems:
        raise DatalistError(_report(path, problems, "fix or remove these entries"), problems)
    return result
