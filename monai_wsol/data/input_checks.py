"""Checks that an image fits the network, run right after loading, with errors that say what to do.

:class:`InputChecksd` refuses (with an :class:`InputCheckError` naming the input) what the network cannot
take, or takes it in the documented way:

- **spatial dims**: a 3D volume given to a 2D model goes through it slice by slice when ``slice_axis`` is
  set (:class:`monai_wsol.extractors.SliceBySliceExtractor`), and is refused otherwise, naming both ways (a
  slice axis, or a 3D model trained with ``configs/train_3d.json``); a 2D image given to a 3D model is
  refused. A volume with a single slice (X, Y, 1) is a 2D image: the slice axis is dropped (affine kept for
  the remaining axes).
- **channels**: a colour photograph (PNG/JPEG/TIFF/BMP, RGB or RGBA, or gray + alpha) given to a
  one-channel model is converted to grayscale with the ITU-R 601 luma weights (PIL's ``"L"``; alpha is
  dropped) and a warning; any other channel mismatch is refused.
- **non-finite voxels**: an image with NaN or infinite voxels is refused, with their count. Percentile
  scaling and the CAM would turn a single NaN into a map of NaN, and replacing them would localise on
  invented values: fix the file (e.g. ``numpy.nan_to_num``) and run it again.
- **size**: an image smaller than the network's minimum input (``min_size`` voxels along every spatial
  axis the network sees, i.e. in-plane for a volume run slice by slice; see
  :func:`monai_wsol.engines.batch.min_input_size`) is refused, with the minimum; it is not padded,
  since the map of a padded image is mostly the map of the padding.

:func:`insert_after_loading` places the checks right after the loading transforms of a preprocessing
``Compose`` (before orientation, resampling and intensity scaling).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform

__all__ = ["InputCheckError", "InputChecksd", "insert_after_loading", "PHOTO_SUFFIXES", "LUMA_WEIGHTS"]

logger = logging.getLogger(__name__)

#: file endings of colour photographs, the only inputs converted to grayscale
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: ITU-R 601-2 luma weights of R, G, B (PIL's ``convert("L")``)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: the config a 3D model is trained and run with
CONFIG_3D = "configs/train_3d.json"


class InputCheckError(ValueError):
    """An image does not fit the network; the message names the image and says what to do."""


def _source(img: Any, data: Mapping[Hashable, Any], key: Hashable) -> str:
    if isinstance(img, MetaTensor) and img.meta.get("filename_or_obj"):
        return str(img.meta["filename_or_obj"])
    return str(data.get(f"{key}_path", key))


def _shape(spatial: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in spatial)


class InputChecksd(MapTransform):
    """Check (and where documented, adapt) channel-first images for a network; see the module docstring.

    Args:
        keys: the image keys.
        spatial_dims: the network's spatial dims (2 or 3).
        in_channels: the network's input channels.
        min_size: the smallest input the network takes along each spatial axis (``None``: not checked).
        slice_axis: for a 2D model, the array axis a volume is cut along to run slice by slice (0, 1, 2 or
            -1 for the last); ``None`` refuses volumes.
        allow_missing_keys: skip keys absent from the data.

    Raises:
        InputCheckError: the image cannot go to the network; the message names it and says what to do.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int,
        in_channels: int = 1,
        min_size: int | None = None,
        slice_axis: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims} must be 2 or 3")
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.min_size = None if min_size is None else int(min_size)
        if slice_axis is not None and (isinstance(slice_axis, bool) or slice_axis not in (-1, 0, 1, 2)):
            raise ValueError(f"slice_axis must be 0, 1, 2, -1 or None, got {slice_axis!r}.")
        self.slice_axis = None if slice_axis is None else int(slice_axis) % 3

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.check(d[key], _source(d[key], d, key))
        return d

    def check(self, img: torch.Tensor, source: str) -> torch.Tensor:
        """The checked (C, *spatial) image of ``source``; see the class docstring."""
        img = self._check_dims(img, source)
        values = img.as_tensor() if isinstance(img, MetaTensor) else img
        if values.is_floating_point():
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                nan = int(torch.isnan(values).sum())
                raise InputCheckError(
                    f"{source}: {bad} of {values.numel()} voxels are not finite ({nan} NaN, {bad - nan} "
                    "infinite); the image is refused: replace them in the file (e.g. numpy.nan_to_num) and "
                    "run it again"
                )
        img = self._check_channels(img, source)
        spatial = tuple(img.shape[1:])
        seen = spatial  # the axes the network sees: in-plane ones for a volume run slice by slice
        if len(spatial) > self.spatial_dims:
            seen = tuple(s for i, s in enumerate(spatial) if i != self.slice_axis)
        if self.min_size is not None and min(seen) < self.min_size:
            where = (
                "each axis"
                if seen == spatial
                else f"each in-plane axis (slices along axis {self.slice_axis})"
            )
            raise InputCheckError(
                f"{source}: the image is {_shape(spatial)} voxels, below the network's minimum input of "
                f"{self.min_size} voxels along {where}; use a larger image or resample it (the spacing key)"
            )
        return img

    def _check_dims(self, img: torch.Tensor, source: str) -> torch.Tensor:
        spatial = tuple(img.shape[1:])
        if len(spatial) == self.spatial_dims:
            return img
        if self.spatial_dims == 2 and len(spatial) == 3 and spatial[2] == 1:
            return _drop_last_axis(img)
        if self.spatial_dims == 2 and len(spatial) == 3:
            if self.slice_axis is not None:
                return img
            raise InputCheckError(
                f"{source}: a 3D volume ({_shape(spatial)} voxels) cannot go to this 2D model with "
                "slice_axis none; run it slice by slice (--slice_axis 2, the slice axis of NIfTI files and "
                f"DICOM series), or use a 3D model: train one with {CONFIG_3D}, then run inference with "
                "--spatial_dims 3 --ckpt_path <that model.pt>"
            )
        if self.spatial_dims == 3 and len(spatial) == 2:
            raise InputCheckError(
                f"{source}: a 2D image ({_shape(spatial)} pixels) cannot go to this 3D model; use a 2D model "
                "(the bundle's default configs, spatial_dims 2)"
            )
        raise InputCheckError(
            f"{source}: the image has {len(spatial)} spatial axes ({_shape(spatial)}); this "
            f"{self.spatial_dims}D model takes {self.spatial_dims}"
        )

    def _check_channels(self, img: torch.Tensor, source: str) -> torch.Tensor:
        channels = int(img.shape[0])
        if channels == self.in_channels:
            return img
        photo = Path(source).name.lower().endswith(PHOTO_SUFFIXES)
        if self.in_channels == 1 and photo and channels in (2, 3, 4):
            kind = {2: "gray + alpha", 3: "RGB", 4: "RGBA"}[channels]
            logger.warning(
                "%s: %s image converted to grayscale (ITU-R 601 luma%s) for the 1-channel model",
                source,
                kind,
                ", alpha dropped" if channels in (2, 4) else "",
            )
            return _to_gray(img)
        hint = (
            "convert it to grayscale first"
            if self.in_channels == 1 and channels in (3, 4)
            else "give images with the channels the model was trained on (in_channels)"
        )
        raise InputCheckError(
            f"{source}: the image has {channels} channels, the model takes {self.in_channels}; {hint}"
        )


def _to_gray(img: torch.Tensor) -> torch.Tensor:
    """(C, ...) gray+alpha / RGB / RGBA -> (1, ...) luma, keeping the metadata."""
    if img.shape[0] == 2:
        return img[:1]
    w = torch.as_tensor(LUMA_WEIGHTS, dtype=img.dtype if img.is_floating_point() else torch.float32)
    rgb = img[:3].float() if not img.is_floating_point() else img[:3]
    gray = (rgb * w.reshape(3, *([1] * (img.ndim - 1)))).sum(0, keepdim=True)
    if isinstance(img, MetaTensor):
        return MetaTensor(gray.as_tensor() if isinstance(gray, MetaTensor) else gray, meta=dict(img.meta))
    return gray


def _drop_last_axis(img: torch.Tensor) -> torch.Tensor:
    """(C, X, Y, 1) -> (C, X, Y); a MetaTensor keeps its 4 x 4 affine (the slice's position and axes)."""
    out = img[..., 0]
    if isinstance(img, MetaTensor):
        meta = dict(img.meta)
        if "spatial_shape" in meta:
            meta["spatial_shape"] = tuple(int(s) for s in img.shape[1:3])
        return MetaTensor(out.as_tensor() if isinstance(out, MetaTensor) else out, meta=meta)
    return out


def _is_loading(xform: Callable) -> bool:
    return isinstance(xform, Compose) and any(isinstance(t, LoadImaged) for t in xform.transforms)


def insert_after_loading(preprocessing: Compose, checks: Callable) -> Compose:
    """A copy of ``preprocessing`` with ``checks`` right after its channel-first step of loading (the
    ``Compose`` of :func:`~monai_wsol.data.readers.make_load_transforms`, found at any depth), i.e. before
    orientation, resampling and intensity scaling.

    Raises:
        ValueError: ``preprocessing`` holds no loading ``Compose``.
    """

    def rebuild(compose: Compose) -> tuple[Compose, bool]:
        xforms = list(compose.transforms)
        if _is_loading(compose):
            at = next(
                (i + 1 for i, t in enumerate(xforms) if isinstance(t, EnsureChannelFirstd)),
                next(i + 1 for i, t in enumerate(xforms) if isinstance(t, LoadImaged)),
            )
            return Compose([*xforms[:at], checks, *xforms[at:]]), True
        for i, t in enumerate(xforms):
            if isinstance(t, Compose):
                new, done = rebuild(t)
                if done:
                    xforms[i] = new
                    return Compose(xforms), True
        return compose, False

    out, done = rebuild(preprocessing)
    if not done:
        raise ValueError("insert_after_loading: the preprocessing holds no loading Compose (LoadImaged).")
    return out
