"""Numba kernels, part 2: the boxes of EVERY contour (MaxBoxAccV2), and the batch best-IoU curves of the metrics.

The reference's V2 candidates are all contours of ``cv2.findContours(q > level, RETR_TREE,
CHAIN_APPROX_SIMPLE)``, each boxed by ``cv2.boundingRect`` as ``[x, y, x + w, y + h]`` clipped to
``W - 1``/``H - 1``.  Only the MULTISET of boxes per threshold matters to the metric (best IoU over the
candidates), so this kernel gives the same boxes in another order.  Exact scheme (each claim is checked
against OpenCV by ``tests/test_fast_multi_contours.py``):

- outer contours are the 8-connected foreground components; an outer border runs through the component's
  extreme pixels, so its box is the component's pixel box ``[x0, y0, x1 + 1, y1 + 1]``, clipped;
- hole contours are the 4-connected background components that do not touch the image border (OpenCV pads
  the image with background, so a background region reaching the border is outside, not a hole); a hole's
  border runs through the foreground pixels 4-adjacent to it, so its box is the hole's pixel box grown by one
  pixel on each side: ``[hx0 - 1, hy0 - 1, hx1 + 2, hy1 + 2]``, clipped;
- masks grow as the level falls, so one union-find sweep from the highest value down over the foreground
  (8-connectivity, :func:`~._fast_contours._fg_advance`) gives the components of every level, and the
  background grows as the level rises, so one sweep from the lowest value up over the background
  (4-connectivity; the padding is one "outside" set) gives the holes of every level; it stops at the highest
  level with a hole, known from the Euler number kept by the first sweep.  Both sweeps read the static
  neighbour patterns of :func:`~._fast_contours._sort_pixels` (no neighbour values are read), and a list of
  current roots (swap-removal on merge) makes each level's output O(#regions).

:func:`best_iou_curves` runs a whole batch of maps in one compiled call (quantisation with its range check,
ordering, sweeps, IoU with the GT boxes per distinct mask, one value per threshold): what
``BoxAccuracyMetric`` costs per map.

Numba's on-disk cache (``cache=True``) keys a function on its own file only: the kernels here inline and
call those of :mod:`._fast_contours`, so after editing that file delete ``__pycache__/*.nbi`` / ``*.nbc`` (a
fresh clone compiles everything on first use and is not concerned).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._fast_contours import (
    _D_AREA2,
    _D_EULER4,
    _DX,
    _DY,
    _OUTSIDE_RANK,
    _POS,
    _RANK,
    _UNIONS,
    _UNIONS4,
    _X0,
    _X1,
    _Y0,
    _Y1,
    WORKSPACE,
    _check_levels,
    _fg_advance,
    _find,
    _group_levels,
    _joined,
    _largest_boxes,
    _load_row,
    _new_root,
    _pad_scores,
    _sort_pixels,
    _store_row,
    _union,
    padded_quantised,
    padded_scores,
)

__all__ = ["all_contour_boxes", "best_iou_curves"]

_ALL_TABLES = (_D_AREA2, _D_EULER4, _UNIONS, _UNIONS4, _DX, _DY)


@njit(cache=True, nogil=True)
def _grow(buf: np.ndarray, need: int) -> np.ndarray:
    """``buf`` (n, 4) or a copy with at least ``need`` rows (capacity doubling)."""
    if need <= buf.shape[0]:
        return buf
    out = np.empty((max(need, 2 * buf.shape[0]), 4), dtype=np.int64)
    out[: buf.shape[0]] = buf
    return out


@njit(cache=True, nogil=True)
def _emit_root_boxes(
    out: np.ndarray,
    n_out: int,
    roots: np.ndarray,
    n_roots: int,
    comp: np.ndarray,
    grow: int,
    width: int,
    height: int,
) -> int:
    """Append the image-coordinate box ``[x0, y0, x1 + 1, y1 + 1]`` of each listed root, grown by ``grow``
    pixels on every side (0: a component; 1: a hole's border), ends clipped to W - 1 / H - 1 as the reference.
    The component table holds padded coordinates (image + 1).  Returns the new length of ``out``."""
    for i in range(n_roots):
        r = roots[i]
        out[n_out, 0] = comp[r, _X0] - 1 - grow
        out[n_out, 1] = comp[r, _Y0] - 1 - grow
        out[n_out, 2] = min(comp[r, _X1] + grow, width - 1)
        out[n_out, 3] = min(comp[r, _Y1] + grow, height - 1)
        n_out += 1
    return n_out


@njit(cache=True, nogil=True)
def _bg_advance(
    keys: np.ndarray,
    start: np.ndarray,
    value: int,
    stop: int,
    stride: int,
    parent: np.ndarray,
    comp: np.ndarray,
    roots: np.ndarray,
    n_roots: int,
    noff: np.ndarray,
    unions4: np.ndarray,
) -> tuple[int, int]:
    """Add the pixels of values ``value + 1`` up to ``stop`` to the 4-connected background; a set joined to
    the outside (padding) leaves the root list.  Returns the new ``value`` and the root list's length."""
    cur = -1  # the root last joined, its fields in registers (see _fg_advance)
    row = (0, 0, 0, 0, 0, 0, 0)
    while value < stop:
        value += 1
        for i in range(start[value], start[value + 1]):
            key = keys[np.uint64(i)]
            pattern = np.uint64(key & 0xFF)
            x = (key >> 16) & 0xFFFFFF
            y = key >> 40
            p = y * stride + x
            d = unions4[pattern, 0]
            if d < 0:  # no background edge neighbour yet: a new region
                parent[p] = p
                n_roots = _new_root(comp, roots, n_roots, p, x, y, 0)
                continue
            r = _find(parent, p + noff[d])
            for k in range(1, 4):
                d = unions4[pattern, k]
                if d < 0:
                    break
                rn = _find(parent, p + noff[d])
                if rn != r:
                    _store_row(comp, cur, row)
                    cur = -1
                    r, n_roots = _union(parent, comp, roots, n_roots, r, rn)
            parent[np.uint64(p)] = r
            if r != cur:
                _store_row(comp, cur, row)
                cur = r
                row = _load_row(comp, r)
            row = _joined(row, x, y, p, 0, 0)
    _store_row(comp, cur, row)
    return value, n_roots


@njit(cache=True, nogil=True)
def _init_outside(parent: np.ndarray, comp: np.ndarray, height: int, width: int) -> None:
    """Every padding cell belongs to one set, rooted at cell 0, that wins every union and is never listed:
    OpenCV's background frame around the image."""
    stride = width + 2
    for x in range(stride):
        parent[x] = 0
        parent[(height + 1) * stride + x] = 0
    for y in range(1, height + 1):
        parent[y * stride] = 0
        parent[y * stride + width + 1] = 0
    comp[0, _RANK] = _OUTSIDE_RANK
    comp[0, _POS] = -1


@njit(cache=True, nogil=True)
def _all_boxes(
    height: int,
    width: int,
    keys: np.ndarray,
    start: np.ndarray,
    levels: np.ndarray,
    parent: np.ndarray,
    comp: np.ndarray,
    roots: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of every contour of ``q > level`` for each level (ascending): per level its components then its
    holes, ``[[0, 0, 0, 0]]`` for an empty mask.  Returns the (n, 4) boxes and (n_levels + 1,) offsets."""
    d_area2, d_euler4, unions, unions4, dx, dy = tables
    stride = width + 2
    noff = dy * stride + dx
    n_levels = levels.size

    # --- foreground, 8-connected: from the highest value down; level l holds values > l ---
    fg = np.empty((64, 4), dtype=np.int64)
    fg_start = np.zeros(n_levels, dtype=np.int64)
    fg_count = np.zeros(n_levels, dtype=np.int64)
    n_fg, n_roots, value = 0, 0, 256
    euler4 = 0  # 4 x the Euler number of the mask
    last_hole = -1  # the highest level (index) with a hole: the background sweep stops there
    for li in range(n_levels - 1, -1, -1):
        value, n_roots, d_euler = _fg_advance(
            keys, start, value, levels[li] + 1, stride, parent, comp, roots, n_roots, li + 1,
            noff, d_area2, d_euler4, unions,
        )  # fmt: skip
        euler4 += d_euler
        fg = _grow(fg, n_fg + n_roots)
        fg_start[li] = n_fg
        n_fg = _emit_root_boxes(fg, n_fg, roots, n_roots, comp, 0, width, height)
        fg_count[li] = n_roots
        # holes = components - Euler number (8-connected, Gray's bit quads kept up to date as pixels join)
        if last_hole < 0 and 4 * n_roots != euler4:
            last_hole = li

    # --- background, 4-connected: from the lowest value up; level l's background holds values <= l ---
    _init_outside(parent, comp, height, width)
    holes = np.empty((64, 4), dtype=np.int64)
    hole_start = np.zeros(n_levels, dtype=np.int64)
    hole_count = np.zeros(n_levels, dtype=np.int64)
    n_holes, n_roots, value = 0, 0, -1
    for li in range(last_hole + 1):
        value, n_roots = _bg_advance(
            keys, start, value, levels[li], stride, parent, comp, roots, n_roots, noff, unions4
        )
        holes = _grow(holes, n_holes + n_roots)
        hole_start[li] = n_holes
        # a hole's border runs through the foreground pixels around it: its pixel box grown by one
        n_holes = _emit_root_boxes(holes, n_holes, roots, n_roots, comp, 1, width, height)
        hole_count[li] = n_roots

    # --- per level: its components then its holes; an empty mask gives [0, 0, 0, 0] ---
    offsets = np.zeros(n_levels + 1, dtype=np.int64)
    for li in range(n_levels):
        offsets[li + 1] = offsets[li] + max(fg_count[li] + hole_count[li], 1)
    out = np.zeros((offsets[n_levels], 4), dtype=np.int64)
    for li in range(n_levels):
        o = offsets[li]
        out[o : o + fg_count[li]] = fg[fg_start[li] : fg_start[li] + fg_count[li]]
        o += fg_count[li]
        out[o : o + hole_count[li]] = holes[hole_start[li] : hole_start[li] + hole_count[li]]
    return out, offsets


@njit(cache=True, nogil=True)
def _level_boxes(
    qp: np.ndarray,
    height: int,
    width: int,
    counts: np.ndarray,
    tau_levels: np.ndarray,
    multi: bool,
    keys: np.ndarray,
    parent: np.ndarray,
    comp: np.ndarray,
    roots: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes per distinct mask of a loaded map: ``(boxes (n, 4), offsets (n_masks + 1,), inverse (n_tau,))``,
    the largest contour's (v1) or every contour's (``multi``)."""
    levels, inverse, above = _group_levels(counts, tau_levels)
    start = _sort_pixels(qp, height, width, counts, keys)
    if multi:
        boxes, offsets = _all_boxes(height, width, keys, start, levels, parent, comp, roots, tables)
        return boxes, offsets, inverse
    d_area2, d_euler4, unions, _, dx, dy = tables
    boxes = _largest_boxes(
        qp,
        height,
        width,
        keys,
        start,
        levels,
        above,
        parent,
        comp,
        roots,
        (d_area2, d_euler4, unions, dx, dy),
    )
    return boxes, np.arange(levels.size + 1), inverse


@njit(cache=True, nogil=True)
def _best_iou(boxes: np.ndarray, a: int, b: int, gt: np.ndarray) -> float:
    """Best pixel-inclusive IoU of ``boxes[a:b]`` with the GT boxes, with the arithmetic of
    :func:`~.box_accuracy.box_iou_inclusive` (integer areas, one float64 division, 0 for a non-positive union)."""
    best = 0.0  # IoUs are >= 0
    for i in range(a, b):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area = (x1 - x0 + 1) * (y1 - y0 + 1)
        for j in range(gt.shape[0]):
            iw = max(0, min(x1, gt[j, 2]) - max(x0, gt[j, 0]) + 1)
            ih = max(0, min(y1, gt[j, 3]) - max(y0, gt[j, 1]) + 1)
            inter = iw * ih
            union = area + (gt[j, 2] - gt[j, 0] + 1) * (gt[j, 3] - gt[j, 1] + 1) - inter
            if union > 0:
                best = max(best, inter / union)
    return best


@njit(cache=True, nogil=True)
def _batch_curves(
    maps: np.ndarray,
    taus: np.ndarray,
    gts: np.ndarray,
    gt_offsets: np.ndarray,
    multi: bool,
    qp: np.ndarray,
    counts: np.ndarray,
    keys: np.ndarray,
    parent: np.ndarray,
    comp: np.ndarray,
    roots: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray,
) -> int:
    """Best IoU per threshold of each map of ``maps`` (B, H, W) into ``out`` (B, n_tau); returns the index of
    the first map with a value outside [0, 1] (NaN included), or -1."""
    height, width = maps.shape[1], maps.shape[2]
    for b in range(maps.shape[0]):
        q_max = _pad_scores(maps[b], qp, counts)
        if q_max < 0:
            return b
        # int(tau * max(q)) with the reference's float64 product
        tau_levels = np.floor(taus * np.float64(q_max)).astype(np.int64)
        boxes, offsets, inverse = _level_boxes(
            qp, height, width, counts, tau_levels, multi, keys, parent, comp, roots, tables
        )
        gt = gts[gt_offsets[b] : gt_offsets[b + 1]]
        best = np.empty(offsets.size - 1)
        for j in range(best.size):
            best[j] = _best_iou(boxes, offsets[j], offsets[j + 1], gt)
        for t in range(taus.size):
            out[b, t] = best[inverse[t]]
    return -1


def best_iou_curves(
    maps: np.ndarray,
    thresholds: np.ndarray,
    gt_boxes: list[np.ndarray],
    multi_contour: bool,
    first_index: int = 0,
) -> np.ndarray:
    """Best IoU per threshold of each 2D score map with its GT boxes, as ``best_iou_curve`` of the boxes of
    ``boxes_from_scoremap`` (exactly), in one compiled call for the batch.

    Args:
        maps: (B, H, W) float64 score maps (values are checked to be within [0, 1]).
        thresholds: (n_tau,) float64 taus in [0, 1) (already checked).
        gt_boxes: B int64 arrays (g, 4) ``[x0, y0, x1, y1]`` with g >= 1 (already checked).
        multi_contour: False: the largest contour (MaxBoxAcc), True: every contour (MaxBoxAccV2).
        first_index: index of ``maps[0]`` in the caller's batch (error messages).

    Returns:
        (B, n_tau) float64 best IoU per image and threshold.

    Raises:
        ValueError: a map with NaN/inf or values outside [0, 1] (named by its index).
    """
    maps = np.ascontiguousarray(maps, dtype=np.float64)
    taus = np.ascontiguousarray(thresholds, dtype=np.float64)
    out = np.empty((maps.shape[0], taus.size), dtype=np.float64)
    if maps.shape[0] == 0:
        return out
    _check_levels(maps.shape[1:], np.zeros(1, dtype=np.int64), allow_empty=False)
    gts = np.ascontiguousarray(np.concatenate(gt_boxes, axis=0), dtype=np.int64)
    gt_offsets = np.zeros(len(gt_boxes) + 1, dtype=np.int64)
    np.cumsum([len(g) for g in gt_boxes], out=gt_offsets[1:])
    qp, counts, keys, parent, comp, roots = WORKSPACE.get(*maps.shape[1:])
    bad = _batch_curves(
        maps, taus, gts, gt_offsets, bool(multi_contour), qp, counts, keys, parent, comp, roots, _ALL_TABLES, out,
    )  # fmt: skip
    if bad >= 0:
        from ._quantize import as_score_array  # its message names the problem (NaN/inf or the value range)

        as_score_array(maps[bad], f"y_pred[{first_index + bad}]", ndim=2)
        raise AssertionError("unreachable: the kernel and as_score_array disagree")  # pragma: no cover
    return out


def scoremap_level_boxes(
    smap: np.ndarray, thresholds: np.ndarray, multi_contour: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Boxes per distinct mask of a float64 (H, W) score map, quantised and checked in the kernel:
    ``(boxes (n, 4), offsets (n_masks + 1,), inverse (n_tau,))`` (V2 boxes in the kernel's order), or None
    when a value is NaN or outside [0, 1] (the caller raises its own error)."""
    q_max, (qp, counts, keys, parent, comp, roots) = padded_scores(smap)
    if q_max < 0:
        return None
    tau_levels = np.floor(np.asarray(thresholds, dtype=np.float64) * float(q_max)).astype(np.int64)
    return _level_boxes(
        qp, smap.shape[0], smap.shape[1], counts, tau_levels, bool(multi_contour), keys, parent, comp, roots,
        _ALL_TABLES,
    )  # fmt: skip


def all_contour_boxes(q: np.ndarray, tau_levels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Boxes ``[x0, y0, x1, y1]`` of every contour (outer and hole) of ``q > level`` per distinct mask.

    Args:
        q: quantised score map, uint8 of shape (H, W).
        tau_levels: level ``int(tau * max(q))`` of each threshold, shape (n_tau,), values >= 0.

    Returns:
        ``(boxes, inverse)``: per distinct mask (ascending level, grouped as
        :func:`~._quantize.distinct_masks`), a read-only int64 (k, 4) array holding the same MULTISET of rows
        as the reference's boxes of all contours (``[[0, 0, 0, 0]]`` for an empty mask), in another order;
        and, per threshold, the index of its mask.
    """
    tau_levels = _check_levels(np.shape(q), tau_levels, allow_empty=False)
    _, (qp, counts, keys, parent, comp, roots) = padded_quantised(q)
    flat, offsets, inverse = _level_boxes(
        qp, q.shape[0], q.shape[1], counts, tau_levels, True, keys, parent, comp, roots, _ALL_TABLES
    )
    return split_boxes(flat, offsets), inverse


def split_boxes(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Read-only views ``flat[offsets[j]:offsets[j + 1]]``, one per distinct mask."""
    flat.setflags(write=False)
    bounds = offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
