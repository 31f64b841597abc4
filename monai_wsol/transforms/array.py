"""Array transforms from a class activation map (CAM) to a location: normalise, upsample, binarise, regions,
boxes.

All take channel-first input ``(C, H, W)`` or ``(C, D, H, W)`` -- one map per channel (per class) -- as numpy
arrays, torch tensors or MONAI ``MetaTensor`` (whose ``.affine`` / ``.meta`` are kept). Conventions (box
format, exclusive max corner, world frame) are those of :mod:`monai_wsol.transforms.functional` and
``docs/transforms.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from .functional import (
    REGION_MODES,
    SCORE_REDUCTIONS,
    binarize_cam,
    boxes_to_world,
    check_array,
    check_channel_first,
    check_choice,
    check_min_size,
    check_tau,
    locate_regions,
    normalize_cam,
    upsample_cam,
)

__all__ = [
    "NormalizeCAM",
    "UpsampleCAM",
    "BinarizeCAM",
    "KeepRegions",
    "MaskToBoxes",
    "CAMToLocation",
    "resolve_affine",
]

_BACKENDS = [TransformBackends.TORCH, TransformBackends.NUMPY]


def resolve_affine(affine: object = None, *sources: object) -> NdarrayOrTensor | None:
    """The index-to-world affine to use for world boxes, or ``None`` if none is known.

    ``affine`` wins when given; it may be a matrix, a ``MetaTensor`` (its ``.affine``) or a MONAI meta dict
    (its ``"affine"``). Otherwise the first ``MetaTensor`` among ``sources`` gives its ``.affine``.
    """
    if affine is not None:
        if isinstance(affine, MetaTensor):
            return affine.affine
        if isinstance(affine, Mapping):
            if "affine" not in affine:
                raise ValueError(
                    f"affine was given as a meta dict without an 'affine' entry (keys: {list(affine)})."
                )
            return affine["affine"]
        check_array(affine, "affine")
        return affine
    for src in sources:
        if isinstance(src, MetaTensor):
            return src.affine
    return None


def _box_dst(x: NdarrayOrTensor) -> NdarrayOrTensor:
    """Boxes, labels and scores take the array type and device of ``x`` but never its image metadata."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def _locate_channels(
    mask: NdarrayOrTensor,
    cam: NdarrayOrTensor | None,
    connectivity: int | None,
    mode: str,
    min_size: float,
    reduction: str,
) -> tuple[NdarrayOrTensor, NdarrayOrTensor, NdarrayOrTensor, NdarrayOrTensor | None]:
    """Run :func:`locate_regions` on every channel of a channel-first mask.

    Returns ``(kept_mask (C, *spatial) bool, boxes (N, 2 * spatial_dims) float32, labels (N,) int64 = channel
    index, scores (N,) float32 or None)``; the mask keeps ``mask``'s type and meta, the rest ``mask``'s array
    type.
    """
    sd = check_channel_first(mask, "mask")
    mask_np = convert_data_type(mask, np.ndarray)[0]
    cam_np = None
    if cam is not None:
        check_array(cam, "cam")
        if tuple(cam.shape) != tuple(mask.shape):
            raise ValueError(f"cam shape {tuple(cam.shape)} must equal the mask shape {tuple(mask.shape)}.")
        cam_np = convert_data_type(cam, np.ndarray)[0]
    kept, boxes, labels, scores = [], [], [], []
    for c in range(mask_np.shape[0]):
        k, b, s = locate_regions(
            mask_np[c], connectivity, mode, min_size, None if cam_np is None else cam_np[c], reduction
        )
        kept.append(k)
        boxes.append(b)
        labels.append(np.full(len(b), c, dtype=np.int64))
        scores.append(s)
    dst = _box_dst(mask)
    boxes_np = np.concatenate(boxes) if boxes else np.zeros((0, 2 * sd), dtype=np.float32)
    return (
        convert_to_dst_type(np.stack(kept), mask, dtype=torch.bool)[0],
        convert_to_dst_type(boxes_np, dst, dtype=torch.float32)[0],
        convert_to_dst_type(np.concatenate(labels), dst, dtype=torch.int64)[0],
        None if cam_np is None else convert_to_dst_type(np.concatenate(scores), dst, dtype=torch.float32)[0],
    )


class NormalizeCAM(Transform):
    """Min-max normalise each channel of ``(C, *spatial)`` maps to [0, 1]; a constant channel becomes zeros.

    Raises ``ValueError`` on NaN/inf or a rank other than 3 or 4. Output: float32 (float64 kept), input's
    type.
    """

    backend = _BACKENDS

    def __call__(self, cam: NdarrayOrTensor) -> NdarrayOrTensor:
        check_channel_first(cam, "cam")
        return normalize_cam(cam)


class UpsampleCAM(Transform):
    """Resize ``(C, *spatial)`` maps to the image grid with MONAI's ``Resize`` (``"linear"`` = bi/trilinear).

    Args:
        spatial_size: default target size (one int per spatial dim), used when the call gives neither
            ``spatial_size`` nor ``ref``.
        mode: interpolation mode of ``monai.transforms.Resize``.
        align_corners: as ``torch.nn.functional.interpolate``; ``None`` = False for linear modes.

    A call with ``ref`` (a channel-first image ``(C', *spatial)``) resizes to the reference's grid; when
    ``ref`` is a ``MetaTensor`` and the output a tensor, the output takes a copy of ``ref``'s meta (affine
    included), because it now lies on the reference's grid -- a CAM computed by a network on a MetaTensor
    batch otherwise carries the image's affine at feature resolution, which would be wrong.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        spatial_size: Sequence[int] | None = None,
        mode: str = "linear",
        align_corners: bool | None = None,
    ) -> None:
        self.spatial_size = spatial_size
        self.mode = mode
        self.align_corners = align_corners

    def __call__(
        self,
        cam: NdarrayOrTensor,
        spatial_size: Sequence[int] | None = None,
        ref: NdarrayOrTensor | None = None,
    ) -> NdarrayOrTensor:
        sd = check_channel_first(cam, "cam")
        if ref is not None:
            check_array(ref, "ref")
            if ref.ndim != sd + 1:
                raise ValueError(
                    f"ref must be channel-first with {sd} spatial dims like cam {tuple(cam.shape)}, "
                    f"got {tuple(ref.shape)}."
                )
        size = spatial_size or (tuple(ref.shape[1:]) if ref is not None else self.spatial_size)
        if size is None:
            raise ValueError(
                "UpsampleCAM needs a target: give spatial_size (here or at construction) or ref."
            )
        out = upsample_cam(cam, size, self.mode, self.align_corners)
        if isinstance(ref, MetaTensor) and isinstance(out, torch.Tensor):
            plain = out.as_tensor() if isinstance(out, MetaTensor) else out
            out = MetaTensor(plain, meta=copy.deepcopy(dict(ref.meta)))
        return out


class BinarizeCAM(Transform):
    """Boolean mask ``cam >= tau`` (METHOD.md step 3), same shape/type/meta as the ``(C, *spatial)`` input.

    Args:
        tau: threshold in [0, 1] on the min-max normalised CAM.
    """

    backend = _BACKENDS

    def __init__(self, tau: float) -> None:
        self.tau = check_tau(tau)

    def __call__(self, cam: NdarrayOrTensor, tau: float | None = None) -> NdarrayOrTensor:
        check_channel_first(cam, "cam")
        return binarize_cam(cam, self.tau if tau is None else tau)


class _RegionTransform(Transform):
    """Shared region options: ``connectivity`` (4/8 in 2D, 6/18/26 in 3D, ``None`` = full), ``mode``
    (``"largest"`` or ``"all"``), ``min_size`` (regions with fewer voxels are dropped)."""

    backend = _BACKENDS

    def __init__(self, connectivity: int | None = None, mode: str = "largest", min_size: float = 0) -> None:
        self.connectivity = connectivity
        self.mode = check_choice(mode, "mode", REGION_MODES)
        self.min_size = check_min_size(min_size)


class KeepRegions(_RegionTransform):
    """Per channel of a ``(C, *spatial)`` mask, keep the largest connected region (``mode="largest"``) or all
    regions (``"all"``) of at least ``min_size`` voxels. Returns a new boolean mask (input's type and meta);
    the
    input is not modified (unlike MONAI's ``KeepLargestConnectedComponent``, which may work in place)."""

    def __call__(self, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        return _locate_channels(mask, None, self.connectivity, self.mode, self.min_size, "max")[0]


class MaskToBoxes(_RegionTransform):
    """Boxes of the connected regions of each channel of a ``(C, *spatial)`` mask.

    Args:
        connectivity, mode, min_size: region choice, see :class:`KeepRegions`.
        world: return world boxes (through the affine) instead of voxel boxes.
        reduction: ``"max"`` or ``"mean"`` of the CAM inside a region, its score.
        voxel_edges: world-box convention, see :func:`~monai_wsol.transforms.functional.boxes_to_world`.

    ``__call__(mask, cam=None, affine=None)`` returns ``(boxes, labels, scores)``:

    - ``boxes``: ``(N, 2 * spatial_dims)``, MONAI StandardMode with exclusive max corner (the ``"standard"``
      convention of :mod:`monai_wsol.boxes`; float32 voxel indices, or float64 world coordinates with
      ``world=True``); channel by channel, largest region first within a channel. ``(0, 2 * spatial_dims)``
      when the mask is empty.
    - ``labels``: ``(N,)`` int64, the channel (class) index of each box.
    - ``scores``: ``(N,)`` float32 when ``cam`` (same shape as ``mask``) is given, else ``None``.

    With ``world=True`` the affine is ``affine`` if given (matrix, MetaTensor or meta dict), else
    ``mask.affine`` of a MetaTensor; a plain array without ``affine`` raises ``ValueError``.
    """

    def __init__(
        self,
        connectivity: int | None = None,
        mode: str = "largest",
        min_size: float = 0,
        world: bool = False,
        reduction: str = "max",
        voxel_edges: bool = True,
    ) -> None:
        super().__init__(connectivity, mode, min_size)
        self.world = world
        self.reduction = check_choice(reduction, "reduction", SCORE_REDUCTIONS)
        self.voxel_edges = voxel_edges

    def __call__(
        self, mask: NdarrayOrTensor, cam: NdarrayOrTensor | None = None, affine: object = None
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor, NdarrayOrTensor | None]:
        _, boxes, labels, scores = _locate_channels(
            mask, cam, self.connectivity, self.mode, self.min_size, self.reduction
        )
        if self.world:
            aff = resolve_affine(affine, mask)
            if aff is None:
                raise ValueError(
                    "MaskToBoxes(world=True) needs an affine: pass affine= or a MetaTensor mask."
                )
            boxes = boxes_to_world(boxes, aff, self.voxel_edges)
        return boxes, labels, scores


class CAMToLocation(_RegionTransform):
    """CAM ``(C, *spatial)`` -> normalised, upsampled map -> mask -> regions -> voxel and world boxes, in one
    call.

    Steps (METHOD.md "From the trained network to class and location"): min-max normalise per channel; if a
    target grid is given (``ref`` or ``spatial_size``) resize to it and normalise again (so the map's maximum
    is exactly 1 on the image grid, which equals the WSOL protocol's resize-then-normalise); binarise at
    ``tau``; choose regions per channel; box them.

    Args:
        tau: threshold in [0, 1].
        connectivity, mode, min_size: region choice, see :class:`KeepRegions`.
        spatial_size: default target grid when the call gives no ``ref``; ``None`` = keep the CAM's grid.
        upsample_mode, align_corners: see :class:`UpsampleCAM`.
        normalize: set False only for maps that are already in [0, 1] on the target grid.
        reduction, voxel_edges: see :class:`MaskToBoxes`.

    ``__call__(cam, ref=None, affine=None)`` returns a dict:
    ``"cam"`` the processed map, ``"mask"`` (C, *spatial) bool of the chosen regions (type/meta of the
    processed map), ``"boxes"`` (N, 2 * spatial_dims) float32 voxel boxes, ``"labels"`` (N,) channel index,
    ``"scores"`` (N,) ``reduction`` of the map in each region, ``"boxes_world"`` (N, 2 * spatial_dims) float64
    through the affine (``affine`` argument, else ``ref``'s, else the CAM's MetaTensor affine), or ``None``
    when no affine is known.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        tau: float,
        connectivity: int | None = None,
        mode: str = "largest",
        min_size: float = 0,
        spatial_size: Sequence[int] | None = None,
        upsample_mode: str = "linear",
        align_corners: bool | None = None,
        normalize: bool = True,
        reduction: str = "max",
        voxel_edges: bool = True,
    ) -> None:
        super().__init__(connectivity, mode, min_size)
        self.binarize = BinarizeCAM(tau)
        self.upsample = UpsampleCAM(spatial_size, upsample_mode, align_corners)
        self.normalize = normalize
        self.reduction = check_choice(reduction, "reduction", SCORE_REDUCTIONS)
        self.voxel_edges = voxel_edges

    def __call__(
        self, cam: NdarrayOrTensor, ref: NdarrayOrTensor | None = None, affine: object = None
    ) -> dict[str, NdarrayOrTensor | None]:
        check_channel_first(cam, "cam")
        x = normalize_cam(cam) if self.normalize else cam
        if ref is not None or self.upsample.spatial_size is not None:
            target = tuple(ref.shape[1:]) if ref is not None else tuple(self.upsample.spatial_size)
            if ref is not None or target != tuple(x.shape[1:]):
                x = self.upsample(x, ref=ref)
                x = normalize_cam(x) if self.normalize else x
        mask = self.binarize(x)
        kept, boxes, labels, scores = _locate_channels(
            mask, x, self.connectivity, self.mode, self.min_size, self.reduction
        )
        aff = resolve_affine(affine, ref, x)
        world = None if aff is None else boxes_to_world(boxes, aff, self.voxel_edges)
        return {
            "cam": x,
            "mask": kept,
            "boxes": boxes,
            "labels": labels,
            "scores": scores,
            "boxes_world": world,
        }
