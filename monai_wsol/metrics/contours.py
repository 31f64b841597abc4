"""Per-threshold boxes of a 2D score map, exactly as the WSOL protocol's reference (OpenCV contours).

Reference semantics (wsolevaluation ``compute_bboxes_from_scoremaps``), reproduced bit for bit:

- ``q = (s * 255).astype(np.uint8)`` in float64; the mask at ``tau`` is ``q > int(tau * max(q))``;
- regions are the contours of that mask from ``cv2.findContours(mask, RETR_TREE, CHAIN_APPROX_SIMPLE)``
  (outer borders AND hole borders);
- a contour's box is its ``cv2.boundingRect`` ``[x, y, x + w, y + h]`` with ``x + w`` clipped to ``W - 1`` and
  ``y + h`` to ``H - 1``; no contour gives ``[[0, 0, 0, 0]]``;
- v1 keeps only the first contour of maximal ``cv2.contourArea`` (Python ``max`` keeps the first maximum).

Why it is fast while staying exact:

- the numba kernels (:mod:`._fast_contours`), when numba is installed: for v1 (largest contour) one
  union-find sweep over the pixels from the highest value down gives every distinct mask's box (the largest
  contour is an outer one, i.e. an 8-connected component, its area a sum over 2x2 windows or a traced border,
  OpenCV's list order breaks ties); for V2 (every contour) two union-find sweeps, foreground 8-connected from
  the top and background 4-connected from the bottom, give every distinct mask's component boxes and hole
  boxes: the same multiset of boxes as the reference, components first, not in OpenCV's order (the default,
  ``order="any"``); both kernels also quantise and check the map themselves, and
  :func:`scoremap_best_iou_curves` (what ``BoxAccuracyMetric`` calls) runs a whole batch in one compiled call
  straight to the best IoU per threshold;
- otherwise (no numba, or V2 with ``order="opencv"``: the reference's contour order) the OpenCV path below is
  used; all paths give the reference's boxes;
- only distinct masks are traced: a threshold list of any length maps to at most 256 quantised levels,
  and levels between which no score falls give the same mask (:func:`~._quantize.distinct_masks`);
- a mask proven to be one 8-connected region (and, for all-contour mode, without holes) is not traced at
  all: its largest (only) contour's box is the mask's bounding box, read for all levels at once from the
  row/column maxima.  The proof (:func:`_single_region_levels`) is exact: Euler numbers of all 256 masks
  from one pass over the 2x2 windows, bounded by counts of regional maxima and minima;
- any other mask is traced on its bounding box widened by one pixel (clipped to the image): the pixels left
  out are all background, so OpenCV sees the same borders in the same order (``offset`` restores the image
  coordinates); the golden test checks this against the reference's own output;
- with many contours, bounding rectangles and shoelace areas are computed in one vectorised pass; the areas
  are kept as exact integers (twice the area), so the ``max`` and its ties are those of
  ``cv2.contourArea``'s doubles (integer coordinates, exact sums);
- images are independent: :func:`boxes_from_scoremaps` spreads a list of maps over processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from operator import itemgetter
from typing import Literal

import cv2
import numpy as np
import torch
from scipy import ndimage

from ._quantize import (
    as_float64,
    as_score_array,
    as_thresholds,
    distinct_masks,
    level_bounds,
    quantise_scores,
    threshold_levels,
)

try:  # numba is optional: without it the OpenCV path below gives the same boxes, more slowly
    from ._fast_contours import all_contour_boxes as _all_contour_boxes
    from ._fast_contours import best_iou_curves as _best_iou_curves
    from ._fast_contours import fits as _kernel_fits
    from ._fast_contours import largest_contour_boxes as _largest_contour_boxes
    from ._fast_contours import scoremap_level_boxes as _scoremap_level_boxes
    from ._fast_contours import split_boxes as _split_boxes
except ImportError:  # pragma: no cover - depends on the environment
    _all_contour_boxes = None
    _largest_contour_boxes = None
    _scoremap_level_boxes = None
    _best_iou_curves = None

#: use the numba v1 kernel when numba is importable (tests switch it off to check both paths agree)
USE_NUMBA = _largest_contour_boxes is not None

#: order of each threshold's boxes in V2 (all-contour) mode: "any" gives the reference's boxes as a multiset,
#: in the kernel's order (components, then holes), which is all a best-IoU metric needs and the fast path;
#: "opencv" gives them in the reference's own contour order (``cv2.findContours``), traced with OpenCV
ContourOrder = Literal["any", "opencv"]
_ORDERS = ("any", "opencv")

__all__ = [
    "ContourOrder",
    "distinct_level_boxes_modes",
    "boxes_from_scoremap",
    "boxes_from_scoremaps",
    "distinct_level_boxes",
    "reference_boxes_from_scoremap",
    "scoremap_best_iou_curves",
]


def _opencv_order(order: str) -> bool:
    """Is OpenCV's contour order required?  Raises on a value other than "any" or "opencv"."""
    if isinstance(order, bool) or order not in _ORDERS:
        raise ValueError(f"order must be 'any' or 'opencv', got {order!r}.")
    return order == "opencv"


def _empty_box(spatial_dims: int = 2) -> np.ndarray:
    box = np.zeros((1, 2 * spatial_dims), dtype=np.int64)
    box.setflags(write=False)
    return box


_LOOP_MAX = 24  # below this many contours, per-contour OpenCV calls beat the vectorised pass


def _contour_boxes(
    contours: Sequence[np.ndarray], height: int, width: int, multi_contour: bool
) -> np.ndarray:
    """Boxes (k, 4) of OpenCV contours (each (n, 1, 2) int32, image coordinates), as the reference."""
    if len(contours) <= _LOOP_MAX:
        if not multi_contour and len(contours) > 1:
            contours = [max(contours, key=cv2.contourArea)]  # the reference's own selection, first maximum
        rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
        lo, hi = rects[:, :2], rects[:, :2] + rects[:, 2:] - 1
    else:
        lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
        starts = np.zeros(len(contours), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
        if not multi_contour:
            # twice the shoelace area of every contour at once: x_i * y_next - x_next * y_i summed per
            # contour, "next" wrapping to the contour's first point, as cv2.contourArea (which returns |sum| /
            # 2); integer coordinates make both exact, so the maximum and its ties are the same
            nxt = np.arange(1, len(pts) + 1)
            nxt[starts + lengths - 1] = starts
            cross = pts[:, 0] * pts[nxt, 1] - pts[nxt, 0] * pts[:, 1]
            k = int(np.argmax(np.abs(np.add.reduceat(cross, starts))))  # first maximum, as Python's max()
            sel = pts[starts[k] : starts[k] + lengths[k]]
            lo, hi = sel.min(axis=0)[None], sel.max(axis=0)[None]
        else:
            lo = np.minimum.reduceat(pts, starts, axis=0)
            hi = np.maximum.reduceat(pts, starts, axis=0)
    boxes = np.empty((lo.shape[0], 4), dtype=np.int64)
    boxes[:, :2] = lo
    # boundingRect gives w = max - min + 1, and the reference's x + w is clipped to W - 1
    boxes[:, 2] = np.minimum(hi[:, 0] + 1, width - 1)
    boxes[:, 3] = np.minimum(hi[:, 1] + 1, height - 1)
    boxes.setflags(write=False)
    return boxes


_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndimage.generate_binary_structure(2, 1)
_N_LEVELS = 256  # uint8 quantisation


def _count_above(values: np.ndarray) -> np.ndarray:
    """``out[l] = #(values > l)`` for l in 0..255."""
    return values.size - np.cumsum(np.bincount(values, minlength=_N_LEVELS)[:_N_LEVELS])


def _neighbour_extremum(q: np.ndarray, maxima: bool) -> np.ndarray:
    """Max (maxima) over the 3x3 window, or min over the 4-neighbourhood cross, edge-replicated (a replicated
    border pixel is the pixel itself or one of its real neighbours, so it changes no comparison below)."""
    if maxima:
        return ndimage.maximum_filter(q, size=3, mode="nearest")  # separable: fast
    p = np.pad(q, 1, mode="edge")
    h, w = q.shape
    return np.minimum(
        np.minimum(q, np.minimum(p[:h, 1:-1], p[2:, 1:-1])), np.minimum(p[1:-1, :w], p[1:-1, 2:])
    )


def _extremum_plateaus(q: np.ndarray, maxima: bool) -> tuple[np.ndarray, np.ndarray]:
    """Values of the regional maxima (8-connected plateaus) or minima (4-connected, 4-neighbour) of ``q``,
    and for each whether it touches the image border.

    A plateau is a connected set of equal values; it is a regional extremum when no neighbour of any of its
    pixels is higher (maxima) or lower (minima).  Pixels not below (above) any neighbour form groups which
    are regional extrema unless an equal-valued neighbour of theirs is outside the group.
    """
    footprint = _EIGHT if maxima else _FOUR
    flat = q == _neighbour_extremum(q, maxima)
    labels, n = ndimage.label(flat, structure=footprint)
    valid = np.ones(n + 1, dtype=bool)
    # an equal-valued neighbour that is not itself an extremum pixel disqualifies the whole group: with
    # extremum pixels masked out by a sentinel, the neighbourhood extremum of the others equals the pixel's
    # value exactly then (non-extremum neighbours of an extremum pixel are never beyond its value)
    others = np.where(flat, -1 if maxima else 256, q.astype(np.int16))
    valid[labels[flat & (_neighbour_extremum(others, maxima) == q)]] = False
    value = np.zeros(n + 1, dtype=np.int64)
    value[labels[flat]] = q[flat]
    border = np.zeros(n + 1, dtype=bool)
    border[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    keep = valid[1:]
    return value[1:][keep], border[1:][keep]


def _sort4_desc(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Element-wise descending sort of four arrays (a 5-comparator sorting network)."""
    a, b = np.maximum(a, b), np.minimum(a, b)
    c, d = np.maximum(c, d), np.minimum(c, d)
    a, c = np.maximum(a, c), np.minimum(a, c)
    b, d = np.maximum(b, d), np.minimum(b, d)
    b, c = np.maximum(b, c), np.minimum(b, c)
    return a, b, c, d


def _euler_numbers(q: np.ndarray) -> np.ndarray:
    """Euler number (8-connected components minus holes) of ``q > l`` for every level l in 0..255.

    Gray's bit-quad formula ``E = (n1 - n3 - 2 nD) / 4`` over the 2x2 windows of the zero-padded mask; a
    window with sorted values s1 >= s2 >= s3 >= s4 holds one mask pixel for l in [s2, s1), three for
    l in [s4, s3) and two for l in [s3, s2) (diagonal or not), so all levels are counted in one pass.
    """
    p = np.pad(q, 1)  # 0 is below every mask's level (l >= 0): the padding is background
    corners = (p[:-1, :-1].ravel(), p[:-1, 1:].ravel(), p[1:, :-1].ravel(), p[1:, 1:].ravel())
    s1, s2, s3, s4 = _sort4_desc(*corners)
    top = [c > s3 for c in corners]  # the two largest, where s2 > s3
    diagonal = (top[0] & top[3] & ~top[1] & ~top[2]) | (top[1] & top[2] & ~top[0] & ~top[3])
    n = _N_LEVELS + 1

    def interval(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # +1 on [lo, hi) as a difference array
        return np.bincount(lo, minlength=n)[:n] - np.bincount(hi, minlength=n)[:n]

    diff = interval(s2, s1) - interval(s4, s3) - 2 * interval(s3[diagonal], s2[diagonal])
    return np.cumsum(diff)[:_N_LEVELS] // 4


def _single_region_levels(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per level l in 0..255: is ``q > l`` provably one 8-connected component, and one without holes?

    With C components, H holes and Euler number E = C - H (exact, :func:`_euler_numbers`): C <= #regional
    maxima above l (each component holds one) and H <= #regional minima at or below l off the border (each
    hole holds one), hence C <= E + that bound; C = 1 when either upper bound is 1, and then H = 1 - E.  Where
    this proves one region, the v1 box is the mask's bounding box (a hole's contour area is below its outer
    contour's), and with no
    hole it is also the only v2 contour.  Elsewhere nothing is assumed: the mask is traced.
    """
    peaks, _ = _extremum_plateaus(q, maxima=True)
    pits, on_border = _extremum_plateaus(q, maxima=False)
    components_bound = _count_above(peaks)
    holes_bound = np.cumsum(np.bincount(pits[~on_border], minlength=_N_LEVELS)[:_N_LEVELS])
    euler = _euler_numbers(q)
    one_component = (components_bound == 1) | (euler + holes_bound == 1)
    return one_component, one_component & (euler == 1)


def distinct_level_boxes_modes(
    scoremap: np.ndarray | torch.Tensor,
    thresholds: Sequence[float] | np.ndarray,
    modes: Sequence[bool] = (False, True),
    *,
    order: ContourOrder = "any",
) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """:func:`distinct_level_boxes` for several contour modes at once, tracing each mask at most once.

    Args:
        scoremap: score map of shape (H, W) in [0, 1] (NumPy or torch).
        thresholds: taus, each in [0, 1).
        modes: ``multi_contour`` flags, e.g. ``(False, True)`` for MaxBoxAcc and MaxBoxAccV2 together.
        order: order of the boxes of a multi-contour mode: "any" (same multiset as the reference, from the
            numba kernel when available) or "opencv" (the reference's order); see :data:`ContourOrder`.

    Returns:
        ``(boxes, inverse)``: ``boxes[m][j]`` is the (k, 4) box array of mode ``modes[m]`` for the j-th
        distinct mask; ``inverse`` (n_tau,) maps each threshold to its distinct mask.
    """
    opencv_order = _opencv_order(order)
    smap = as_score_array(scoremap, "scoremap", ndim=2)
    q = quantise_scores(smap)
    tau_levels = threshold_levels(int(q.max()), thresholds)
    fast = _fast_kernel()
    boxes: list[list[np.ndarray] | None] = [None] * len(modes)
    if fast is not None and len(modes) and _kernel_fits(q.shape):
        # the kernels (exact, see _fast_contours) also group the thresholds by mask as distinct_masks does
        if not all(modes):
            # v1 in one union-find sweep; rows are read-only views of one array
            v1, inverse = fast(q, tau_levels)
            v1.setflags(write=False)
            v1_boxes = list(v1[:, None, :])  # (1, 4) views, made by NumPy's iterator
            boxes = [None if multi else v1_boxes for multi in modes]
        if any(modes) and not opencv_order:
            v2, inverse = _all_contour_boxes(q, tau_levels)
            boxes = [v2 if multi else out for multi, out in zip(modes, boxes, strict=True)]
        if all(out is not None for out in boxes):
            return boxes, inverse  # type: ignore[return-value]
    levels, inverse = distinct_masks(q, tau_levels)
    slow = [m for m, out in enumerate(boxes) if out is None]
    if slow:
        traced = _traced_level_boxes(q, levels, [modes[m] for m in slow])
        for m, out in zip(slow, traced, strict=True):
            boxes[m] = out
    return boxes, inverse  # type: ignore[return-value]


def _fast_kernel() -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """The numba v1 kernel, or None when numba is missing or :data:`USE_NUMBA` is False."""
    return _largest_contour_boxes if USE_NUMBA else None


def _traced_level_boxes(q: np.ndarray, levels: np.ndarray, modes: Sequence[bool]) -> list[list[np.ndarray]]:
    """Boxes per distinct level and mode with OpenCV's contours (the exact path without numba, and V2)."""
    height, width = q.shape
    one_component, one_region = _single_region_levels(q)
    single = [one_region if multi else one_component for multi in modes]
    lo, hi = level_bounds(q)
    # the reference's box of a region whose bounding rectangle is the mask's, for every level at once;
    # levels proven to be one region take a read-only row of it
    mask_boxes = np.stack(
        [lo[:, 1], lo[:, 0], np.minimum(hi[:, 1] + 1, width - 1), np.minimum(hi[:, 0] + 1, height - 1)],
        axis=1,
    )
    mask_boxes.setflags(write=False)
    empty = _empty_box()
    boxes: list[list[np.ndarray]] = [[] for _ in modes]
    for level in levels.tolist():
        if lo[level, 0] >= height:
            for out in boxes:
                out.append(empty)
            continue
        contours = None
        for m, multi in enumerate(modes):
            if single[m][level]:
                boxes[m].append(mask_boxes[level : level + 1])
                continue
            if contours is None:
                bbox = (slice(lo[level, 0], hi[level, 0] + 1), slice(lo[level, 1], hi[level, 1] + 1))
                contours = _trace(q, level, bbox)
            boxes[m].append(_contour_boxes(contours, height, width, multi) if contours else empty)
    return boxes


def _trace(q: np.ndarray, level: int, bbox: tuple[slice, slice]) -> Sequence[np.ndarray]:
    """OpenCV contours (image coordinates) of ``q > level``, traced on its bounding box widened by one
    background pixel (clipped to the image): the same borders in the same order as on the whole image."""
    crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(bbox, q.shape, strict=True))
    mask = np.greater(q[crop], level).view(np.uint8)
    return cv2.findContours(
        mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(crop[1].start, crop[0].start)
    )[0]


def distinct_level_boxes(
    scoremap: np.ndarray | torch.Tensor,
    thresholds: Sequence[float] | np.ndarray,
    multi_contour: bool = False,
    *,
    order: ContourOrder = "any",
) -> tuple[list[np.ndarray], np.ndarray]:
    """Boxes per distinct mask, and which distinct mask each threshold gives.

    This is the work-sharing core of :func:`boxes_from_scoremap`; metrics use it directly so that IoUs are
    computed once per distinct mask (at most 256) rather than once per threshold.

    Args:
        scoremap: score map of shape (H, W) in [0, 1] (NumPy or torch).
        thresholds: taus, each in [0, 1).
        multi_contour: False keeps the largest contour only (MaxBoxAcc), True every contour (MaxBoxAccV2).
        order: with ``multi_contour``, "any" (default) gives the reference's boxes as a multiset, in another
            order, from the numba all-contour kernel when numba is available (:mod:`._fast_contours`; much
            faster): enough wherever only the best IoU over the boxes matters, as in MaxBoxAccV2; "opencv"
            keeps the reference's contour ORDER (traced with OpenCV).  No effect in v1 mode (one box).

    Returns:
        ``(boxes, inverse)``: ``boxes[j]`` is a read-only int64 (k, 4) array ``[x0, y0, x1, y1]`` for the
        j-th distinct mask and ``inverse`` (n_tau,) maps each threshold to its distinct mask.
    """
    opencv_order = _opencv_order(order)
    if (not multi_contour or not opencv_order) and USE_NUMBA and _scoremap_level_boxes is not None:
        smap = as_float64(scoremap)
        if smap.ndim == 2 and smap.size and _kernel_fits(smap.shape):
            # quantisation, its range check and the boxes of every distinct mask in one compiled call
            out = _scoremap_level_boxes(smap, as_thresholds(thresholds), multi_contour)
            if out is None:
                as_score_array(smap, "scoremap", ndim=2)  # raises, naming the problem
            flat, offsets, inverse = out
            return _split_boxes(flat, offsets), inverse
    (boxes,), inverse = distinct_level_boxes_modes(scoremap, thresholds, (multi_contour,), order=order)
    return boxes, inverse


def boxes_from_scoremap(
    scoremap: np.ndarray | torch.Tensor,
    thresholds: Sequence[float] | np.ndarray,
    multi_contour: bool = False,
    *,
    order: ContourOrder = "any",
) -> list[np.ndarray]:
    """Boxes of the thresholded score map at each threshold, identical to the WSOL reference.

    Args:
        scoremap: score map of shape (H, W), min-max normalised to [0, 1] (NumPy or torch, any device).
        thresholds: taus, each in [0, 1) (e.g. ``np.arange(0, 1, 0.001)``).
        multi_contour: False keeps only the contour of largest ``cv2.contourArea`` (MaxBoxAcc, v1);
            True returns the box of every outer and hole contour (MaxBoxAccV2).
        order: with ``multi_contour``, "any" (default) gives each threshold's boxes as the reference's
            multiset in another order (components, then holes; the fast kernel), "opencv" in the reference's
            contour order (slower); see :func:`distinct_level_boxes`.

    Returns:
        one int64 array of shape (k, 4) per threshold, rows ``[x0, y0, x1, y1]``; ``k = 1`` in v1 mode and
        ``[[0, 0, 0, 0]]`` when the mask is empty.  Thresholds giving the same mask share one read-only array.

    Raises:
        ValueError: scoremap not 2D, NaN/inf or values outside [0, 1]; thresholds outside [0, 1); unknown
            ``order``.
    """
    boxes, inverse = distinct_level_boxes(scoremap, thresholds, multi_contour, order=order)
    if len(inverse) == 1:
        return [boxes[int(inverse[0])]]
    return list(itemgetter(*inverse.tolist())(boxes))  # C-level gather: 1000 thresholds are common


def _boxes_job(args: tuple[np.ndarray, np.ndarray, bool, ContourOrder]) -> list[np.ndarray]:
    smap, taus, multi_contour, order = args
    return boxes_from_scoremap(smap, taus, multi_contour, order=order)


def boxes_from_scoremaps(
    scoremaps: Sequence[np.ndarray | torch.Tensor],
    thresholds: Sequence[float] | np.ndarray,
    multi_contour: bool = False,
    num_workers: int = 0,
    *,
    order: ContourOrder = "any",
) -> list[list[np.ndarray]]:
    """:func:`boxes_from_scoremap` for many maps, optionally over ``num_workers`` processes (0: in process).

    Maps are independent, so the result does not depend on ``num_workers``; ``order`` is that of
    :func:`boxes_from_scoremap`.
    """
    _opencv_order(order)  # a bad value raises here, not in a worker
    maps = [as_score_array(s, f"scoremaps[{i}]", ndim=2) for i, s in enumerate(scoremaps)]
    taus = np.asarray(thresholds, dtype=np.float64)
    if num_workers <= 0 or len(maps) < 2:
        return [boxes_from_scoremap(m, taus, multi_contour, order=order) for m in maps]
    chunksize = max(1, len(maps) // (4 * num_workers))
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        return list(
            pool.map(_boxes_job, [(m, taus, multi_contour, order) for m in maps], chunksize=chunksize)
        )


def scoremap_best_iou_curves(
    scoremaps: np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    multi_contour: bool = False,
    num_workers: int = 0,
) -> np.ndarray | None:
    """Best IoU per threshold of each map with its GT boxes (what BoxAcc needs), from the compiled kernels.

    Equal to ``best_iou_curve(boxes_from_scoremap(map, thresholds, multi_contour), gt)`` per map, without
    building any box list: a batch runs in one compiled call (quantisation with its range check, the sweeps,
    the IoUs per distinct mask).  Maps are independent: with ``num_workers > 1`` the batch is split over that
    many threads (the kernels release the GIL; each thread has its own workspace).

    Args:
        scoremaps: (B, H, W) score maps in [0, 1] (float64, or anything :func:`~._quantize.as_float64` takes).
        thresholds: taus, each in [0, 1).
        gt_boxes: B int64 arrays (g, 4) ``[x0, y0, x1, y1]``, g >= 1, already checked.
        multi_contour: False: largest contour (MaxBoxAcc); True: every contour (MaxBoxAccV2).
        num_workers: threads used for the batch (0 or 1: the calling thread).

    Returns:
        (B, n_tau) float64, or None when the kernels cannot run (numba missing, :data:`USE_NUMBA` False, or a
        map too large for them): the caller then uses the OpenCV path.

    Raises:
        ValueError: a map with NaN/inf or values outside [0, 1] (named ``y_pred[i]``); bad thresholds.
    """
    maps = as_float64(scoremaps)
    if not USE_NUMBA or _best_iou_curves is None or maps.ndim != 3 or not _kernel_fits(maps.shape[1:]):
        return None
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        return None  # empty maps: the checked path raises its own error
    taus = as_thresholds(thresholds)
    if len(gt_boxes) != len(maps):
        raise ValueError(f"gt_boxes must hold one box array per map: {len(gt_boxes)} for {len(maps)} maps.")
    workers = min(int(num_workers), len(maps))
    if workers <= 1:
        return _best_iou_curves(maps, taus, list(gt_boxes), multi_contour)
    bounds = np.linspace(0, len(maps), workers + 1).astype(int).tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(
            lambda ab: _best_iou_curves(
                maps[ab[0] : ab[1]], taus, list(gt_boxes[ab[0] : ab[1]]), multi_contour, ab[0]
            ),
            zip(bounds[:-1], bounds[1:], strict=True),
        )
        return np.concatenate(list(parts), axis=0)


def reference_boxes_from_scoremap(
    scoremap: np.ndarray, thresholds: Sequence[float] | np.ndarray, multi_contour: bool = False
) -> list[np.ndarray]:
    """The plain per-threshold loop of the reference (threshold + findContours + contourArea per tau).

    Slow on purpose: it is the yardstick that tests and ``benchmarks/bench_metrics.py`` compare
    :func:`boxes_from_scoremap` with (same outputs, and the speed ratio).
    """
    smap = as_score_array(scoremap, "scoremap", ndim=2)
    height, width = smap.shape
    image = np.expand_dims((smap * 255).astype(np.uint8), 2)
    out = []
    for tau in np.asarray(thresholds, dtype=np.float64):
        _, mask = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            out.append(np.zeros((1, 4), dtype=np.int64))
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        out.append(np.asarray(boxes, dtype=np.int64))
    return out
