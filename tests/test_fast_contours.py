"""The numba v1 box kernel (``monai_wsol.metrics._fast_contours``) against the reference's own OpenCV loop.

Every map is compared at 1000 thresholds with ``reference_boxes_from_scoremap`` (threshold + findContours +
max contourArea per tau): smooth noise with many peaks, rings and holes (the traced-area path), thin
diagonal lines (zero-area contours), maps touching the image border, ties of equal-area components at
different raster positions (OpenCV's list order decides), and a ring whose hole contour has exactly the
area of its outer contour.  The OpenCV-only path (numba switched off) must give the same boxes.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _paths import GOLDEN
from scipy import ndimage

from monai_wsol.metrics import contours
from monai_wsol.metrics._quantize import distinct_masks
from monai_wsol.metrics.contours import (
    boxes_from_scoremap,
    distinct_level_boxes_modes,
    reference_boxes_from_scoremap,
)

pytest.importorskip("numba")
from monai_wsol.metrics._fast_contours import largest_contour_boxes  # noqa: E402

TAUS = np.arange(0, 1, 0.001)


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)


def _assert_reference(smap: np.ndarray, what: str) -> None:
    ours = boxes_from_scoremap(smap, TAUS)
    ref = reference_boxes_from_scoremap(smap, TAUS)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert np.array_equal(a, b), f"{what}: tau={TAUS[i]:.3f}: ours {a.tolist()} != reference {b.tolist()}"


@pytest.fixture(autouse=True)
def _numba_on(monkeypatch):
    assert contours.USE_NUMBA, "numba is importable, so the fast path must be the default"
    monkeypatch.setattr(contours, "USE_NUMBA", True)


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _normalise(ndimage.gaussian_filter(rng.random((h, w)), sigma=rng.uniform(0.8, 3.0)))


def _rings(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    canvas = np.zeros((h, w), dtype=np.uint8)
    for _ in range(rng.integers(1, 5)):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        radius = int(rng.integers(2, max(3, min(h, w) // 2)))
        value = int(rng.integers(40, 256))
        cv2.circle(canvas, centre, radius, value, thickness=int(rng.integers(1, 3)))
        if rng.random() < 0.5:  # something nested in the hole
            cv2.circle(canvas, centre, max(radius // 3, 0), int(rng.integers(40, 256)), thickness=-1)
    return _normalise(canvas + rng.integers(0, 20, size=(h, w)) * (rng.random() < 0.5))


def _lines(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    canvas = np.zeros((h, w), dtype=np.uint8)
    for _ in range(rng.integers(1, 6)):
        p0 = (int(rng.integers(-2, w + 2)), int(rng.integers(-2, h + 2)))
        d = int(rng.integers(2, max(h, w)))
        p1 = (p0[0] + d * int(rng.choice([-1, 1])), p0[1] + d * int(rng.choice([-1, 1])))  # diagonal
        cv2.line(canvas, p0, p1, int(rng.integers(30, 256)), thickness=1)
    return _normalise(canvas)


def _tied_squares(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Equal squares (equal contour areas) at random places, some with equal values (ties at every tau)."""
    canvas = np.zeros((h, w), dtype=np.float64)
    side = int(rng.integers(1, 5))
    values = rng.choice([0.5, 1.0], size=rng.integers(2, 7))
    for value in values:
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        canvas[y : y + side, x : x + side] = value
    return _normalise(canvas)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _normalise(np.round(rng.random((h, w)) * rng.integers(2, 9)))  # few levels: many components


@pytest.mark.parametrize("seed, kind", enumerate([_smooth, _rings, _lines, _tied_squares, _noise]))
def test_random_maps_equal_reference(seed, kind):
    rng = np.random.default_rng(seed)
    for i in range(40):
        h, w = (int(v) for v in rng.integers(4, 36, size=2))
        _assert_reference(kind(rng, h, w), f"{kind.__name__} #{i} ({h}x{w})")


def test_border_touching_maps_equal_reference():
    rng = np.random.default_rng(7)
    for i in range(30):
        h, w = (int(v) for v in rng.integers(3, 25, size=2))
        m = _smooth(rng, h, w)
        edge = rng.integers(0, 4)
        # the maximum on an image edge or corner, and a full-width band: components clipped by the border
        idx = [(0, slice(None)), (-1, slice(None)), (slice(None), 0), (slice(None), -1)][edge]
        m[idx] = 1.0
        _assert_reference(m, f"border #{i}")


def test_holey_components_compete_through_the_traced_area():
    """A 1-pixel square ring (hull area ~0, filled area 49) against a solid square: only the traced outer
    border tells which is larger, and at equal areas OpenCV's order (later first pixel wins) decides."""
    for solid_side, ring_first in [(6, True), (9, True), (8, True), (8, False), (7, False)]:
        canvas = np.zeros((24, 30), dtype=np.float64)
        ring_at, solid_at = ((2, 2), (12, 15)) if ring_first else ((12, 15), (2, 2))
        cv2.rectangle(canvas, ring_at[::-1], (ring_at[1] + 7, ring_at[0] + 7), 1.0, thickness=1)
        canvas[solid_at[0] : solid_at[0] + solid_side, solid_at[1] : solid_at[1] + solid_side] = 0.8
        _assert_reference(canvas, f"ring vs solid {solid_side}, ring first: {ring_first}")


def test_hole_contour_with_the_outer_area_never_wins():
    """A diamond ring of diagonal steps has a hole contour of exactly its outer area; a spike makes the two
    bounding boxes differ, so picking the hole would show."""
    canvas = np.zeros((16, 16), dtype=np.float64)
    centre, r = 8, 4
    for k in range(-r, r + 1):
        for y, x in [(centre - r + abs(k), centre + k), (centre + r - abs(k), centre + k)]:
            canvas[y, x] = 1.0
    for s in range(1, 4):  # spike out of the left corner, diagonal: no area
        canvas[centre - s, centre - r - s] = 1.0
    _assert_reference(canvas, "diamond ring with spike")
    box = boxes_from_scoremap(canvas, [0.5])[0]
    # OpenCV: outer contour area 32, box from x = 1 (spike tip); hole contour also 32, box from x = 4
    assert box.tolist() == [[centre - r - 3, centre - r, centre + r + 1, centre + r + 1]]


def test_golden_maps_equal_reference():
    data = np.load(GOLDEN)
    shapes = data["cam_shapes"]
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
    flat = data["cams_flat"].astype(np.float64)
    for i in range(0, len(shapes), 3):  # a third of them: the golden test checks all against the fixture
        _assert_reference(flat[offsets[i] : offsets[i + 1]].reshape(shapes[i]), f"golden map {i}")


def test_fast_and_opencv_paths_agree(monkeypatch):
    rng = np.random.default_rng(3)
    maps = [_smooth(rng, 30, 20), _rings(rng, 25, 25), _noise(rng, 17, 31), np.zeros((5, 6))]
    # OpenCV's order: V2 boxes compare row for row (the default order is checked in test_fast_multi_contours)
    fast = [distinct_level_boxes_modes(m, TAUS, order="opencv") for m in maps]
    monkeypatch.setattr(contours, "USE_NUMBA", False)
    slow = [distinct_level_boxes_modes(m, TAUS, order="opencv") for m in maps]
    for (f_boxes, f_inv), (s_boxes, s_inv) in zip(fast, slow, strict=True):
        assert np.array_equal(f_inv, s_inv)
        for f_mode, s_mode in zip(f_boxes, s_boxes, strict=True):
            assert len(f_mode) == len(s_mode)
            assert all(np.array_equal(a, b) for a, b in zip(f_mode, s_mode, strict=True))


def test_kernel_groups_thresholds_like_distinct_masks():
    rng = np.random.default_rng(5)
    q = (rng.random((9, 11)) * 40).astype(np.uint8) * 3  # gaps between values: many levels share a mask
    tau_levels = np.append(np.floor(TAUS * q.max()).astype(np.int64), q.max())
    boxes, inverse = largest_contour_boxes(q, tau_levels)
    _, expected = distinct_masks(q, tau_levels)
    assert np.array_equal(inverse, expected)
    assert boxes.shape == (inverse.max() + 1, 4)
    assert boxes[-1].tolist() == [0, 0, 0, 0]  # level max(q) gives an empty mask
    assert boxes[0].tolist() == reference_boxes_from_scoremap(q / 255.0, [0.0])[0][0].tolist()
    with pytest.raises(ValueError, match="tau_levels"):
        largest_contour_boxes(q, np.array([-1]))


def test_thin_and_tiny_maps_and_torch_input():
    rng = np.random.default_rng(11)
    for shape in [(1, 1), (1, 9), (9, 1), (2, 2), (2, 13)]:
        for i in range(5):
            _assert_reference(_normalise(rng.random(shape)), f"{shape} #{i}")
    torch = pytest.importorskip("torch")
    m = torch.rand(12, 17, dtype=torch.float32)
    m = (m - m.min()) / (m.max() - m.min())
    ours = boxes_from_scoremap(m, TAUS)
    ref = reference_boxes_from_scoremap(m.double().numpy(), TAUS)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_kernel_rejects_what_it_cannot_pack():
    from monai_wsol.metrics._fast_contours import fits

    assert fits((224, 224)) and not fits((40000, 10)) and not fits((4, 4, 4))
    with pytest.raises(ValueError, match="at most"):
        largest_contour_boxes(np.zeros((40000, 1), dtype=np.uint8), np.array([0]))
