"""Numba kernel: the v1 (largest ``cv2.contourArea``) box of ``q > level`` for many levels in one sweep.

Exact scheme (each claim is checked against OpenCV by ``tests/test_fast_contours.py``):

- outer contours of ``cv2.findContours(mask, RETR_TREE, CHAIN_APPROX_SIMPLE)`` are the 8-connected
  components; a hole contour (or a component nested in a hole) never has a larger area than the outer contour
  around it, and that outer contour precedes it in OpenCV's list, so the v1 contour is always an outer one;
- OpenCV lists the top-level outer contours in DESCENDING raster order of their first (top-most, then
  left-most) pixel, so among equal areas the component whose first pixel comes last in raster order wins
  (Python's ``max`` keeps the first maximum of the list);
- ``cv2.contourArea`` of an outer contour (shoelace through pixel centres; CHAIN_APPROX_SIMPLE drops only
  collinear points) equals ``n4 + n3 / 2`` over the 2x2 windows of the component with its holes filled,
  ``nk`` counting windows holding k of its pixels; without holes this is a sum over windows, kept up to date
  as pixels join; with holes (Euler number, also a window sum, below 1) the outer border is traced
  (Suzuki-Abe, as OpenCV) and its shoelace taken, only when its upper bound (the area of its box of pixel
  centres) reaches the best lower bound (window sum) of the level, i.e. when it could win;
- the box is the component's bounding box; OpenCV pads the image with background, so does the kernel.

Masks grow as the level falls: one sweep from the highest value down adds each pixel once (per-value lists,
union-find with per-component window sums, bounding box and first pixel), and at each requested level only
the components that received pixels are re-evaluated.  Areas are kept doubled, as exact integers.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

__all__ = ["fits", "largest_contour_boxes"]

_MAX_HEIGHT, _MAX_WIDTH = 32765, 65533  # padded coordinates are packed as (y << 16) | x in an int32


def fits(shape: tuple[int, ...]) -> bool:
    """Can the kernel take a 2D map of this shape (coordinates packed in 32 bits)?"""
    return len(shape) == 2 and shape[0] <= _MAX_HEIGHT and shape[1] <= _MAX_WIDTH


def _window_area2(n: int) -> int:
    """Twice the convex-hull area of n set pixels of a 2x2 window (3: a half square, 4: the square)."""
    return {3: 1, 4: 2}.get(n, 0)


def _window_euler4(n: int, diagonal: bool) -> int:
    """4 x the Euler contribution of a 2x2 window holding n set pixels (Gray's bit quads, 8-connected)."""
    return {1: 1, 3: -1}.get(n, -2 if diagonal else 0)


# neighbour directions in OpenCV's counter-clockwise order (image y points down): right, up-right, up, ...
_DX = np.array([1, 1, 0, -1, -1, -1, 0, 1], dtype=np.int64)
_DY = np.array([0, -1, -1, -1, 0, 1, 1, 1], dtype=np.int64)


@njit(cache=True, nogil=True)
def _find(parent: np.ndarray, p: int) -> int:
    while True:
        up = parent[p]
        if up == p:
            return p
        top = parent[up]
        if top == up:
            return up
        parent[p] = top  # path halving, without a store when the parent is the root
        p = top


@njit(cache=True, nogil=True)
def _neighbour_pattern(active: np.ndarray, p: int, stride: int) -> int:
    """8-bit pattern of the active neighbours of padded pixel ``p``: bit d is set when the neighbour in direction d
    (:data:`_DX`, :data:`_DY`) is active."""
    up, down = p - stride, p + stride
    return (
        np.int64(active[p + 1])
        | (np.int64(active[up + 1]) << 1)
        | (np.int64(active[up]) << 2)
        | (np.int64(active[up - 1]) << 3)
        | (np.int64(active[p - 1]) << 4)
        | (np.int64(active[down - 1]) << 5)
        | (np.int64(active[down]) << 6)
        | (np.int64(active[down + 1]) << 7)
    )


@njit(cache=True, nogil=True)
def _outer_area2(qp: np.ndarray, stride: int, level: int, start: int, dx: np.ndarray, dy: np.ndarray) -> int:
    """Twice the shoelace area of the outer border starting at ``start`` (first raster pixel of its component)
    of ``qp > level``, followed as Suzuki-Abe / OpenCV do."""
    off = np.empty(8, dtype=np.int64)
    for d in range(8):
        off[d] = dy[d] * stride + dx[d]
    first_dir = -1
    for k in range(8):  # clockwise from the left neighbour (background: start is the first raster pixel)
        d = (4 - k) & 7
        if qp[start + off[d]] > level:
            first_dir = d
            break
    if first_dir < 0:
        return 0  # isolated pixel
    last = start + off[first_dir]  # the border closes when it comes back to start from this pixel
    cur, back = start, first_dir
    x, y = 0, 0  # coordinates relative to start: the shoelace does not depend on the origin
    acc = 0
    while True:
        d4 = back
        for k in range(1, 9):  # counter-clockwise, from the neighbour after the one we came from
            d = (back + k) & 7
            if qp[cur + off[d]] > level:
                d4 = d
                break
        nxt = cur + off[d4]
        if nxt == start and cur == last:
            break
        nx, ny = x + dx[d4], y + dy[d4]
        acc += x * ny - nx * y
        x, y = nx, ny
        cur, back = nxt, (d4 + 4) & 7
    # closing edge back to start (0, 0) adds x * 0 - 0 * y = 0
    return abs(acc)


def _neighbour_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 8-bit pattern of active neighbours (bit d for direction d): the change of twice the hull area and
    of 4 x the Euler number of the windows around a pixel when it joins, and the neighbours to union with
    (one per group of mutually adjacent active neighbours, at most 4, -1 padded)."""
    d_area2 = np.zeros(256, dtype=np.int64)
    d_euler4 = np.zeros(256, dtype=np.int64)
    unions = np.full((256, 4), -1, dtype=np.int64)
    # the pixel's four windows, as directions of their other three pixels
    windows = ((4, 3, 2), (2, 1, 0), (0, 7, 6), (6, 5, 4))
    for pattern in range(256):
        on = [(pattern >> d) & 1 for d in range(8)]
        for window in windows:
            old = sum(on[d] for d in window)
            # a window's other pixels: two edge neighbours and the corner between them
            d_area2[pattern] += _window_area2(old + 1) - _window_area2(old)
            # the corner (window[1]) is diagonal to the joining pixel, and the two edge pixels to each other
            corner = on[window[1]]
            d_euler4[pattern] += _window_euler4(old + 1, old == 1 and corner == 1) - _window_euler4(
                old, old == 2 and corner == 0
            )
        groups: list[set[int]] = []
        for d in range(8):
            if not on[d]:
                continue
            near = [g for g in groups if any(_adjacent(d, e) for e in g)]
            merged = {d}.union(*near)
            groups = [g for g in groups if g not in near] + [merged]
        for k, g in enumerate(groups):
            unions[pattern, k] = min(g)
    return d_area2, d_euler4, unions


def _adjacent(d: int, e: int) -> bool:
    """Are the neighbours in directions d and e 8-adjacent to each other?"""
    return max(abs(int(_DX[d] - _DX[e])), abs(int(_DY[d] - _DY[e]))) <= 1


_D_AREA2, _D_EULER4, _UNIONS = _neighbour_tables()


@njit(cache=True, nogil=True)
def _largest_contour_boxes(
    q: np.ndarray,
    tau_levels: np.ndarray,
    work: np.ndarray,
    active: np.ndarray,
    d_area2: np.ndarray,
    d_euler4: np.ndarray,
    unions: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    height, width = q.shape
    stride = width + 2
    n_pix = height * width
    qp = np.zeros((height + 2) * stride, dtype=np.uint8)
    # pixels bucketed by value in one pass: a linked list per value (head, nxt), walked from 255 down (value 0
    # is never in a mask: levels are >= 0); cheaper than a counting sort, and the order of the pixels of one
    # value does not matter (levels are evaluated between values)
    head = np.full(256, -1, dtype=np.int32)
    nxt = work[12]
    yx = work[13]  # (y << 16) | x, padded coordinates
    counts = np.zeros(257, dtype=np.int64)
    for y in range(height):
        row = (y + 1) * stride + 1
        for x in range(width):
            v = q[y, x]
            p = row + x
            qp[p] = v
            nxt[p] = head[v]
            head[v] = p
            yx[p] = ((y + 1) << 16) | (x + 1)
            counts[v] += 1
    above = np.zeros(257, dtype=np.int64)  # above[v]: number of pixels of value > v
    for v in range(254, -1, -1):
        above[v] = above[v + 1] + counts[v + 1]
    # group the thresholds by mask, as _quantize.distinct_masks: levels with the same count above give the
    # same mask; groups in ascending level order
    group_of = np.full(256, -1, dtype=np.int64)
    for i in range(tau_levels.size):
        group_of[min(tau_levels[i], 255)] = 0
    levels = np.empty(256, dtype=np.int64)
    n_groups = 0
    prev = -1
    for v in range(256):
        if group_of[v] < 0:
            continue
        if n_groups == 0 or above[v] != prev:
            levels[n_groups] = v
            n_groups += 1
            prev = above[v]
        group_of[v] = n_groups - 1
    levels = levels[:n_groups]
    inverse = np.empty(tau_levels.size, dtype=np.int64)
    for i in range(tau_levels.size):
        inverse[i] = group_of[min(tau_levels[i], 255)]
    size = qp.size
    # per pixel; the per-component arrays are read at roots only and written when a component is made
    active[:size] = 0
    parent = work[0]
    rank = work[1]  # union by rank
    area2 = work[2]  # window sum of twice the hull area: exact without holes
    euler4 = work[3]  # 4 x Euler number (1 - holes)
    exact2 = work[4]  # twice the outer contour area, or -1 while unknown
    upper2 = work[5]  # an upper bound of it
    y0 = work[6]
    x0 = work[7]
    y1 = work[8]
    x1 = work[9]
    first = work[10]  # smallest (first raster) pixel index
    stamp = work[11]
    stamp[:size] = 0
    roots = np.empty(n_pix, dtype=np.int32)
    n_roots = 0
    touched = np.empty(n_pix, dtype=np.int32)
    n_touched = 0
    noff = np.empty(8, dtype=np.int64)
    for d in range(8):
        noff[d] = dy[d] * stride + dx[d]

    out = np.zeros((n_groups, 4), dtype=np.int64)
    value = 256  # pixels of value >= this one are in
    for li in range(levels.size - 1, -1, -1):  # levels ascending: walk them from the top
        level = levels[li]
        mark = li + 1  # stamps the roots that change before this level is evaluated
        walk = -1
        while True:
            if walk < 0:  # the next value's list
                if value <= level + 1:
                    break
                value -= 1
                walk = head[value]
                continue
            p = walk
            walk = nxt[p]
            py, px = yx[p] >> 16, yx[p] & 0xFFFF
            pattern = _neighbour_pattern(active, p, stride)
            active[p] = 1
            if pattern == 0:  # a new component
                parent[p] = p
                rank[p] = 0
                y0[p] = py
                y1[p] = py
                x0[p] = px
                x1[p] = px
                first[p] = p
                area2[p] = 0
                euler4[p] = 4  # its four windows hold one pixel each
                roots[n_roots] = p
                n_roots += 1
                stamp[p] = mark
                touched[n_touched] = p
                n_touched += 1
                continue
            # join the component(s) of its neighbours: one find per group of mutually adjacent neighbours
            r = _find(parent, p + noff[unions[pattern, 0]])
            for k in range(1, 4):
                d = unions[pattern, k]
                if d < 0:
                    break
                rn = _find(parent, p + noff[d])
                if rn == r:
                    continue
                if rank[rn] > rank[r]:
                    r, rn = rn, r
                elif rank[rn] == rank[r]:
                    rank[r] += 1
                parent[rn] = r
                area2[r] += area2[rn]
                euler4[r] += euler4[rn]
                y0[r] = min(y0[r], y0[rn])
                x0[r] = min(x0[r], x0[rn])
                y1[r] = max(y1[r], y1[rn])
                x1[r] = max(x1[r], x1[rn])
                first[r] = min(first[r], first[rn])
            parent[p] = r
            y0[r] = min(y0[r], py)
            x0[r] = min(x0[r], px)
            y1[r] = max(y1[r], py)
            x1[r] = max(x1[r], px)
            first[r] = min(first[r], p)
            area2[r] += d_area2[pattern]
            euler4[r] += d_euler4[pattern]
            if stamp[r] != mark:  # the roots changed at this level (a root merged later is skipped below)
                stamp[r] = mark
                touched[n_touched] = r
                n_touched += 1
        if above[level] == 0:
            continue  # empty mask: [0, 0, 0, 0]
        for i in range(n_touched):
            r = touched[i]
            if parent[r] != r:
                continue
            if euler4[r] == 4:  # Euler number 1: one component without holes, area from its windows
                exact2[r] = area2[r]
                upper2[r] = area2[r]
            else:  # holes add to the area; the polygon stays within the box of pixel centres
                exact2[r] = -1
                upper2[r] = 2 * (x1[r] - x0[r]) * (y1[r] - y0[r])
        n_touched = 0
        # the largest lower bound, then the components that may still beat it (usually one)
        keep = 0
        lower = -1
        for i in range(n_roots):
            r = roots[i]
            if parent[r] != r:
                continue
            roots[keep] = r
            keep += 1
            lower = max(lower, area2[r])  # area2 <= the exact area, equal when known
        n_roots = keep
        n_cand = 0
        for i in range(n_roots):
            r = roots[i]
            if upper2[r] >= lower:
                touched[n_cand] = r  # reuse as scratch: candidates
                n_cand += 1
        winner, best = touched[0], -1
        if n_cand > 1:
            for i in range(n_cand):
                r = touched[i]
                if exact2[r] < 0:
                    exact2[r] = _outer_area2(qp, stride, level, first[r], dx, dy)
                    upper2[r] = exact2[r]
                # ties: OpenCV lists top-level outer contours last raster position first
                if exact2[r] > best or (exact2[r] == best and first[r] > first[winner]):
                    winner, best = r, exact2[r]
        out[li, 0] = x0[winner] - 1
        out[li, 1] = y0[winner] - 1
        out[li, 2] = min(x1[winner], width - 1)  # padded x1 = image x1 + 1, clipped to W - 1 as the reference
        out[li, 3] = min(y1[winner], height - 1)
    return out, inverse


_N_WORK = 14
_WORKSPACE = threading.local()  # per-thread scratch arrays, reused across calls (no allocation per map)


def _workspace(
    size: int, store: threading.local = _WORKSPACE, n_work: int = _N_WORK
) -> tuple[np.ndarray, np.ndarray]:
    """``n_work`` int32 scratch rows and one uint8 row of ``size`` cells, kept in ``store`` (one per thread)."""
    work = getattr(store, "work", None)
    if work is None or work.shape[1] < size:
        store.work = work = np.empty((n_work, size), dtype=np.int32)
        store.active = np.empty(size, dtype=np.uint8)
    return work, store.active


def largest_contour_boxes(q: np.ndarray, tau_levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """v1 boxes ``[x0, y0, x1, y1]`` of ``q > level`` per distinct mask, as the WSOL reference.

    Args:
        q: quantised score map, uint8 of shape (H, W).
        tau_levels: level ``int(tau * max(q))`` of each threshold, shape (n_tau,), values >= 0.

    Returns:
        ``(boxes, inverse)``: int64 (n_masks, 4) boxes of the distinct masks in ascending level order
        (``[0, 0, 0, 0]`` for an empty mask) and, per threshold, the index of its mask (as
        :func:`~._quantize.distinct_masks` groups them).
    """
    q = np.ascontiguousarray(q, dtype=np.uint8)
    tau_levels = np.ascontiguousarray(tau_levels, dtype=np.int64)
    if not fits(q.shape) or tau_levels.ndim != 1 or (tau_levels.size and tau_levels.min() < 0):
        raise ValueError(
            f"q must be 2D of at most {_MAX_HEIGHT}x{_MAX_WIDTH} (got {q.shape}) and tau_levels a 1D array of "
            "levels >= 0."
        )
    work, active = _workspace((q.shape[0] + 2) * (q.shape[1] + 2))
    return _largest_contour_boxes(q, tau_levels, work, active, _D_AREA2, _D_EULER4, _UNIONS, _DX, _DY)
