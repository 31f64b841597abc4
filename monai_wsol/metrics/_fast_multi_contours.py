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

import numpy as np
from numba import njit

from ._fast_contours import _DX, _DY, _UNIONS, _find, fits
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


@njit(cache=True, nogil=True)
def _drop_root(roots: np.ndarray, pos: np.ndarray, n_roots: int, r: int) -> int:
    """Remove root ``r`` from the list of current roots (swap with the last); returns the new length."""
    i = pos[r]
    last = roots[n_roots - 1]
    roots[i] = last
    pos[last] = i
    pos[r] = -1
    return n_roots - 1


@njit(cache=True, nogil=True)
def _merge(
    parent: np.ndarray, rank: np.ndarray, box: np.ndarray, roots: np.ndarray, pos: np.ndarray,
    n_roots: int, r: int, rn: int,
) -> tuple[int, int]:
    """Union of the sets rooted at ``r`` and ``rn`` (union by rank); returns the new root and list length.
    The surviving root keeps the union's box; the absorbed one leaves the root list (if it was in it); the
    outside set, of huge rank, always survives and is never listed."""
    if rank[rn] > rank[r]:
        r, rn = rn, r
    elif rank[rn] == rank[r]:
        rank[r] += 1
    parent[rn] = r
    box[r, 0] = min(box[r, 0], box[rn, 0])
    box[r, 1] = min(box[r, 1], box[rn, 1])
    box[r, 2] = max(box[r, 2], box[rn, 2])
    box[r, 3] = max(box[r, 3], box[rn, 3])
    if pos[rn] >= 0:
        n_roots = _drop_root(roots, pos, n_roots, rn)
    return r, n_roots


@njit(cache=True, nogil=True)
def _all_contour_boxes(
    q: np.ndarray, levels: np.ndarray, unions: np.ndarray, dx: np.ndarray, dy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    height, width = q.shape
    stride = width + 2
    size = (height + 2) * stride
    n_levels = levels.size
    # pixels bucketed by value (a linked list per value); padded coordinates kept per pixel
    head = np.full(256, -1, dtype=np.int64)
    nxt = np.empty(size, dtype=np.int64)
    py = np.empty(size, dtype=np.int64)
    px = np.empty(size, dtype=np.int64)
    for y in range(height):
        for x in range(width):
            p = (y + 1) * stride + x + 1
            v = q[y, x]
            nxt[p] = head[v]
            head[v] = p
            py[p] = y + 1
            px[p] = x + 1
    parent = np.empty(size, dtype=np.int64)
    rank = np.zeros(size, dtype=np.int64)
    box = np.empty((size, 4), dtype=np.int64)  # x0, y0, x1, y1 in padded coordinates
    pos = np.full(size, -1, dtype=np.int64)
    roots = np.empty(size, dtype=np.int64)
    active = np.zeros(size, dtype=np.uint8)
    noff = np.empty(8, dtype=np.int64)
    for d in range(8):
        noff[d] = dy[d] * stride + dx[d]

    # --- foreground, 8-connected: from the highest value down; level l holds values > l ---
    fg = np.empty((64, 4), dtype=np.int64)
    fg_end = np.zeros(n_levels + 1, dtype=np.int64)  # level li's boxes: fg[fg_end[li]:fg_end[li + 1]]
    n_fg = 0
    n_roots = 0
    value = 256
    fg_count = np.zeros(n_levels, dtype=np.int64)
    fg_start = np.zeros(n_levels, dtype=np.int64)
    for li in range(n_levels - 1, -1, -1):
        level = levels[li]
        while value > level + 1:
            value -= 1
            p = head[value]
            while p >= 0:
                up, down = p - stride, p + stride
                pattern = (
                    np.int64(active[p + 1])
                    | (np.int64(active[up + 1]) << 1)
                    | (np.int64(active[up]) << 2)
                    | (np.int64(active[up - 1]) << 3)
                    | (np.int64(active[p - 1]) << 4)
                    | (np.int64(active[down - 1]) << 5)
                    | (np.int64(active[down]) << 6)
                    | (np.int64(active[down + 1]) << 7)
                )
                active[p] = 1
                parent[p] = p
                rank[p] = 0
                box[p, 0] = px[p]
                box[p, 1] = py[p]
                box[p, 2] = px[p]
                box[p, 3] = py[p]
                roots[n_roots] = p
                pos[p] = n_roots
                n_roots += 1
                r = p
                for k in range(4):  # one find per group of mutually adjacent active neighbours
                    d = unions[pattern, k]
                    if d < 0:
                        break
                    rn = _find(parent, p + noff[d])
                    if rn != r:
                        r, n_roots = _merge(parent, rank, box, roots, pos, n_roots, r, rn)
                p = nxt[p]
        fg = _grow(fg, n_fg + n_roots)
        fg_start[li] = n_fg
        for i in range(n_roots):
            r = roots[i]
            fg[n_fg, 0] = box[r, 0] - 1
            fg[n_fg, 1] = box[r, 1] - 1
            fg[n_fg, 2] = min(box[r, 2], width - 1)  # padded x1 = image x1 + 1, clipped as the reference
            fg[n_fg, 3] = min(box[r, 3], height - 1)
            n_fg += 1
        fg_count[li] = n_roots

    # --- background, 4-connected: from the lowest value up; level l's background holds values <= l ---
    for i in range(n_roots):
        pos[roots[i]] = -1
    n_roots = 0
    active[:] = 0
    outside = 0  # a padding cell stands for all the padding: OpenCV's background frame around the image
    parent[outside] = outside
    rank[outside] = 1 << 40
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
    for li in range(n_levels):
        level = levels[li]
        while value < min(level, 255):
            value += 1
            p = head[value]
            while p >= 0:
                active[p] = 1
                parent[p] = p
                rank[p] = 0
                box[p, 0] = px[p]
                box[p, 1] = py[p]
                box[p, 2] = px[p]
                box[p, 3] = py[p]
                roots[n_roots] = p
                pos[p] = n_roots
                n_roots += 1
                r = p
                for d in range(0, 8, 2):  # the four edge neighbours
                    nb = p + noff[d]
                    if active[nb]:
                        rn = _find(parent, nb)
                        if rn != r:
                            r, n_roots = _merge(parent, rank, box, roots, pos, n_roots, r, rn)
                p = nxt[p]
        holes = _grow(holes, n_holes + n_roots)
        hole_start[li] = n_holes
        for i in range(n_roots):
            r = roots[i]
            # a hole's border runs through the foreground pixels around it: its pixel box grown by one
            holes[n_holes, 0] = box[r, 0] - 2
            holes[n_holes, 1] = box[r, 1] - 2
            holes[n_holes, 2] = min(box[r, 2] + 1, width - 1)
            holes[n_holes, 3] = min(box[r, 3] + 1, height - 1)
            n_holes += 1
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
    flat, offsets = _all_contour_boxes(q, np.ascontiguousarray(levels, dtype=np.int64), _UNIONS, _DX, _DY)
    flat.setflags(write=False)
    bounds = offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], inverse
