"""Numba kernels of the exact MaxBoxAcc boxes: quantisation, pixel ordering, the v1 (largest contour) box, the
boxes of every contour (MaxBoxAccV2) and the batch best-IoU curves of the metrics.

All kernels live in this one file on purpose: they inline and call each other, and numba's on-disk cache
(``cache=True``) is invalidated per source file, so an edit anywhere here recompiles every kernel.

Exact scheme of the v1 box (each claim is checked against OpenCV by ``tests/test_fast_contours.py``):

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

Why it is fast: masks grow as the level falls, so one sweep from the highest value down adds each pixel once
(union-find, per-component window sums, bounding box and first pixel) and gives every level's components.
Everything a pixel needs is computed beforehand (:func:`_sort_pixels`): which of its 8 neighbours are already
in when it joins (those of higher value, or of equal value and visited earlier, each value's pixels being
visited in a fixed order: 16 x 16 tiles, raster order inside) is a static 8-bit pattern, computed in one
vectorised raster pass, packed with its coordinates into one int64 key and counting-sorted by value; the sweep
then reads the keys sequentially and never looks at the neighbours' values or at an "active" map.  Tiles keep
consecutive pixels of a value on one level line, of one component, whose fields (one row of an int32 table)
stay in registers while they join it.  The quantisation and the input check are one vectorised pass; array
indices in the hot loops are unsigned, so that NumPy-style negative-index wrapping is not compiled in (it
costs a factor of 2 to 10 there).  Only the components that received pixels are re-evaluated at a level.
Areas are kept doubled, as integers.

The boxes of EVERY contour (MaxBoxAccV2): the reference's candidates are all contours of
``cv2.findContours(q > level, RETR_TREE, CHAIN_APPROX_SIMPLE)``, each boxed by ``cv2.boundingRect`` as
``[x, y, x + w, y + h]`` clipped to ``W - 1``/``H - 1``.  Only the MULTISET of boxes per threshold matters to
the metric (best IoU over the candidates), so this kernel gives the same boxes in another order.  Exact
scheme (each claim is checked against OpenCV by ``tests/test_fast_multi_contours.py``):

- outer contours are the 8-connected foreground components; an outer border runs through the component's
  extreme pixels, so its box is the component's pixel box ``[x0, y0, x1 + 1, y1 + 1]``, clipped;
- hole contours are the 4-connected background components that do not touch the image border (OpenCV pads
  the image with background, so a background region reaching the border is outside, not a hole); a hole's
  border runs through the foreground pixels 4-adjacent to it, so its box is the hole's pixel box grown by one
  pixel on each side: ``[hx0 - 1, hy0 - 1, hx1 + 2, hy1 + 2]``, clipped;
- masks grow as the level falls, so one union-find sweep from the highest value down over the foreground
  (8-connectivity, :func:`_fg_advance`) gives the components of every level, and the background grows as the
  level rises, so one sweep from the lowest value up over the background (4-connectivity; the padding is one
  "outside" set) gives the holes of every level; it stops at the highest level with a hole, known from the
  Euler number kept by the first sweep.  Both sweeps read the static neighbour patterns of
  :func:`_sort_pixels` (no neighbour values are read), and a list of current roots (swap-removal on merge)
  makes each level's output O(#regions).

:func:`best_iou_curves` runs a whole batch of maps in one compiled call (quantisation with its range check,
ordering, sweeps, IoU with the GT boxes per distinct mask, one value per threshold): what
``BoxAccuracyMetric`` costs per map.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from numba import njit

__all__ = [
    "all_contour_boxes",
    "best_iou_curves",
    "fits",
    "largest_contour_boxes",
    "padded_quantised",
    "padded_scores",
    "scoremap_level_boxes",
    "split_boxes",
]

_MAX_HEIGHT, _MAX_WIDTH = 32765, 65533
_MAX_PIXELS = 1 << 29  # padded pixels: doubled areas (<= 2 * pixels) stay within the int32 component table


def fits(shape: tuple[int, ...]) -> bool:
    """Can the kernels take a 2D map of this shape (int32 indices and doubled areas)?"""
    return (
        len(shape) == 2
        and shape[0] <= _MAX_HEIGHT
        and shape[1] <= _MAX_WIDTH
        and (shape[0] + 2) * (shape[1] + 2) <= _MAX_PIXELS
    )


def _window_area2(n: int) -> int:
    """Twice the convex-hull area of n set pixels of a 2x2 window (3: a half square, 4: the square)."""
    return {3: 1, 4: 2}.get(n, 0)


def _window_euler4(n: int, diagonal: bool) -> int:
    """4 x the Euler contribution of a 2x2 window holding n set pixels (Gray's bit quads, 8-connected)."""
    return {1: 1, 3: -1}.get(n, -2 if diagonal else 0)


# neighbour directions in OpenCV's counter-clockwise order (image y points down): right, up-right, up, ...
_DX = np.array([1, 1, 0, -1, -1, -1, 0, 1], dtype=np.int64)
_DY = np.array([0, -1, -1, -1, 0, 1, 1, 1], dtype=np.int64)


def _adjacent(d: int, e: int) -> bool:
    """Are the neighbours in directions d and e 8-adjacent to each other?"""
    return max(abs(int(_DX[d] - _DX[e])), abs(int(_DY[d] - _DY[e]))) <= 1


def _joined_by_corner(d: int, e: int, on: list[int]) -> bool:
    """Are the edge directions d and e consecutive (d = e +- 2 mod 8) with the corner between them active?"""
    if (d - e) % 8 == 2:
        d, e = e, d
    return (e - d) % 8 == 2 and bool(on[(d + 1) % 8])


def _groups(on: list[int], linked: Callable[[int, int], bool]) -> list[set[int]]:
    """Groups of the set directions of ``on`` under the relation ``linked(d, e)`` (transitive closure)."""
    groups: list[set[int]] = []
    for d in range(8):
        if not on[d]:
            continue
        near = [g for g in groups if any(linked(d, e) for e in g)]
        merged = {d}.union(*near)
        groups = [g for g in groups if g not in near] + [merged]
    return groups


def _neighbour_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per 8-bit pattern of active neighbours (bit d for direction d):

    - the change of twice the hull area and of 4 x the Euler number of the windows around a pixel joining the
      foreground;
    - the foreground neighbours to union with (one per group of mutually 8-adjacent active neighbours, at
      most 4, -1 padded);
    - the background (4-connected) neighbours to union with: one per group of active edge neighbours, two
      edge neighbours being already joined when the corner between them is active (4-adjacent to both).
    """
    d_area2 = np.zeros(256, dtype=np.int64)
    d_euler4 = np.zeros(256, dtype=np.int64)
    unions = np.full((256, 4), -1, dtype=np.int64)
    unions4 = np.full((256, 4), -1, dtype=np.int64)
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
        for k, g in enumerate(_groups(on, _adjacent)):
            unions[pattern, k] = min(g)
        edges = [on[d] if d % 2 == 0 else 0 for d in range(8)]
        for k, g in enumerate(_groups(edges, lambda d, e, on=on: _joined_by_corner(d, e, on))):
            unions4[pattern, k] = min(g)
    return d_area2, d_euler4, unions, unions4


_D_AREA2, _D_EULER4, _UNIONS, _UNIONS4 = _neighbour_tables()

# columns of the int32 component table (one row per pixel, read at roots): one cache line per component
_AREA2, _EULER4, _EXACT2, _UPPER2, _X0, _Y0, _X1, _Y1, _FIRST, _RANK, _STAMP, _POS = range(12)
_N_COLS = 12
_OUTSIDE_RANK = 1 << 30  # the background sweep's outside set always survives a union


@njit(cache=True, nogil=True)
def _find(parent: np.ndarray, p: int) -> int:
    """Root of ``p``'s set, halving the path (indices as uint64: no negative-index wrapping compiled in)."""
    q = np.uint64(p)
    while True:
        up = np.uint64(parent[q])
        if up == q:
            return np.int64(q)
        top = np.uint64(parent[up])
        if top == up:
            return np.int64(up)
        parent[q] = top  # path halving, without a store when the parent is the root
        q = top


@njit(cache=True, nogil=True)
def _pad_border(qp: np.ndarray, height: int, width: int) -> None:
    """Value -1 on the one-pixel frame of the padded map: never foreground, always background."""
    stride = width + 2
    for x in range(stride):
        qp[x] = -1
        qp[(height + 1) * stride + x] = -1
    for y in range(1, height + 1):
        qp[y * stride] = -1
        qp[y * stride + width + 1] = -1


@njit(cache=True, nogil=True)
def _histogram(qp: np.ndarray, height: int, width: int, counts: np.ndarray) -> int:
    """256-bin histogram ``counts`` of the padded map's inside; returns ``max(q)``.

    The frame of ``qp`` is set to -1.
    """
    stride = width + 2
    # four interleaved histograms: consecutive equal values do not wait on each other's increment
    partial = np.zeros((4, 256), dtype=np.int64)
    for y in range(1, height + 1):
        row = qp[y * stride + 1 : (y + 1) * stride - 1]
        for xi in range(width):
            partial[np.uint64(xi & 3), np.uint64(row[np.uint64(xi)])] += 1
    q_max = 0
    for v in range(256):
        counts[v] = partial[0, v] + partial[1, v] + partial[2, v] + partial[3, v]
        if counts[v]:
            q_max = v
    _pad_border(qp, height, width)
    return q_max


@njit(cache=True, nogil=True)
def _pad_scores(smap: np.ndarray, qp: np.ndarray, counts: np.ndarray) -> int:
    """``floor(255 s)`` of a float64 map into the padded int16 map ``qp`` and its 256-bin histogram
    ``counts``; returns ``max(q)``, or -1 when a value is not within [0, 1] (NaN included).

    The check and the quantisation form one branch-free loop (unsigned indices: it vectorises)."""
    height, width = smap.shape
    stride = width + 2
    ok = True
    for y in range(height):
        src = smap[y]
        dst = qp[(y + 1) * stride + 1 : (y + 2) * stride - 1]
        for xi in range(width):
            x = np.uint64(xi)
            s = src[x]
            ok &= (s >= 0.0) & (s <= 1.0)  # False for NaN too
            dst[x] = np.int16(
                s * 255.0
            )  # truncation, as the reference's astype(np.uint8) of a value in [0, 255]
    if not ok:
        return -1
    return _histogram(qp, height, width, counts)


@njit(cache=True, nogil=True)
def _pad_quantised(q: np.ndarray, qp: np.ndarray, counts: np.ndarray) -> int:
    """:func:`_pad_scores` for an already quantised uint8 map."""
    height, width = q.shape
    stride = width + 2
    for y in range(height):
        qp[(y + 1) * stride + 1 : (y + 2) * stride - 1] = q[y]
    return _histogram(qp, height, width, counts)


@njit(cache=True, nogil=True)
def _group_levels(counts: np.ndarray, tau_levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group the thresholds' levels by mask, as :func:`~._quantize.distinct_masks`: levels with the same
    number of pixels above give the same mask.  Returns the distinct levels (ascending, <= 255), per threshold
    the index of its level, and ``above[v]`` = number of pixels of value > v."""
    above = np.zeros(257, dtype=np.int64)
    for v in range(254, -1, -1):
        above[v] = above[v + 1] + counts[v + 1]
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
    inverse = np.empty(tau_levels.size, dtype=np.int64)
    for i in range(tau_levels.size):
        inverse[i] = group_of[min(tau_levels[i], 255)]
    return levels[:n_groups], inverse, above


_U1 = np.uint64(1)
# pixels of one value are visited tile by tile (tiles in raster order, raster order inside); a power of two
_TILE = 16


@njit(cache=True, nogil=True)
def _row_patterns(up: np.ndarray, row: np.ndarray, down: np.ndarray, y: int, out: np.ndarray) -> None:
    """Neighbour patterns of image row ``y`` (``up``/``row``/``down``: three consecutive padded rows) into
    ``out``: ``(fg << 8) | bg`` per pixel, as described in :func:`_sort_pixels`.

    Indices are unsigned on purpose: NumPy-style negative-index wrapping is then not compiled in, and the
    main loop vectorises (about 10x faster)."""
    for xi in range(row.size - 2):
        x = np.uint64(xi) + _U1
        r, lft = x + _U1, x - _U1
        v = row[x]
        # directions 0..7: right, up-right, up, up-left, left, down-left, down, down-right; an equal value is
        # already in when its pixel comes before: inside a tile, the four of the rows above and the left one
        fg = (
            (row[r] > v) * np.uint16(1)
            | (up[r] >= v) * np.uint16(2)
            | (up[x] >= v) * np.uint16(4)
            | (up[lft] >= v) * np.uint16(8)
            | (row[lft] >= v) * np.uint16(16)
            | (down[lft] > v) * np.uint16(32)
            | (down[x] > v) * np.uint16(64)
            | (down[r] > v) * np.uint16(128)
        )
        bg = (
            (row[r] < v) * np.uint16(1)
            | (up[r] <= v) * np.uint16(2)
            | (up[x] <= v) * np.uint16(4)
            | (up[lft] <= v) * np.uint16(8)
            | (row[lft] <= v) * np.uint16(16)
            | (down[lft] < v) * np.uint16(32)
            | (down[x] < v) * np.uint16(64)
            | (down[r] < v) * np.uint16(128)
        )
        out[x] = (fg << np.uint16(8)) | bg
    # across tiles: at a tile's right edge (below its top row) the up-right neighbour is in the next tile, so
    # visited after the pixel; at its left edge (above its bottom row) the down-left one is in the previous
    # tile, visited before; up, up-left, left always come before, right, down, down-right after
    if y % _TILE != 0:
        for xi in range(_TILE, row.size - 1, _TILE):  # tiles' last columns (padded x = 16, 32, ... <= W)
            x = np.uint64(xi)
            if up[x + _U1] == row[x]:
                out[x] &= ~np.uint16(2 << 8 | 2)
    if y % _TILE != _TILE - 1:
        for xi in range(_TILE + 1, row.size - 1, _TILE):  # tiles' first columns (padded x = 17, 33, ... <= W)
            x = np.uint64(xi)
            if down[x - _U1] == row[x]:
                out[x] |= np.uint16(32 << 8 | 32)


@njit(cache=True, nogil=True)
def _sort_pixels(qp: np.ndarray, height: int, width: int, counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Counting sort of the pixels by value into ``keys``, each key packing ``(y << 40) | (x << 16) | (fg <<
    8) | bg`` (padded coordinates).  Within a value the order is that of 16 x 16 tiles in raster order, raster
    order inside a tile: consecutive pixels of a value are then mostly neighbours on one level line, of one
    component (fewer root switches and cache misses in the sweeps than in plain raster order).  ``fg`` has
    bit d set when the neighbour in direction d is in the foreground before the pixel in the descending sweep
    (higher value, or equal and earlier in that order), ``bg`` when it is in the background before it in the
    ascending sweep (lower value or the padding, or equal and earlier).  Returns ``start``: value v's keys are
    ``keys[start[v]:start[v + 1]]``."""
    stride = width + 2
    start = np.zeros(257, dtype=np.int64)
    for v in range(256):
        start[v + 1] = start[v] + counts[v]
    fill = start[:256].copy()
    patterns = np.empty(qp.size, dtype=np.uint16)
    # two passes: the patterns (vectorised) then the scatter, faster than one fused loop
    for y in range(1, height + 1):
        row = slice(y * stride, (y + 1) * stride)
        _row_patterns(
            qp[(y - 1) * stride : y * stride],
            qp[row],
            qp[(y + 1) * stride : (y + 2) * stride],
            y - 1,
            patterns[row],
        )
    for y0 in range(1, height + 1, _TILE):
        for x0 in range(1, width + 1, _TILE):
            x1 = min(x0 + _TILE, width + 1)
            for y in range(y0, min(y0 + _TILE, height + 1)):
                base = np.uint64(y * stride)
                high = np.int64(y) << 40
                # a run of equal values keeps its bucket's fill position in a register (values are >= 0
                # inside)
                prev = np.uint64(qp[base + np.uint64(x0)])
                i = fill[prev]
                for xi in range(x0, x1):
                    x = np.uint64(xi)
                    v = np.uint64(qp[base + x])
                    if v != prev:
                        fill[prev] = i
                        i = fill[v]
                        prev = v
                    keys[np.uint64(i)] = high | (np.int64(x) << 16) | np.int64(patterns[base + x])
                    i += 1
                fill[prev] = i
    return start


@njit(cache=True, nogil=True)
def _new_root(comp: np.ndarray, roots: np.ndarray, n_roots: int, p: int, x: int, y: int, mark: int) -> int:
    """Start a one-pixel component at ``p`` and list it; returns the root list's length."""
    comp[p, _AREA2] = 0
    comp[p, _EULER4] = 4  # its four windows hold one pixel each
    comp[p, _X0] = x
    comp[p, _Y0] = y
    comp[p, _X1] = x
    comp[p, _Y1] = y
    comp[p, _FIRST] = p
    comp[p, _RANK] = 0
    comp[p, _STAMP] = mark
    comp[p, _POS] = n_roots
    roots[n_roots] = p
    return n_roots + 1


@njit(cache=True, nogil=True)
def _union(
    parent: np.ndarray, comp: np.ndarray, roots: np.ndarray, n_roots: int, r: int, rn: int
) -> tuple[int, int]:
    """Union of the sets rooted at ``r`` and ``rn`` (union by rank, the surviving row gets the merged fields);
    the absorbed root leaves the root list (swap with the last).  Returns the new root and list length."""
    if comp[rn, _RANK] > comp[r, _RANK]:
        r, rn = rn, r
    elif comp[rn, _RANK] == comp[r, _RANK]:
        comp[r, _RANK] += 1
    parent[rn] = r
    comp[r, _AREA2] += comp[rn, _AREA2]
    comp[r, _EULER4] += comp[rn, _EULER4]
    comp[r, _X0] = min(comp[r, _X0], comp[rn, _X0])
    comp[r, _Y0] = min(comp[r, _Y0], comp[rn, _Y0])
    comp[r, _X1] = max(comp[r, _X1], comp[rn, _X1])
    comp[r, _Y1] = max(comp[r, _Y1], comp[rn, _Y1])
    comp[r, _FIRST] = min(comp[r, _FIRST], comp[rn, _FIRST])
    i = comp[rn, _POS]
    if i >= 0:
        last = roots[n_roots - 1]
        roots[i] = last
        comp[last, _POS] = i
        comp[rn, _POS] = -1
        n_roots -= 1
    return r, n_roots


@njit(cache=True, nogil=True, inline="always")
def _load_row(comp: np.ndarray, r: int) -> tuple[int, int, int, int, int, int, int]:
    """The fields a joining pixel updates, of root ``r``: x0, y0, x1, y1, first pixel, area2, euler4."""
    ru = np.uint64(r)
    return (
        comp[ru, _X0], comp[ru, _Y0], comp[ru, _X1], comp[ru, _Y1], comp[ru, _FIRST], comp[ru, _AREA2],
        comp[ru, _EULER4],
    )  # fmt: skip


@njit(cache=True, nogil=True, inline="always")
def _store_row(comp: np.ndarray, r: int, row: tuple[int, int, int, int, int, int, int]) -> None:
    """Write back what :func:`_load_row` read (nothing for ``r < 0``)."""
    if r >= 0:
        ru = np.uint64(r)
        comp[ru, _X0], comp[ru, _Y0], comp[ru, _X1], comp[ru, _Y1] = row[0], row[1], row[2], row[3]
        comp[ru, _FIRST], comp[ru, _AREA2], comp[ru, _EULER4] = row[4], row[5], row[6]


@njit(cache=True, nogil=True, inline="always")
def _joined(
    row: tuple[int, int, int, int, int, int, int], x: int, y: int, p: int, d_area2: int, d_euler4: int
) -> tuple[int, int, int, int, int, int, int]:
    """A root's fields once pixel ``p`` at ``(x, y)`` joined it."""
    return (
        min(row[0], x), min(row[1], y), max(row[2], x), max(row[3], y), min(row[4], p), row[5] + d_area2,
        row[6] + d_euler4,
    )  # fmt: skip


@njit(cache=True, nogil=True)
def _fg_advance(
    keys: np.ndarray,
    start: np.ndarray,
    value: int,
    stop: int,
    stride: int,
    parent: np.ndarray,
    comp: np.ndarray,
    roots: np.ndarray,
    n_roots: int,
    mark: int,
    noff: np.ndarray,
    d_area2: np.ndarray,
    d_euler4: np.ndarray,
    unions: np.ndarray,
) -> tuple[int, int, int]:
    """Add the pixels of values ``value - 1`` down to ``stop`` to the 8-connected foreground.

    Every root that changes is stamped with ``mark``.  Returns the new ``value``, the root list's length and
    the change of 4 x the mask's Euler number.

    The fields of the root that pixels last joined are kept in registers (``cur``, ``row``) and written back
    when another root is joined or before a union: consecutive pixels of one component (runs along a row)
    then do not wait on each other's read-modify-write of the same table row.
    """
    d_euler = 0
    cur = -1
    row = (0, 0, 0, 0, 0, 0, 0)
    while value > stop:
        value -= 1
        for i in range(start[value], start[value + 1]):
            key = keys[np.uint64(i)]
            pattern = np.uint64((key >> 8) & 0xFF)
            x = (key >> 16) & 0xFFFFFF
            y = key >> 40
            p = y * stride + x
            d_euler += d_euler4[pattern]
            if pattern == 0:  # a new component
                parent[np.uint64(p)] = p
                n_roots = _new_root(comp, roots, n_roots, p, x, y, mark)
                continue
            # join the component(s) of its neighbours: one find per group of mutually adjacent neighbours
            r = _find(parent, p + noff[unions[pattern, 0]])
            for k in range(1, 4):
                d = unions[pattern, k]
                if d < 0:
                    break
                rn = _find(parent, p + noff[d])
                if rn != r:
                    _store_row(comp, cur, row)  # the union reads and writes the table
                    cur = -1
                    r, n_roots = _union(parent, comp, roots, n_roots, r, rn)
            parent[np.uint64(p)] = r
            if r != cur:
                _store_row(comp, cur, row)
                cur = r
                row = _load_row(comp, r)
                comp[np.uint64(r), _STAMP] = mark
            row = _joined(row, x, y, p, d_area2[pattern], d_euler4[pattern])
    _store_row(comp, cur, row)
    return value, n_roots, d_euler


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


@njit(cache=True, nogil=True)
def _largest_winner(
    qp: np.ndarray,
    stride: int,
    level: int,
    comp: np.ndarray,
    roots: np.ndarray,
    n_roots: int,
    mark: int,
    dx: np.ndarray,
    dy: np.ndarray,
) -> int:
    """The root of the v1 component of a non-empty mask: largest outer contour area, ties to the last first
    pixel in raster order (OpenCV's list order).  Roots stamped ``mark`` changed since the last call."""
    for i in range(n_roots):
        r = roots[i]
        if comp[r, _STAMP] != mark:
            continue  # unchanged: its area (or bounds) still hold
        if comp[r, _EULER4] == 4:  # Euler number 1: one component without holes, area from its windows
            comp[r, _EXACT2] = comp[r, _AREA2]
            comp[r, _UPPER2] = comp[r, _AREA2]
        else:  # holes add to the area; the polygon stays within the box of pixel centres
            comp[r, _EXACT2] = -1
            comp[r, _UPPER2] = 2 * (comp[r, _X1] - comp[r, _X0]) * (comp[r, _Y1] - comp[r, _Y0])
    lower = -1  # the largest lower bound (the window sum is at most the exact area, equal when known)
    for i in range(n_roots):
        lower = max(lower, comp[roots[i], _AREA2])
    winner, best, n_cand = -1, -1, 0
    for i in range(n_roots):  # the components that may still beat it (usually one)
        r = roots[i]
        if comp[r, _UPPER2] >= lower:
            n_cand += 1
            winner = r if winner < 0 else winner
    if n_cand == 1:
        return winner
    for i in range(n_roots):
        r = roots[i]
        if comp[r, _UPPER2] < lower:
            continue
        if comp[r, _EXACT2] < 0:
            comp[r, _EXACT2] = _outer_area2(qp, stride, level, comp[r, _FIRST], dx, dy)
            comp[r, _UPPER2] = comp[r, _EXACT2]
        area = comp[r, _EXACT2]
        # ties: OpenCV lists top-level outer contours last raster position first
        if area > best or (area == best and comp[r, _FIRST] > comp[winner, _FIRST]):
            winner, best = r, area
    return winner


@njit(cache=True, nogil=True)
def _largest_boxes(
    qp: np.ndarray,
    height: int,
    width: int,
    keys: np.ndarray,
    start: np.ndarray,
    levels: np.ndarray,
    above: np.ndarray,
    parent: np.ndarray,
    comp: np.ndarray,
    roots: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """v1 box ``[x0, y0, x1, y1]`` of ``qp > level`` for each level (ascending), (n_levels, 4) int64."""
    d_area2, d_euler4, unions, dx, dy = tables
    stride = width + 2
    noff = dy * stride + dx
    out = np.zeros((levels.size, 4), dtype=np.int64)  # an empty mask gives [0, 0, 0, 0]
    value, n_roots = 256, 0
    for li in range(levels.size - 1, -1, -1):  # masks grow as the level falls
        level = levels[li]
        value, n_roots, _ = _fg_advance(
            keys, start, value, level + 1, stride, parent, comp, roots, n_roots, li + 1,
            noff, d_area2, d_euler4, unions,
        )  # fmt: skip
        if above[level] == 0:
            continue
        winner = _largest_winner(qp, stride, level, comp, roots, n_roots, li + 1, dx, dy)
        out[li, 0] = comp[winner, _X0] - 1
        out[li, 1] = comp[winner, _Y0] - 1
        out[li, 2] = min(comp[winner, _X1], width - 1)  # padded x1 = image x1 + 1, clipped to W - 1
        out[li, 3] = min(comp[winner, _Y1], height - 1)
    return out


_TABLES = (_D_AREA2, _D_EULER4, _UNIONS, _DX, _DY)


class _Workspace(threading.local):
    """Per-thread scratch arrays, reused across calls (no allocation per map); grown on demand."""

    size = -1

    def get(self, height: int, width: int) -> tuple[np.ndarray, ...]:
        """``(qp, counts, keys, parent, comp, roots)`` for maps of up to ``height x width``."""
        size = (height + 2) * (width + 2)
        if size > self.size:
            self.size = size
            self.arrays = (
                np.empty(size, dtype=np.int16),  # padded quantised map
                np.empty(256, dtype=np.int64),  # histogram
                np.empty(size, dtype=np.int64),  # sorted keys
                np.empty(size, dtype=np.int32),  # union-find parents
                np.empty((size, _N_COLS), dtype=np.int32),  # component table
                np.empty(size, dtype=np.int32),  # root list
            )
        return self.arrays


WORKSPACE = _Workspace()


def _check_levels(shape: tuple[int, ...], tau_levels: np.ndarray, allow_empty: bool) -> np.ndarray:
    tau_levels = np.ascontiguousarray(tau_levels, dtype=np.int64)
    if (
        not fits(shape)
        or tau_levels.ndim != 1
        or (tau_levels.size == 0 and not allow_empty)
        or (tau_levels.size and tau_levels.min() < 0)
    ):
        raise ValueError(
            f"q must be 2D of at most {_MAX_HEIGHT}x{_MAX_WIDTH} (got shape {shape}) and tau_levels a "
            f"{'' if allow_empty else 'non-empty '}1D array of levels >= 0."
        )
    return tau_levels


def padded_quantised(q: np.ndarray, workspace: _Workspace = WORKSPACE) -> tuple[int, tuple[np.ndarray, ...]]:
    """Load a quantised uint8 (H, W) map into the workspace; returns ``max(q)`` and the workspace arrays."""
    arrays = workspace.get(*q.shape)
    return _pad_quantised(np.ascontiguousarray(q, dtype=np.uint8), arrays[0], arrays[1]), arrays


def padded_scores(smap: np.ndarray, workspace: _Workspace = WORKSPACE) -> tuple[int, tuple[np.ndarray, ...]]:
    """Quantise a float64 (H, W) score map into the workspace (fused with the range check); returns
    ``max(q)`` (-1 when a value is NaN or outside [0, 1]) and the workspace arrays."""
    arrays = workspace.get(*smap.shape)
    return _pad_scores(np.ascontiguousarray(smap, dtype=np.float64), arrays[0], arrays[1]), arrays


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
    tau_levels = _check_levels(np.shape(q), tau_levels, allow_empty=True)
    _, (qp, counts, keys, parent, comp, roots) = padded_quantised(q)
    height, width = q.shape
    levels, inverse, above = _group_levels(counts, tau_levels)
    start = _sort_pixels(qp, height, width, counts, keys)
    boxes = _largest_boxes(qp, height, width, keys, start, levels, above, parent, comp, roots, _TABLES)
    return boxes, inverse


# ---------------------------------------------------------------------------------------------------------
# every contour (MaxBoxAccV2) and the batch best-IoU curves
# ---------------------------------------------------------------------------------------------------------
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
    """Best pixel-inclusive IoU of ``boxes[a:b]`` with the GT boxes.

    The arithmetic is that of :func:`~.box_accuracy.box_iou_inclusive`: integer areas, one float64
    division, 0 for a non-positive union.
    """
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
        maps, taus, gts, gt_offsets, bool(multi_contour),
        qp, counts, keys, parent, comp, roots, _ALL_TABLES, out,
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
