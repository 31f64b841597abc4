"""Numba kernel: the boxes of EVERY contour (MaxBoxAccV2) of ``q > level`` for many levels in two sweeps.

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
  (8-connectivity) gives the components of every level, and background grows as the level rises, so one
  sweep from the lowest value up over the background (4-connectivity; the padding is one "outside" set that
  border pixels join) gives the holes of every level.  A list of current roots (swap-removal on merge) makes
  each level's output O(#regions).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from ._fast_contours import _D_EULER4, _DX, _DY, _UNIONS, _find, _neighbour_pattern, _workspace, fits
from ._quantize import distinct_masks

__all__ = ["all_contour_boxes"]


@njit(cache=True, nogil=True)
def _grow(buf: np.ndarray, need: int) -> np.ndarray:
    """``buf`` (n, 4) or a copy with at least ``need`` rows (capacity doubling)."""
    if need <= buf.shape[0]:
        return buf
    out = np.empty((max(need, 2 * buf.shape[0]), 4), dtype=np.int64)
    out[: buf.shape[0]] = buf
    return out


@njit(cache=True, nogil=True, inline="always")
def _drop_root(roots: np.ndarray, pos: np.ndarray, n_roots: int, r: int) -> int:
    """Remove root ``r`` from the list of current roots (swap with the last); returns the new length."""
    i = pos[r]
    last = roots[n_roots - 1]
    roots[i] = last
    pos[last] = i
    pos[r] = -1
    return n_roots - 1


@njit(cache=True, nogil=True, inline="always")
def _merge(
    parent: np.ndarray,
    rank: np.ndarray,
    box: np.ndarray,
    roots: np.ndarray,
    pos: np.ndarray,
    n_roots: int,
    r: int,
    rn: int,
) -> tuple[int, int]:
    """Union of the sets rooted at ``r`` and ``rn`` (union by rank); returns the new root and list length.
    The surviving root keeps the union's box (``box`` (4, n): x0, y0, x1, y1); the absorbed one leaves the
    root list (if it was in it); the outside set, of huge rank, always survives and is never listed."""
    if rank[rn] > rank[r]:
        r, rn = rn, r
    elif rank[rn] == rank[r]:
        rank[r] += 1
    parent[rn] = r
    box[0, r] = min(box[0, r], box[0, rn])
    box[1, r] = min(box[1, r], box[1, rn])
    box[2, r] = max(box[2, r], box[2, rn])
    box[3, r] = max(box[3, r], box[3, rn])
    if pos[rn] >= 0:
        n_roots = _drop_root(roots, pos, n_roots, rn)
    return r, n_roots


@njit(cache=True, nogil=True, inline="always")
def _add_pixel(
    parent: np.ndarray,
    rank: np.ndarray,
    box: np.ndarray,
    roots: np.ndarray,
    pos: np.ndarray,
    n_roots: int,
    p: int,
    r: int,
    x: int,
    y: int,
) -> int:
    """Pixel ``p`` at padded ``(x, y)`` joins the set rooted at ``r``, or starts a listed set when ``r < 0``;
    returns the root list's length."""
    if r < 0:
        parent[p] = p
        rank[p] = 0
        box[0, p] = x
        box[1, p] = y
        box[2, p] = x
        box[3, p] = y
        roots[n_roots] = p
        pos[p] = n_roots
        return n_roots + 1
    parent[p] = r
    box[0, r] = min(box[0, r], x)
    box[1, r] = min(box[1, r], y)
    box[2, r] = max(box[2, r], x)
    box[3, r] = max(box[3, r], y)
    return n_roots


@njit(cache=True, nogil=True)
def _emit_root_boxes(
    out: np.ndarray,
    n_out: int,
    roots: np.ndarray,
    n_roots: int,
    box: np.ndarray,
    grow: int,
    width: int,
    height: int,
) -> int:
    """Append the image-coordinate box ``[x0, y0, x1 + 1, y1 + 1]`` of each listed root, grown by ``grow``
    pixels on every side (0: a component; 1: a hole's border), ends clipped to W - 1 / H - 1 as the reference.
    ``box`` holds padded coordinates (image + 1). Returns the new length of ``out``."""
    for i in range(n_roots):
        r = roots[i]
        out[n_out, 0] = box[0, r] - 1 - grow
        out[n_out, 1] = box[1, r] - 1 - grow
        out[n_out, 2] = min(box[2, r] + grow, width - 1)
        out[n_out, 3] = min(box[3, r] + grow, height - 1)
        n_out += 1
    return n_out


@njit(cache=True, nogil=True)
def _all_contour_boxes(
    q: np.ndarray,
    levels: np.ndarray,
    work: np.ndarray,
    active: np.ndarray,
    unions: np.ndarray,
    d_euler4: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    height, width = q.shape
    stride = width + 2
    size = (height + 2) * stride
    n_levels = levels.size
    # pixels sorted by value (counting sort): value v's pixels are order[start[v]:start[v + 1]], with their
    # padded coordinates packed as (y << 16) | x alongside, both read sequentially by the sweeps
    start = np.zeros(257, dtype=np.int64)
    for y in range(height):
        for x in range(width):
            start[q[y, x] + 1] += 1
    for v in range(256):
        start[v + 1] += start[v]
    fill = start[:256].copy()
    order = work[0]
    oyx = work[1]
    for y in range(height):
        for x in range(width):
            v = q[y, x]
            i = fill[v]
            fill[v] = i + 1
            order[i] = (y + 1) * stride + x + 1
            oyx[i] = ((y + 1) << 16) | (x + 1)
    parent = work[2]
    rank = work[3]
    box = work[4:8]  # x0, y0, x1, y1 of each root, padded coordinates
    pos = work[8]  # index of a listed root in ``roots``, -1 for any other pixel
    roots = work[9]
    pos[:size] = -1
    active[:size] = 0
    noff = np.empty(8, dtype=np.int64)
    for d in range(8):
        noff[d] = dy[d] * stride + dx[d]

    # --- foreground, 8-connected: from the highest value down; level l holds values > l ---
    fg = np.empty((64, 4), dtype=np.int64)
    n_fg = 0
    n_roots = 0
    value = 256
    fg_count = np.zeros(n_levels, dtype=np.int64)
    euler4 = 0  # 4 x the Euler number of the mask
    last_hole = -1  # the highest level (index) with a hole: the background sweep stops there
    fg_start = np.zeros(n_levels, dtype=np.int64)
    for li in range(n_levels - 1, -1, -1):
        level = levels[li]
        while value > level + 1:
            value -= 1
            for i in range(start[value], start[value + 1]):
                p = np.int64(order[i])
                pattern = _neighbour_pattern(active, p, stride)
                active[p] = 1
                euler4 += d_euler4[pattern]
                r = -1
                for k in range(4):  # one find per group of mutually adjacent active neighbours
                    d = unions[pattern, k]
                    if d < 0:
                        break
                    rn = _find(parent, p + noff[d])
                    if r < 0:
                        r = rn
                    elif rn != r:
                        r, n_roots = _merge(parent, rank, box, roots, pos, n_roots, r, rn)
                n_roots = _add_pixel(
                    parent, rank, box, roots, pos, n_roots, p, r, oyx[i] & 0xFFFF, oyx[i] >> 16
                )
        fg = _grow(fg, n_fg + n_roots)
        fg_start[li] = n_fg
        n_fg = _emit_root_boxes(fg, n_fg, roots, n_roots, box, 0, width, height)
        fg_count[li] = n_roots
        # holes = components - Euler number (8-connected, Gray's bit quads kept up to date as pixels join)
        if last_hole < 0 and 4 * n_roots != euler4:
            last_hole = li

    # --- background, 4-connected: from the lowest value up; level l's background holds values <= l ---
    for i in range(n_roots):
        pos[roots[i]] = -1
    n_roots = 0
    active[:size] = 0
    outside = 0  # a padding cell stands for all the padding: OpenCV's background frame around the image
    parent[outside] = outside
    rank[outside] = 1 << 30
    pos[outside] = -1
    for x in range(stride):
        for p in (x, (height + 1) * stride + x):
            active[p] = 1
            parent[p] = outside
    for y in range(1, height + 1):
        for p in (y * stride, y * stride + width + 1):
            active[p] = 1
            parent[p] = outside
    holes = np.empty((64, 4), dtype=np.int64)
    hole_count = np.zeros(n_levels, dtype=np.int64)
    hole_start = np.zeros(n_levels, dtype=np.int64)
    n_holes = 0
    value = -1
    for li in range(last_hole + 1):
        level = levels[li]
        while value < min(level, 255):
            value += 1
            for i in range(start[value], start[value + 1]):
                p = np.int64(order[i])
                active[p] = 1
                r = -1
                for d in range(0, 8, 2):  # the four edge neighbours
                    nb = p + noff[d]
                    if active[nb]:
                        rn = _find(parent, nb)
                        if r < 0:
                            r = rn
                        elif rn != r:
                            r, n_roots = _merge(parent, rank, box, roots, pos, n_roots, r, rn)
                n_roots = _add_pixel(
                    parent, rank, box, roots, pos, n_roots, p, r, oyx[i] & 0xFFFF, oyx[i] >> 16
                )
        holes = _grow(holes, n_holes + n_roots)
        hole_start[li] = n_holes
        # a hole's border runs through the foreground pixels around it: its pixel box grown by one
        n_holes = _emit_root_boxes(holes, n_holes, roots, n_roots, box, 1, width, height)
        hole_count[li] = n_roots

    # --- per level: its components then its holes; an empty mask gives [0, 0, 0, 0] ---
    offsets = np.zeros(n_levels + 1, dtype=np.int64)
    for li in range(n_levels):
        offsets[li + 1] = offsets[li] + max(fg_count[li] + hole_count[li], 1)
    out = np.zeros((offsets[n_levels], 4), dtype=np.int64)
    for li in range(n_levels):
        o = offsets[li]
        for i in range(fg_count[li]):
            out[o + i] = fg[fg_start[li] + i]
        o += fg_count[li]
        for i in range(hole_count[li]):
            out[o + i] = holes[hole_start[li] + i]
    return out, offsets


_N_WORK = 10
_WORKSPACE = threading.local()  # per-thread scratch arrays, reused across calls (no allocation per map)


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
    q = np.ascontiguousarray(q, dtype=np.uint8)
    tau_levels = np.ascontiguousarray(tau_levels, dtype=np.int64)
    if not fits(q.shape) or tau_levels.ndim != 1 or tau_levels.size == 0 or tau_levels.min() < 0:
        raise ValueError(
            f"q must be 2D (got shape {q.shape}) and tau_levels a non-empty 1D array of levels >= 0."
        )
    levels, inverse = distinct_masks(q, tau_levels)
    work, active = _workspace((q.shape[0] + 2) * (q.shape[1] + 2), _WORKSPACE, _N_WORK)
    flat, offsets = _all_contour_boxes(
        q, np.ascontiguousarray(levels, dtype=np.int64), work, active, _UNIONS, _D_EULER4, _DX, _DY
    )
    flat.setflags(write=False)
    bounds = offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], inverse
