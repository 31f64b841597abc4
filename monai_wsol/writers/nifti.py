"""NIfTI outputs: ``save_nifti`` (thin over MONAI ``SaveImage``) and ``write_nifti`` (plain nibabel, for
arrays).

Both keep the affine given to them (no resampling) and write atomically.  ``write_nifti`` is
:func:`monai_wsol.io_utils.atomic_write_nifti`, re-exported: it lives below the data layer, whose generator
writes NIfTI too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage
from monai.utils import ImageMetaKey

from monai_wsol.io_utils import atomic_path
from monai_wsol.io_utils import atomic_write_nifti as write_nifti

__all__ = ["save_nifti", "write_nifti", "NIFTI_EXT"]

NIFTI_EXT = ".nii.gz"


def _strip_ext(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".dcm", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def save_nifti(
    img: torch.Tensor | np.ndarray,
    path_or_dir: str | os.PathLike,
    affine: np.ndarray | torch.Tensor | None = None,
    postfix: str = "",
    output_dtype: np.dtype | type | None = np.float32,
    channel_dim: int | None = 0,
) -> Path:
    """Save a channel-first image as NIfTI with MONAI's ``SaveImage`` (``NibabelWriter``), keeping its affine.

    Args:
        img: ``MetaTensor`` (C, X, Y[, Z]) whose ``meta["affine"]`` is written, or an array with ``affine``.
            With ``channel_dim=None`` the input has no channel axis.
        path_or_dir: the output file (``.nii.gz`` / ``.nii``), or an existing folder (or a path ending with
            ``/``): the file is then named after ``meta["filename_or_obj"]`` plus ``_{postfix}``.
        affine: 4 x 4 (or 3 x 3 for 2D) voxel-to-world matrix; overrides the MetaTensor's.
        postfix: appended to the input file stem when ``path_or_dir`` is a folder.
        output_dtype: dtype written (``None`` keeps the input's; use ``np.uint8`` for masks).
        channel_dim: channel axis of ``img`` or ``None``.

    Returns:
        the written path.
    """
    meta: dict = dict(img.meta) if isinstance(img, MetaTensor) else {}
    if affine is not None:
        meta["affine"] = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    if "affine" not in meta:
        raise ValueError("save_nifti: img has no meta['affine']; pass affine=")
    array = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img))
    target = Path(path_or_dir)
    if target.is_dir() or str(path_or_dir).endswith(("/", os.sep)):
        source = meta.get(ImageMetaKey.FILENAME_OR_OBJ)
        if not source:
            raise ValueError(
                f"save_nifti: {path_or_dir} is a folder "
                "but img has no meta['filename_or_obj'] to name the file"
            )
        stem = _strip_ext(Path(str(source).rstrip("/")).name)
        target = target / f"{stem}{'_' + postfix if postfix else ''}{NIFTI_EXT}"
    name = target.name
    ext = ".nii.gz" if name.endswith(".nii.gz") else ".nii" if name.endswith(".nii") else None
    if ext is None:
        raise ValueError(f"save_nifti: {target} must end with .nii.gz or .nii")
    spatial = tuple(array.shape[1:] if channel_dim is not None else array.shape)
    if (
        len(spatial) == 2
        and np.asarray(meta["affine"]).shape == (4, 4)
        and (channel_dim is None or len(array) == 1)
    ):
        # MONAI keeps a 2D NIfTI's 4 x 4 affine, and NibabelWriter then resamples the 2D array as 3D and fails
        # (MONAI 1.6.1): write it with nibabel, which stores the 4 x 4 affine as it is
        plain = (array[0] if channel_dim is not None else array).cpu().numpy()
        return write_nifti(
            plain if output_dtype is None else plain.astype(output_dtype), meta["affine"], target
        )
    # spatial_shape tells SaveImage whether a channel axis is present
    meta["spatial_shape"] = spatial
    saver = SaveImage(
        output_ext=ext,
        output_dtype=output_dtype,
        resample=False,
        separate_folder=False,
        print_log=False,
        channel_dim=channel_dim,
        squeeze_end_dims=True,
    )
    with atomic_path(target, suffix=ext) as tmp:
        saver(array, meta_data=meta, filename=str(tmp)[: -len(ext)])
    return target
