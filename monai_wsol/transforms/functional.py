"""Pure functions that turn a class activation map (CAM) into a location: normalised map, mask, regions,
boxes.

Every function accepts ``numpy.ndarray``, ``torch.Tensor`` and MONAI ``MetaTensor`` inputs and returns the
input's type (a ``MetaTensor`` keeps its ``.affine`` and ``.meta``; a CUDA tensor comes back on its device).
Connected-component labelling runs on the CPU with ``scipy.ndimage``.

Conventions (see ``docs/transforms.md``):

- Boxes follow MONAI's ``StandardMode`` (``monai.data.box_utils``): ``[x0, y0, x1, y1]`` in 2D and
  ``[x0, y0, z0, x1, y1, z1]`` in 3D, where x, y, z are the array's spatial axes **in order** (x is axis 0
  of the spatial shape, i.e. the row axis of an ``(H, W)`` array -- not the OpenCV column convention).
  The max corner is **exclusive**: a region covering indices ``i0..i1`` along an axis gives ``[i0, i1 + 1)``,
  exactly as ``monai.apps.detection.transforms.box_ops.convert_mask_to_box`` (``TO_REMOVE = 0``).
  This is the ``"standard"`` convention of :mod:`monai_wsol.boxes`; the WSOL metrics read the ``"protocol"``
  one (2D x = the last axis), so voxel boxes reach them as ``Boxes.standard(boxes, spatial_dims)``.
- An empty mask gives zero boxes, an array of shape ``(0, 2 * spatial_dims)``.
- World boxes are in the frame of the affine (RAS+ mm for images read by nibabel / MONAI's ``LoadImage``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import Resize
from monai.utils import convert_data_type, convert_to_dst_type
from scipy import ndimage

__all__ = [
    "CONNECTIVITIES",
    "REGION_MODES",
    "SCORE_REDUCTIONS",
    "normalize_cam",
    "upsample_cam",
    "binarize_cam",
    "label_regions",
    "keep_regions",
    "mask_to_boxes",
    "locate_regions",
    "boxes_to_world",
]

#: allowed neighbourhoods per number of spatial dims -> the ``rank`` of
# ``scipy.ndimage.generate_binary_structure``
#: (1 = face neighbours only, ``spatial_dims`` = faces, edges and corners).
CONNECTIVITIES: dict[int, dict[int, int]] = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}
REGION_MODES = ("largest", "all")
SCORE_REDUCTIONS = ("max", "mean")


# ------------------------------------------------------------------------------------------------------------
# argument checks (shared by the transforms)
# ------------------------------------------------------------------------------------------------------------
def check_array(x: object, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is a numpy array or a torch tensor."""
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}.")


def check_finite(x: NdarrayOrTensor, name: str) -> None:
    """Raise ``ValueError`` if a floating-point ``x`` holds NaN or infinite values."""
    t = _to_torch(x)
    # min and max propagate NaN and expose +-inf: one reduction pass, no boolean copy of a large volume
    if t.is_floating_point() and t.numel() and not all(bool(torch.isfinite(v)) for v in torch.aminmax(t)):
        raise ValueError(f"{name} contains NaN or infinite values; a CAM must be finite to be normalised.")


def check_channel_first(x: NdarrayOrTensor, name: str) -> int:
    """Check that ``x`` is channel-first ``(C, H, W)`` or ``(C, D, H, W)``.

    Returns its number of spatial dims.
    """
    check_array(x, name)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be channel-first (C, H, W) or (C, D, H, W), "
            f"got {x.ndim} dims with shape {tuple(x.shape)}."
        )
    if 0 in tuple(x.shape):
        raise ValueError(f"{name} must have at least one channel and voxel, got shape {tuple(x.shape)}.")
    return x.ndim - 1


def check_connectivity(connectivity: int | None, spatial_dims: int) -> int:
    """Return the ``scipy.ndimage`` structure rank for ``connectivity``.

    ``None`` means full connectivity: 8 in 2D, 26 in 3D.
    """
    allowed = CONNECTIVITIES[spatial_dims]
    if connectivity is None:
        return spatial_dims
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValueError(
            f"connectivity must be one of {sorted(allowed)} for {spatial_dims}D masks (or None for "
            f"{max(allowed)}), got {connectivity!r}."
        )
    return allowed[connectivity]


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
    return value


def check_min_size(min_size: float) -> float:
    """``min_size`` is a voxel count >= 0."""
    if isinstance(min_size, bool) or not isinstance(min_size, Real) or not min_size >= 0:
        raise ValueError(f"min_size must be a number of voxels >= 0, got {min_size!r}.")
    return min_size


def check_tau(tau: float) -> float:
    """``tau`` is a threshold on a min-max normalised CAM, so it must lie in [0, 1]."""
    if isinstance(tau, bool) or not isinstance(tau, Real) or not 0.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau must be a number in [0, 1] (the CAM is min-max normalised), got {tau!r}.")
    return float(tau)


def _to_torch(x: NdarrayOrTensor) -> torch.Tensor:
    """A plain tensor view of ``x``.

    No MetaTensor bookkeeping in the arithmetic; meta is restored on output.
    """
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    if isinstance(x, np.ndarray):
        # torch refuses negative strides (flipped views) and non-native byte order (big-endian NIfTI data)
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(x))
    return x


def _spatial_mask_np(mask: NdarrayOrTensor, name: str = "mask") -> np.ndarray:
    """A boolean numpy copy of a spatial-only mask ``(H, W)`` or ``(D, H, W)``; non-zero is foreground."""
    check_array(mask, name)
    if mask.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be spatial-only (H, W) or (D, H, W), "
            f"got {mask.ndim} dims with shape {tuple(mask.shape)}; "
            "use the KeepRegions / MaskToBoxes transforms for channel-first masks."
        )
    check_finite(mask, name)
    return convert_data_type(mask, np.ndarray)[0] != 0


# ------------------------------------------------------------------------------------------------------------
# CAM -> normalised map -> mask
# ------------------------------------------------------------------------------------------------------------
def normalize_cam(cam: NdarrayOrTensor, spatial_dims: int | None = None) -> NdarrayOrTensor:
    """Min-max normalise each map to [0, 1] over its spatial axes (METHOD.md step 2).

    Args:
        cam: maps of shape ``(*leading, *spatial)``; every leading index (channel, batch) is normalised on its
            own.
        spatial_dims: 2 or 3, the number of trailing spatial axes. ``None`` means channel-first input
            ``(C, *spatial)``, i.e. ``cam.ndim - 1``.

    Returns:
        a float map of the same shape and type (float64 stays float64, anything else becomes float32);
        a constant map becomes all zeros (it has no location).

    Raises:
        ValueError: if ``cam`` holds NaN/inf or its rank does not fit ``spatial_dims``.
    """
    check_array(cam, "cam")
    sd = cam.ndim - 1 if spatial_dims is None else spatial_dims
    if sd not in (2, 3) or cam.ndim < sd:
        raise ValueError(
            "cam must be (C, H, W) or (C, D, H, W) (or pass spatial_dims=2|3 for other leading dims), "
            f"got shape {tuple(cam.shape)} with spatial_dims={spatial_dims}."
        )
    check_finite(cam, "cam")
    t = _to_torch(cam)
    t = t if t.dtype == torch.float64 else t.float()
    dims = tuple(range(t.ndim - sd, t.ndim))
    lo = t.amin(dim=dims, keepdim=True)
    rng = t.amax(dim=dims, keepdim=True) - lo
    # a constant map has no maximum to localise: map it to zeros instead of dividing by zero
    out = torch.where(
        rng > 0, (t - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(t)
    )
    return convert_to_dst_type(out, cam, dtype=out.dtype)[0]


def upsample_cam(
    cam: NdarrayOrTensor, spatial_size: Sequence[int], mode: str = "linear", align_corners: bool | None = None
) -> NdarrayOrTensor:
    """Resize channel-first maps ``(C, *spatial)`` to ``spatial_size`` with MONAI's ``Resize``.

    ``mode="linear"`` is bilinear in 2D and trilinear in 3D. A ``MetaTensor`` input gets the affine ``Resize``
    computes (voxel centres kept consistent with the new grid); numpy in gives numpy out.
    """
    sd = check_channel_first(cam, "cam")
    size = tuple(spatial_size) if isinstance(spatial_size, Sequence) else (spatial_size,)
    if len(size) != sd or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(
            f"spatial_size must be {sd} positive ints for a {sd}D cam of shape {tuple(cam.shape)}, "
            f"got {spatial_size!r}."
        )
    check_finite(cam, "cam")
    dtype = torch.float64 if cam.dtype in (np.float64, torch.float64) else torch.float32
    out = Resize(spatial_size=size, mode=mode, align_corners=align_corners, dtype=dtype)(
        cam if isinstance(cam, torch.Tensor) else _to_torch(cam)
    )
    return convert_to_dst_type(out, cam, dtype=dtype)[0]


def binarize_cam(cam: NdarrayOrTensor, tau: float) -> NdarrayOrTensor:
    """Boolean mask, True where ``cam >= tau`` (METHOD.md step 3); same shape and type as ``cam``."""
    check_array(cam, "cam")
    tau = check_tau(tau)
    check_finite(cam, "cam")
    return convert_to_dst_type(_to_torch(cam) >= tau, cam, dtype=torch.bool)[0]


# ------------------------------------------------------------------------------------------------------------
# mask -> connected regions -> masks / boxes
# ------------------------------------------------------------------------------------------------------------
def _label_np(mask_np: np.ndarray, connectivity: int | None) -> tuple[np.ndarray, int]:
    rank = check_connectivity(connectivity, mask_np.ndim)
    structure = ndimage.generate_binary_structure(mask_np.ndim, rank)
    labels, n = ndimage.label(mask_np, structure=structure)
    return labels, int(n)


def label_regions(mask: NdarrayOrTensor, connectivity: int | None = None) -> tuple[NdarrayOrTensor, int]:
    """Label the connected regions of a spatial-only mask.

    Args:
        mask: ``(H, W)`` or ``(D, H, W)``; non-zero is foreground. Not modified.
        connectivity: 4 or 8 in 2D, 6, 18 or 26 in 3D; ``None`` is full connectivity (8 / 26).

    Returns:
        ``(labels, n)``: int32 labels of the mask's shape and type (0 = background, regions 1..n numbered in
        raster order of their first voxel), and the number of regions.
    """
    labels, n = _label_np(_spatial_mask_np(mask), connectivity)
    return convert_to_dst_type(labels, mask, dtype=torch.int32)[0], n


def _select_regions(
    mask_np: np.ndarray, connectivity: int | None, mode: str, min_size: float
) -> tuple[np.ndarray, np.ndarray, list]:
    """Label ``mask_np`` and choose regions.

    Returns ``(labels, chosen ids sorted by size descending, bounding slices)``.
    """
    check_choice(mode, "mode", REGION_MODES)
    check_min_size(min_size)
    labels, n = _label_np(mask_np, connectivity)
    if n == 0:
        return labels, np.zeros(0, dtype=np.int64), []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    ids = np.flatnonzero(sizes >= min_size) + 1
    # largest first; the stable sort breaks ties by label, i.e. by raster order of the region's first voxel
    ids = ids[np.argsort(-sizes[ids - 1], kind="stable")]
    if mode == "largest":
        ids = ids[:1]
    return labels, ids, ndimage.find_objects(labels, max_label=n)


def _boxes_np(ids: np.ndarray, slices: list, spatial_dims: int) -> np.ndarray:
    """StandardMode boxes from ``find_objects`` slices.

    Min corner = first index, max corner = last index + 1.
    """
    boxes = np.zeros((len(ids), 2 * spatial_dims), dtype=np.float32)
    for row, i in enumerate(ids):
        sl = slices[i - 1]
        boxes[row, :spatial_dims] = [s.start for s in sl]
        boxes[row, spatial_dims:] = [s.stop for s in sl]
    return boxes


def locate_regions(
    mask: NdarrayOrTensor,
    connectivity: int | None = None,
    mode: str = "largest",
    min_size: float = 0,
    cam: NdarrayOrTensor | None = None,
    reduction: str = "max",
) -> tuple[NdarrayOrTensor, NdarrayOrTensor, NdarrayOrTensor | None]:
    """Choose the connected regions of a spatial-only mask; return their mask, their boxes and optional
    scores.

    One labelling serves the mask and the boxes, so both always describe the same regions.

    Args:
        mask: ``(H, W)`` or ``(D, H, W)``, non-zero is foreground. Not modified.
        connectivity: 4/8 (2D), 6/18/26 (3D); ``None`` = full (8 / 26).
        mode: ``"largest"`` keeps the region with the most voxels (ties: the first in raster order);
            ``"all"`` keeps every region, largest first.
        min_size: regions with fewer voxels are dropped (before choosing the largest).
        cam: optional map of the mask's spatial shape; each region's score is its ``reduction`` inside the
            region.
        reduction: ``"max"`` or ``"mean"``.

    Returns:
        ``(kept_mask, boxes, scores)``: a boolean mask of ``mask``'s shape and type holding the chosen
            regions;
        float32 boxes ``(N, 2 * spatial_dims)`` in StandardMode (max corner exclusive), of ``mask``'s array
        type (plain tensor for a MetaTensor); float32 scores ``(N,)`` or ``None`` without ``cam``.
    """
    mask_np = _spatial_mask_np(mask)
    check_choice(reduction, "reduction", SCORE_REDUCTIONS)
    cam_np = None
    if cam is not None:
        check_array(cam, "cam")
        if tuple(cam.shape) != mask_np.shape:
            raise ValueError(f"cam shape {tuple(cam.shape)} must equal the mask shape {mask_np.shape}.")
        check_finite(cam, "cam")
        cam_np = convert_data_type(cam, np.ndarray)[0]
    labels, ids, slices = _select_regions(mask_np, connectivity, mode, min_size)
    keep_lut = np.zeros(int(labels.max()) + 1, dtype=bool)
    keep_lut[ids] = True  # a lookup table over labels is much faster than np.isin on volumes
    kept = keep_lut[labels]
    boxes = _boxes_np(ids, slices, mask_np.ndim)
    box_dst = _to_torch(mask) if isinstance(mask, torch.Tensor) else mask
    scores = None
    if cam_np is not None:
        reduce = np.max if reduction == "max" else np.mean
        vals = [reduce(cam_np[slices[i - 1]][labels[slices[i - 1]] == i]) for i in ids]
        scores = convert_to_dst_type(np.asarray(vals, dtype=np.float32), box_dst, dtype=torch.float32)[0]
    return (
        convert_to_dst_type(kept, mask, dtype=torch.bool)[0],
        convert_to_dst_type(boxes, box_dst, dtype=torch.float32)[0],
        scores,
    )


def keep_regions(
    mask: NdarrayOrTensor, connectivity: int | None = None, mode: str = "largest", min_size: float = 0
) -> NdarrayOrTensor:
    """Boolean mask of the largest region (``mode="largest"``) or of all regions (``"all"``).

    Only regions of >= ``min_size`` voxels count; spatial-only input ``(H, W)`` / ``(D, H, W)``,
    same shape and type out. See :func:`locate_regions`.
    """
    return locate_regions(mask, connectivity, mode, min_size)[0]


def mask_to_boxes(
    mask: NdarrayOrTensor, connectivity: int | None = None, mode: str = "largest", min_size: float = 0
) -> NdarrayOrTensor:
    """Boxes ``(N, 2 * spatial_dims)`` (float32, StandardMode: the ``"standard"`` convention of
    :mod:`monai_wsol.boxes`, array-axis order, max corner exclusive) of the chosen regions of a spatial-only
    mask;
    ``(0, 2 * spatial_dims)`` for an empty mask. See :func:`locate_regions`."""
    return locate_regions(mask, connectivity, mode, min_size)[1]


# ------------------------------------------------------------------------------------------------------------
# voxel -> world
# ------------------------------------------------------------------------------------------------------------
def boxes_to_world(
    boxes: NdarrayOrTensor, affine: NdarrayOrTensor, voxel_edges: bool = True
) -> NdarrayOrTensor:
    """Axis-aligned world boxes of StandardMode voxel boxes through an affine (index -> world).

    All ``2**spatial_dims`` corners of each box go through the affine and the world box is their min/max, so a
    rotated or flipped affine still gives the tight axis-aligned box of the rotated voxel box.

    Args:
        boxes: ``(N, 2 * spatial_dims)`` voxel boxes, max corner exclusive (as :func:`mask_to_boxes` returns).
        affine: ``(spatial_dims + 1, spatial_dims + 1)`` index-to-world matrix, e.g. ``MetaTensor.affine``
            (RAS+ mm for NIfTI read by nibabel / MONAI). A larger affine (a 2D image's 4x4) is reduced with
            MONAI's
            ``to_affine_nd``: its first ``spatial_dims`` rows and columns plus its translation.
        voxel_edges: ``True`` (default) gives the physical extent of the voxels: the affine maps voxel
            *centres*, so a box ``[i0, i1)`` spans index coordinates ``[i0 - 0.5, i1 - 0.5]``. ``False`` maps
            the box coordinates as they are, which is what MONAI's ``AffineBoxToWorldCoordinated`` does (half
            a voxel off the physical extent, but it round-trips with MONAI's detection transforms).

    Returns:
        float64 world boxes ``(N, 2 * spatial_dims)`` of ``boxes``' array type; ``(0, 2 * spatial_dims)`` if
        empty.
    """
    check_array(boxes, "boxes")
    check_array(affine, "affine")
    if boxes.ndim != 2 or boxes.shape[1] not in (4, 6):
        raise ValueError(f"boxes must be (N, 4) or (N, 6), got shape {tuple(boxes.shape)}.")
    sd = boxes.shape[1] // 2
    aff = convert_data_type(affine, np.ndarray, dtype=np.float64)[0]
    if aff.ndim != 2 or aff.shape[0] != aff.shape[1] or aff.shape[0] < sd + 1:
        raise ValueError(
            f"affine must be a square matrix of size >= {sd + 1} for {sd}D boxes, got {aff.shape}."
        )
    if not np.isfinite(aff).all():
        raise ValueError("affine contains NaN or infinite values.")
    check_finite(boxes, "boxes")
    aff = to_affine_nd(sd, aff) if aff.shape[0] > sd + 1 else aff
    b = convert_data_type(boxes, np.ndarray, dtype=np.float64)[0] - (0.5 if voxel_edges else 0.0)
    # every corner of the box: pick min (0) or max (1) along each axis
    choice = np.array(list(itertools.product((0, 1), repeat=sd)))  # (2**sd, sd)
    corners = np.where(choice[None] == 0, b[:, None, :sd], b[:, None, sd:])  # (N, 2**sd, sd)
    world = corners @ aff[:sd, :sd].T + aff[:sd, sd]
    out = np.concatenate([world.min(axis=1), world.max(axis=1)], axis=1) if len(b) else np.zeros((0, 2 * sd))
    return convert_to_dst_type(
        out, _to_torch(boxes) if isinstance(boxes, torch.Tensor) else boxes, dtype=torch.float64
    )[0]
