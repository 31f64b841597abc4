"""Image readers and the loading transforms every workflow uses.

- :class:`SimpleITKReader`: a MONAI ``ImageReader`` for NRRD and MetaImage through SimpleITK (MONAI's
  ``ITKReader`` needs the 1.5 GB ``itk``; ``NrrdReader`` needs ``pynrrd`` and reads no MetaImage). The array
  is in MONAI's (x, y, z) order and the affine in RAS, like ``NibabelReader`` and ``PydicomReader`` give.
- :class:`DicomSeriesReader`: MONAI's ``PydicomReader`` that refuses a folder holding several series (naming
  the folder and the SeriesInstanceUIDs) and only claims DICOM inputs, so it can sit in front of the default
  readers.
- :class:`LoadImageChecked` / :class:`LoadImageCheckedd`: ``LoadImage`` / ``LoadImaged`` whose errors
  (truncated or unreadable files) name the file.
- :func:`make_load_transforms`: load + channel-first (+ orientation, spacing), the first transforms of the
  bundle's pipelines.

Intensities are never rescaled: 16-bit data and signed HU stay as they are (``dtype=float32`` is exact for
them; ``dtype=None`` keeps the file's own type).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
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


class ImageReadError(ValueError):
    """An image file or DICOM folder could not be read; the message names it."""


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


def dicom_series_files(folder: PathLike) -> list[Path]:
    """The DICOM files of ``folder`` (non-recursive), checked to form exactly one series.

    Raises:
        ImageReadError: no DICOM file, an unreadable header, or several SeriesInstanceUIDs (all named).
    """
    import pydicom

    folder = Path(folder)
    series: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        if not pydicom.misc.is_dicom(f):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception as e:  # pydicom raises several types for damaged headers
            raise ImageReadError(f"{f}: unreadable DICOM header ({type(e).__name__}: {e})") from e
        series[str(getattr(ds, "SeriesInstanceUID", "<no SeriesInstanceUID>"))].append(f)
    if not series:
        raise ImageReadError(f"{folder}: no DICOM file in this folder")
    if len(series) > 1:
        detail = "; ".join(
            f"{uid} ({len(files)} files, e.g. {files[0].name})" for uid, files in series.items()
        )
        raise ImageReadError(
            f"{folder}: the folder mixes {len(series)} DICOM series ({detail}); "
            "put each series in its own folder"
        )
    return next(iter(series.values()))


class DicomSeriesReader(PydicomReader):
    """MONAI's ``PydicomReader`` with two guards.

    - :meth:`verify_suffix` claims only folders and ``.dcm`` / ``.dicom`` / ``.ima`` files (or files with the
      DICM preamble), so it can be registered ahead of ``NibabelReader`` / ``PILReader``
      (``PydicomReader`` claims every file).
    - :meth:`read` refuses a folder with several series (:func:`dicom_series_files`), and
      :meth:`get_data` re-raises pixel decoding errors (truncated files) with the file names.

    The array is (x=column, y=row[, z]) with slices in InstanceNumber order, affine in RAS (MONAI's
    defaults ``swap_ij=True``, ``affine_lps_to_ras=True``); all ``PydicomReader`` arguments are accepted.
    """

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
        """As ``PydicomReader.read``, after checking every folder holds a single series."""
        for name in ensure_tuple(data):
            if Path(name).is_dir():
                dicom_series_files(name)
        try:
            return super().read(data, **kwargs)
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(f"{data}: unreadable DICOM ({type(e).__name__}: {e})") from e

    def get_data(self, data: Any) -> tuple[np.ndarray, dict]:
        """As ``PydicomReader.get_data``; errors name the files being decoded."""
        try:
            return super().get_data(data)
        except Exception as e:
            names = self.filenames if len(self.filenames) > 1 else self.filenames[0]
            raise ImageReadError(f"{names}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from e


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
    return ImageReadError(f"{name}: cannot read image ({type(e).__name__}: {e})")


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
