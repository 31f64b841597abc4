"""Image readers and the loading transforms every workflow uses.

- :class:`SimpleITKReader`: a MONAI ``ImageReader`` for NRRD and MetaImage through SimpleITK (MONAI's
  ``ITKReader`` needs the 1.5 GB ``itk``; ``NrrdReader`` needs ``pynrrd`` and reads no MetaImage). The array
  is in MONAI's (x, y, z) order and the affine in RAS, like ``NibabelReader`` and ``PydicomReader`` give.
- :class:`DicomSeriesReader`: MONAI's ``PydicomReader`` that refuses a folder holding several series (naming
  the folder and the SeriesInstanceUIDs), names the corrupt instance of a series (and builds the series from
  the others when they still form a regular series), refuses DICOM objects without pixel data
  (:class:`NotAnImageError`), and only claims DICOM inputs, so it can sit in front of the default readers.
- :func:`scan_dicom_folder`: the DICOM files of a folder sorted into image series, unreadable files and
  objects without pixel data (DICOMDIR, structured reports, RT plans).
- :class:`LoadImageChecked` / :class:`LoadImageCheckedd`: ``LoadImage`` / ``LoadImaged`` whose errors
  (truncated or unreadable files) name the file.
- :func:`make_load_transforms`: load + channel-first (+ orientation, spacing), the first transforms of the
  bundle's pipelines.

Intensities are never rescaled: 16-bit data and signed HU stay as they are (``dtype=float32`` is exact for
them; ``dtype=None`` keeps the file's own type).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data import ImageReader, PydicomReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format, orientation_ras_lps
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Orientationd, Spacingd
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple, optional_import

sitk, has_sitk = optional_import("SimpleITK")

__all__ = [
    "ImageReadError",
    "NotAnImageError",
    "DicomFolderScan",
    "scan_dicom_folder",
    "SimpleITKReader",
    "DicomSeriesReader",
    "LoadImageChecked",
    "LoadImageCheckedd",
    "dicom_series_files",
    "make_load_transforms",
    "default_readers",
    "select_reader",
    "SITK_SUFFIXES",
    "DICOM_SUFFIXES",
]

SITK_SUFFIXES = ("nrrd", "nhdr", "mha", "mhd")
DICOM_SUFFIXES = ("dcm", "dicom", "ima")


logger = logging.getLogger(__name__)

#: DICOM elements holding an image (a file with none of them is no image: DICOMDIR, SR, RT plan, ...)
PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class ImageReadError(ValueError):
    """An image file or DICOM folder could not be read; the message names it."""


class NotAnImageError(ImageReadError):
    """The file is readable but holds no image (a DICOM object without pixel data: DICOMDIR, structured
    report, RT plan or structure set); batch inference skips such inputs with a note."""


class SimpleITKReader(ImageReader):
    """Read NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) files with SimpleITK.

    Output of :meth:`get_data`: array (X, Y[, Z][, C]) (SimpleITK's numpy view is (Z, Y, X) and is
    transposed) and a meta dict with ``affine`` / ``original_affine`` (RAS; SimpleITK's geometry is LPS),
    ``spatial_shape``, ``original_channel_dim`` (``nan`` or ``-1`` for vector images) and ``space``.

    Args:
        channel_dim: channel axis of the output if the caller knows better (default: from the pixel type).
        affine_lps_to_ras: convert the affine to RAS like ``NibabelReader`` (default ``True``).
        kwargs: passed to ``SimpleITK.ReadImage``.
    """

    def __init__(self, channel_dim: int | None = None, affine_lps_to_ras: bool = True, **kwargs: Any) -> None:
        if not has_sitk:
            raise ImportError("SimpleITKReader needs SimpleITK: pip install SimpleITK")
        self.channel_dim = channel_dim
        self.affine_lps_to_ras = affine_lps_to_ras
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """``True`` for NRRD / MetaImage names (all of them, for a list)."""
        return has_sitk and is_supported_format(filename, SITK_SUFFIXES)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Read one file (returns a ``SimpleITK.Image``) or several (a list)."""
        images = []
        kwargs_ = {**self.kwargs, **kwargs}
        for name in ensure_tuple(data):
            try:
                images.append(sitk.ReadImage(str(name), **kwargs_))
            except RuntimeError as e:
                raise ImageReadError(
                    f"{name}: SimpleITK cannot read it: {str(e).strip().splitlines()[-1]}"
                ) from e
        return images[0] if len(images) == 1 else images

    @staticmethod
    def geometry(img: Any, lps_to_ras: bool = True) -> tuple[tuple[int, ...], np.ndarray]:
        """Spatial shape (x, y[, z]) and voxel-to-world affine of a SimpleITK image.

        ``img`` is a ``SimpleITK.Image`` or an ``ImageFileReader``.
        """
        ndim = img.GetDimension()
        spacing = np.asarray(img.GetSpacing(), dtype=float)
        direction = np.asarray(img.GetDirection(), dtype=float).reshape(ndim, ndim)
        affine = np.eye(ndim + 1)
        affine[:ndim, :ndim] = direction * spacing[None, :]
        affine[:ndim, ndim] = img.GetOrigin()
        return tuple(int(s) for s in img.GetSize()), (orientation_ras_lps(affine) if lps_to_ras else affine)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Array (X, Y[, Z][, C]) and meta dict; several images are stacked on a new first axis."""
        arrays, compatible_meta = [], {}
        # a SimpleITK.Image is iterable (over its pixels): ensure_tuple would unpack it
        for i in img if isinstance(img, (list, tuple)) else [img]:
            ndim = i.GetDimension()
            array = sitk.GetArrayFromImage(i)  # (Z, Y, X[, C])
            axes = tuple(range(ndim))[::-1] + tuple(range(ndim, array.ndim))
            array = np.ascontiguousarray(array.transpose(axes))
            shape, affine = self.geometry(i, self.affine_lps_to_ras)
            meta = {
                MetaKeys.AFFINE: affine.copy(),
                MetaKeys.ORIGINAL_AFFINE: affine,
                MetaKeys.SPATIAL_SHAPE: np.asarray(shape),
                MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
                "spacing": np.asarray(i.GetSpacing()),
            }
            if self.channel_dim is not None:
                meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            else:
                meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if array.ndim == ndim else -1
            arrays.append(array)
            _copy_compatible_dict(meta, compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta


def _sop_class_name(ds: Any) -> str | None:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(ds, "SOPClassUID", None) or getattr(meta, "MediaStorageSOPClassUID", None)
    name = getattr(uid, "name", None) if uid is not None else None
    return str(name) if name else None


def without_pixel_data(path: PathLike, ds: Any) -> ImageReadError | None:
    """``None`` when ``ds`` has pixel data; else the error to raise: a :class:`NotAnImageError` for an object
    that is no image by its SOP class (DICOMDIR, structured report, RT plan, ...), an
    :class:`ImageReadError` for an image object without pixel data or a header that parses to no SOP class
    (a damaged file)."""
    if any(tag in ds for tag in PIXEL_DATA_TAGS):
        return None
    name = _sop_class_name(ds)
    if name == "Media Storage Directory Storage":
        return NotAnImageError(f"{path}: a DICOMDIR (directory index), not an image")
    if name and "Image" not in name and "." not in name:  # a named non-image class; "." is an unknown UID
        return NotAnImageError(f"{path}: a DICOM {name} object without pixel data, not an image")
    if name:
        return ImageReadError(f"{path}: a DICOM {name} object without pixel data (cut short or damaged?)")
    return ImageReadError(f"{path}: a DICOM file without pixel data or SOP class (damaged header?)")


@dataclass
class DicomFolderScan:
    """The DICOM files directly in a folder, sorted by what they are (file names in sorted order).

    Attributes:
        folder: the folder scanned.
        series: image instances (files with pixel data) by SeriesInstanceUID.
        unreadable: ``(file, reason)`` of DICOM files whose header does not parse.
        not_images: ``(file, reason)`` of DICOM files without pixel data (DICOMDIR, SR, RT plan...).
        others: files that are not DICOM (no ``DICM`` preamble).
        datasets: the parsed headers of the image instances; their pixel data is read from the file when
            first accessed (pydicom's deferred reading).
    """

    folder: Path
    series: dict[str, list[Path]] = field(default_factory=dict)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    not_images: list[tuple[Path, str]] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)
    datasets: dict[Path, Any] = field(default_factory=dict)


def scan_dicom_folder(folder: PathLike) -> DicomFolderScan:
    """Read the headers of the DICOM files directly in ``folder`` (non-recursive; pixel data is skipped, not
    decoded) and sort them into image series, unreadable files and objects without pixel data."""
    import pydicom

    folder = Path(folder)
    scan = DicomFolderScan(folder)
    series: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        if not pydicom.misc.is_dicom(f):
            scan.others.append(f)
            continue
        try:
            # defer_size: large values (the pixel data) are skipped over, so their presence is known unread
            ds = pydicom.dcmread(f, defer_size="64 KB")
        except Exception as e:  # pydicom raises several types for damaged headers
            scan.unreadable.append((f, f"unreadable DICOM header ({short_error(e)})"))
            continue
        problem = without_pixel_data(f, ds)
        if isinstance(problem, NotAnImageError):
            scan.not_images.append((f, str(problem)))
            continue
        if problem is not None:
            scan.unreadable.append((f, str(problem).removeprefix(f"{f}: ")))
            continue
        series[str(getattr(ds, "SeriesInstanceUID", "<no SeriesInstanceUID>"))].append(f)
        scan.datasets[f] = ds
    scan.series = dict(series)
    return scan


def _one_series(scan: DicomFolderScan) -> list[Path]:
    """The files of the folder's only image series; raises when there are none or several."""
    if len(scan.series) > 1:
        detail = "; ".join(
            f"{uid} ({len(files)} files, e.g. {files[0].name})" for uid, files in scan.series.items()
        )
        raise ImageReadError(
            f"{scan.folder}: the folder mixes {len(scan.series)} DICOM series ({detail}); "
            "put each series in its own folder"
        )
    if not scan.series:
        if scan.unreadable:
            f, reason = scan.unreadable[0]
            raise ImageReadError(f"{f}: {reason}")
        if scan.not_images:
            raise NotAnImageError(
                f"{scan.folder}: no DICOM image in this folder ({len(scan.not_images)} DICOM file(s) without "
                f"pixel data, e.g. {scan.not_images[0][0].name})"
            )
        raise ImageReadError(f"{scan.folder}: no DICOM file in this folder")
    return next(iter(scan.series.values()))


def dicom_series_files(folder: PathLike) -> list[Path]:
    """The DICOM image files of ``folder`` (non-recursive), checked to form exactly one series.

    DICOM files without pixel data (a DICOMDIR, structured reports) are left out.

    Raises:
        ImageReadError: no DICOM image, an unreadable header (the file named), or several
            SeriesInstanceUIDs (all named).
    """
    scan = scan_dicom_folder(folder)
    files = _one_series(scan)
    if scan.unreadable:
        f, reason = scan.unreadable[0]
        raise ImageReadError(f"{f}: {reason}")
    return files


def _slice_positions(datasets: Sequence[Any]) -> np.ndarray | None:
    """Positions of the slices along the slice normal (mm), or ``None`` without the geometry tags."""
    try:
        iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        positions = [float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))) for d in datasets]
        return np.asarray(positions)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def series_inconsistency(datasets: Sequence[Any]) -> str | None:
    """Why DICOM instances (in InstanceNumber order, the order MONAI stacks them) do not form one regular
    volume, or ``None`` when they do: at least two instances, one image size, one orientation, and evenly
    spaced slices (a missing middle instance leaves a gap)."""
    if len(datasets) < 2:
        return f"{len(datasets)} instance(s) left, too few for a series"
    sizes = {(int(getattr(d, "Rows", 0)), int(getattr(d, "Columns", 0))) for d in datasets}
    if len(sizes) > 1:
        return f"the instances have different sizes {sorted(sizes)}"
    orientations = [np.asarray(getattr(d, "ImageOrientationPatient", [0] * 6), float) for d in datasets]
    if any(not np.allclose(o, orientations[0], atol=1e-4) for o in orientations):
        return "the instances have different orientations"
    positions = _slice_positions(datasets)
    if positions is None:
        numbers = [int(getattr(d, "InstanceNumber", 0)) for d in datasets]
        gaps = np.diff(numbers)
        return None if np.all(gaps == 1) else f"the InstanceNumbers {numbers} are not consecutive"
    steps = np.abs(np.diff(positions))
    step = float(np.min(steps))
    if step <= 1e-6 or not np.allclose(steps, step, rtol=0.05, atol=1e-3):
        return f"the slices are not evenly spaced (steps from {step:.3g} to {float(np.max(steps)):.3g} mm)"
    return None


class DicomSeriesReader(PydicomReader):
    """MONAI's ``PydicomReader`` with guards that name the file at fault.

    - :meth:`verify_suffix` claims only folders and ``.dcm`` / ``.dicom`` / ``.ima`` files (or files with the
      DICM preamble), so it can be registered ahead of ``NibabelReader`` / ``PILReader``
      (``PydicomReader`` claims every file).
    - :meth:`read` refuses a folder with several series (:func:`scan_dicom_folder`) and leaves out DICOM files
      without pixel data; :meth:`get_data` refuses a DICOM object without pixel data
      (:class:`NotAnImageError`) and re-raises pixel decoding errors with the file names.
    - A corrupt instance of a series (unreadable header, pixel data that does not decode) is named. When the
      other instances still form a regular series (:func:`series_inconsistency`: e.g. the corrupt one was the
      first or last slice) the series is built from them with a warning, and the files used are recorded in
      the meta dict under ``"dicom_source_files"`` (newline-separated; a DICOM-SEG must reference exactly
      them); otherwise the series is refused with an :class:`ImageReadError` naming the corrupt instance.

    The array is (x=column, y=row[, z]) with slices in InstanceNumber order, affine in RAS (MONAI's
    defaults ``swap_ij=True``, ``affine_lps_to_ras=True``); all ``PydicomReader`` arguments are accepted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._series_folder: Path | None = None
        self._corrupt: list[tuple[Path, str]] = []

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """``True`` for folders and DICOM file names (all of them, for a list)."""
        import pydicom

        def is_dicom(name: PathLike) -> bool:
            p = Path(name)
            if p.is_dir() or is_supported_format(p, DICOM_SUFFIXES):
                return True
            return p.is_file() and not p.suffix and pydicom.misc.is_dicom(p)

        return all(is_dicom(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """As ``PydicomReader.read``; a single series folder is read instance by instance, so that a corrupt
        instance is named rather than failing the whole series (see the class docstring)."""
        self._series_folder, self._corrupt = None, []
        names = ensure_tuple(data)
        if len(names) == 1 and Path(names[0]).is_dir():
            return self._read_series(Path(names[0]), **kwargs)
        for name in names:
            if Path(name).is_dir():
                dicom_series_files(name)
        try:
            return super().read(data, **kwargs)
        except ImageReadError:
            raise
        except Exception as e:
            name = names[0] if len(names) == 1 else list(names)
            raise ImageReadError(f"{name}: unreadable DICOM ({short_error(e)})") from e

    def _read_series(self, folder: Path, **kwargs: Any) -> Any:
        import pydicom

        scan = scan_dicom_folder(folder)
        files = _one_series(scan)
        corrupt = list(scan.unreadable)
        kwargs_ = {**self.kwargs, **kwargs}
        datasets, names = [], []
        for f in files:
            try:
                # the scan's headers (pixel data deferred) unless reading options were given
                datasets.append(pydicom.dcmread(f, **kwargs_) if kwargs_ else scan.datasets[f])
                names.append(str(f))
            except Exception as e:
                corrupt.append((f, f"unreadable DICOM ({short_error(e)})"))
        if not datasets:
            f, reason = corrupt[0]
            raise ImageReadError(f"{folder}: no readable instance in this series (e.g. {f.name}: {reason})")
        if not corrupt and len(datasets) > 1:
            # MONAI stacks the instances in InstanceNumber order on one evenly spaced grid: a missing middle
            # instance or mixed orientations would put every slice after it at a wrong position, silently
            ordered = sorted(datasets, key=lambda d: int(getattr(d, "InstanceNumber", 0)))
            problem = series_inconsistency(ordered)
            if problem is not None:
                raise ImageReadError(
                    f"{folder}: the {len(datasets)} instances are no regular volume ({problem}); an instance "
                    "missing from the middle of the series, or two series in one folder? give the whole "
                    "series"
                )
        self._series_folder, self._corrupt = folder, corrupt
        # the state PydicomReader.read leaves for get_data
        self.has_series = len(datasets) > 1
        self.filenames = [names] if self.has_series else names
        return datasets if self.has_series else datasets[0]

    def get_data(self, data: Any) -> tuple[np.ndarray, dict]:
        """As ``PydicomReader.get_data``; errors name the files being decoded, and a series with a corrupt
        instance is handled as the class docstring says."""
        # a pydicom Dataset is iterable (over its elements): never ensure_tuple it
        datasets = data if isinstance(data, list) else [data]
        for ds, name in zip(datasets, _flat_names(self.filenames), strict=False):
            problem = None if isinstance(ds, list) else without_pixel_data(name, ds)
            if problem is not None:
                raise problem
        if self._series_folder is not None:
            return self._get_series_data(data)
        try:
            return super().get_data(data)
        except Exception as e:
            names = self.filenames if len(self.filenames) > 1 else self.filenames[0]
            raise ImageReadError(f"{names}: cannot decode DICOM pixel data ({short_error(e)})") from e

    def _get_series_data(self, data: Any) -> tuple[np.ndarray, dict]:
        folder = self._series_folder
        assert folder is not None
        datasets = list(data) if isinstance(data, list) else [data]
        names = _flat_names(self.filenames)
        corrupt = list(self._corrupt)
        if not corrupt:
            try:
                return super().get_data(data)
            except Exception as e:
                first_error = e
        else:
            first_error = None
        # find the instances whose pixel data does not decode, then use the rest if they form a series
        good: list[tuple[Any, str]] = []
        for ds, name in zip(datasets, names, strict=True):
            try:
                self._get_array_data(ds, name)
            except Exception as e:
                corrupt.append((Path(name), f"pixel data does not decode ({short_error(e)})"))
            else:
                good.append((ds, name))
        if not corrupt:  # every instance decodes on its own: the failure is the series' own
            raise ImageReadError(
                f"{folder}: cannot build the series ({type(first_error).__name__}: {first_error})"
            ) from first_error
        named = ", ".join(f"{f.name} ({reason})" for f, reason in corrupt[:3])
        more = f" and {len(corrupt) - 3} more" if len(corrupt) > 3 else ""
        ordered = sorted(good, key=lambda g: int(getattr(g[0], "InstanceNumber", 0)))
        problem = series_inconsistency([ds for ds, _ in ordered])
        if problem is not None:
            raise ImageReadError(
                f"{folder}: corrupt DICOM instance {named}{more}; the series is not used, since the other "
                f"{len(good)} instance(s) are no regular series without it ({problem}); replace the corrupt "
                "file, or remove it with the instances on one side of it"
            ) from first_error
        self.has_series = len(good) > 1
        self.filenames = [[n for _, n in good]]
        array, meta = super().get_data([ds for ds, _ in good])
        meta["dicom_source_files"] = "\n".join(n for _, n in good)
        logger.warning(
            "%s: corrupt DICOM instance %s%s left out; the series is built from the other %d instances",
            folder,
            named,
            more,
            len(good),
        )
        return array, meta


def short_error(e: BaseException) -> str:
    """``Type: first clause of the message``, for one-line reports (pydicom's messages run to several
    sentences, some with a traceback inside)."""
    text = str(e).split(" - ")[0].splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:160]}"


def _flat_names(filenames: Sequence[Any]) -> list[str]:
    """``PydicomReader.filenames`` (names, or one list of names for a series) as a flat list."""
    out: list[str] = []
    for f in filenames:
        out.extend(str(x) for x in f) if isinstance(f, list) else out.append(str(f))
    return out


def default_readers() -> list[ImageReader]:
    """The readers :class:`LoadImageChecked` tries, by file name, before MONAI's own choice.

    MONAI's own choice: ``NibabelReader`` for NIfTI, ``PILReader`` for PNG/JPEG, ``NumpyReader``.
    These readers: SimpleITK for NRRD/MHA (when installed), DICOM.
    """
    readers: list[ImageReader] = [DicomSeriesReader()]
    if has_sitk:
        readers.insert(0, SimpleITKReader())
    return readers


def select_reader(filename: Sequence[PathLike] | PathLike) -> ImageReader | None:
    """The first of :func:`default_readers` whose ``verify_suffix`` accepts ``filename``, else ``None``."""
    for reader in default_readers():
        if reader.verify_suffix(filename):
            return reader
    return None


def _read_error(filename: Any, e: Exception) -> ImageReadError:
    if isinstance(e, ImageReadError):
        return e
    name = filename if isinstance(filename, (str, os.PathLike)) else list(ensure_tuple(filename))
    return ImageReadError(f"{name}: cannot read image ({short_error(e)})")


class LoadImageChecked(LoadImage):
    """``monai.transforms.LoadImage`` whose read errors (:class:`ImageReadError`) name the file.

    Built with ``reader=None`` it first routes NRRD/MHA and DICOM inputs by name to :func:`select_reader`
    (``LoadImage`` given a list of readers would instead try them in turn, and SimpleITK reads NIfTI too), and
    leaves every other input to MONAI's suffix-based choice.
    """

    def __call__(self, filename: Sequence[PathLike] | PathLike, reader: ImageReader | None = None):
        try:
            if reader is None and self.auto_select:
                reader = select_reader(filename)
            return super().__call__(filename, reader)
        except Exception as e:
            raise _read_error(filename, e) from e


class LoadImageCheckedd(LoadImaged):
    """``monai.transforms.LoadImaged`` whose read errors (:class:`ImageReadError`) name the file.
    Takes ``LoadImaged``'s arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # LoadImaged builds a plain LoadImage; LoadImageChecked adds no state, only the error wrapping,
        # so switching the class keeps every constructor argument LoadImaged handled.
        self._loader.__class__ = LoadImageChecked


def make_load_transforms(
    keys: KeysCollection,
    spatial_dims: int,
    reader: ImageReader | str | Sequence[ImageReader] | None = None,
    spacing: Sequence[float] | float | None = None,
    orientation: str | None = None,
    mask_keys: KeysCollection = (),
    dtype: DtypeLike = np.float32,
    allow_missing_keys: bool = False,
) -> Compose:
    """Load images as channel-first ``MetaTensor`` s, optionally reoriented and resampled.

    Args:
        keys: keys of the items holding paths (files or DICOM series folders).
        spatial_dims: 2 or 3; the length ``spacing`` and ``orientation`` must have.
        reader: a MONAI reader (instance, list, or name); default: chosen from the file name
            (:func:`select_reader` for NRRD/MHA/DICOM, MONAI's own choice otherwise).
        spacing: target voxel size in mm (``Spacingd``), ``None`` keeps the native grid.
        orientation: axis codes such as ``"RAS"`` (3D) or ``"RA"`` (2D) for ``Orientationd``; ``None`` keeps
            it.
        mask_keys: keys resampled with nearest-neighbour interpolation (masks, labels).
        dtype: loaded dtype; ``float32`` is exact for 16-bit and HU data, ``None`` keeps the file's type.
        allow_missing_keys: skip keys absent from an item.

    Returns:
        ``Compose`` of :class:`LoadImageCheckedd`, ``EnsureChannelFirstd`` [, ``Orientationd``] [,
        ``Spacingd``]; outputs (C, X, Y[, Z]).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims={spatial_dims} must be 2 or 3")
    keys = ensure_tuple(keys)
    mask_keys = ensure_tuple(mask_keys)
    unknown = set(mask_keys) - set(keys)
    if unknown:
        raise ValueError(f"mask_keys {sorted(unknown)} are not in keys {list(keys)}")
    xforms: list = [
        LoadImageCheckedd(
            keys, reader=reader, dtype=dtype, image_only=True, allow_missing_keys=allow_missing_keys
        ),
        EnsureChannelFirstd(keys, allow_missing_keys=allow_missing_keys),
    ]
    if orientation is not None:
        if len(orientation) != spatial_dims:
            raise ValueError(f"orientation={orientation!r} needs {spatial_dims} axis codes (spatial_dims)")
        xforms.append(Orientationd(keys, axcodes=orientation, allow_missing_keys=allow_missing_keys))
    if spacing is not None:
        pixdim = ensure_tuple(spacing) if isinstance(spacing, Sequence) else (float(spacing),) * spatial_dims
        if len(pixdim) != spatial_dims:
            raise ValueError(f"spacing={spacing} needs {spatial_dims} values (spatial_dims)")
        modes = ["nearest" if k in mask_keys else "bilinear" for k in keys]
        xforms.append(Spacingd(keys, pixdim=pixdim, mode=modes, allow_missing_keys=allow_missing_keys))
    return Compose(xforms)
