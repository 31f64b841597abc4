"""The numba all-contour (MaxBoxAccV2) kernel (``monai_wsol.metrics._fast_contours``) against OpenCV.

The kernel gives each threshold's boxes in another order than OpenCV, so boxes are compared as multisets
(sorted rows) with the reference's own per-threshold loop (``reference_boxes_from_scoremap``, threshold +
findContours per tau) at 1000 thresholds: smooth noise, rings with nested discs and islands in their holes,
thin diagonal lines (8-connected components, 4-connected holes), checkerboards (diagonal contacts), maps
touching the border (background there is outside, not a hole), 1-pixel maps, and the golden maps.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from _paths import GOLDEN
from test_fast_contours import TAUS, _lines, _noise, _normalise, _rings, _smooth, _tied_squares

from monai_wsol.metrics import BoxAccuracyMetric, contours
from monai_wsol.metrics._quantize import distinct_masks, quantise_scores, threshold_levels
from monai_wsol.metrics.contours import (
    boxes_from_scoremap,
    distinct_level_boxes_modes,
    reference_boxes_from_scoremap,
)

pytest.importorskip("numba")
from monai_wsol.metrics._fast_contours import all_contour_boxes  # noqa: E402


def _sorted_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(boxes.T[::-1])]


def _kernel_per_tau(smap: np.ndarray, taus: np.ndarray = TAUS) -> list[np.ndarray]:
    q = quantise_scores(smap)
    boxes, inverse = all_contour_boxes(q, threshold_levels(int(q.max()), taus))
    return [boxes[j] for j in inverse]


def _assert_same_multisets(
    ours: list[np.ndarray], ref: list[np.ndarray], taus: np.ndarray, what: str
) -> None:
    assert len(ours) == len(ref)
    for tau, a, b in zip(taus, ours, ref, strict=True):
        assert np.array_equal(_sorted_rows(a), _sorted_rows(b)), (
            f"{what}: tau={tau:.3f}: ours {_sorted_rows(a).tolist()} != reference {_sorted_rows(b).tolist()}"
        )


def _assert_reference(smap: np.ndarray, what: str) -> None:
    ref = reference_boxes_from_scoremap(smap, TAUS, multi_contour=True)
    _assert_same_multisets(_kernel_per_tau(smap), ref, TAUS, what)


def _checkerboard(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Squares of side k touching only at corners: 8-connected foreground, 4-separated background."""
    k = int(rng.integers(1, 4))
    yy, xx = np.mgrid[0:h, 0:w]
    board = ((yy // k + xx // k) % 2).astype(np.float64) * rng.uniform(0.3, 1.0)
    return _normalise(board + 0.1 * rng.random((h, w)) * (rng.random() < 0.5))


def _nested(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Rings within rings with islands (and holes in the islands) at other values: holes of holes."""
    canvas = np.zeros((h, w), dtype=np.uint8)
    centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    radius = int(rng.integers(3, max(4, min(h, w))))
    while radius >= 1:
        cv2.circle(canvas, centre, radius, int(rng.integers(30, 256)), thickness=int(rng.integers(1, 3)))
        radius -= int(rng.integers(2, 4))
    for _ in range(int(rng.integers(0, 4))):  # single-pixel islands anywhere
        canvas[int(rng.integers(0, h)), int(rng.integers(0, w))] = int(rng.integers(30, 256))
    return _normalise(canvas)


def _border(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The maximum along an image edge: a region clipped by the border, background pockets against it."""
    m = _smooth(rng, h, w)
    idx = [(0, slice(None)), (-1, slice(None)), (slice(None), 0), (slice(None), -1)][int(rng.integers(0, 4))]
    m[idx] = 1.0
    return m


KINDS = [_smooth, _rings, _lines, _tied_squares, _noise, _checkerboard, _nested, _border]


@pytest.mark.parametrize("seed, kind", enumerate(KINDS))
def test_random_maps_equal_reference_as_multisets(seed, kind):
    rng = np.random.default_rng(100 + seed)
    low = 5 if kind is _tied_squares else 1
    for i in range(25):
        h, w = (int(v) for v in rng.integers(low, 33, size=2))
        _assert_reference(kind(rng, h, w), f"{kind.__name__} #{i} ({h}x{w})")


def test_one_pixel_and_thin_maps():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (1, 2), (2, 1), (1, 17), (17, 1), (2, 2), (3, 3)]:
        for i in range(4):
            _assert_reference(_normalise(rng.random(shape)), f"{shape} #{i}")


def test_hole_box_is_the_hole_grown_by_one():
    """A square with a hole, and a ring in a corner: the hole's box is the hole grown by one.

    A 7x7 square (rows 1-7, columns 2-8) of a 12x14 map with a 2x3 hole (rows 3-4, columns 4-6): outer box
    [x0, y0, x1 + 1, y1 + 1] = [2, 1, 9, 8], hole box grown by one with +2 on the far side = [3, 2, 8, 6];
    a 3x3 ring in the bottom-right corner: outer and hole boxes both [11, 9, 14, 12] clipped to
    [11, 9, 13, 11].
    """
    canvas = np.zeros((12, 14))
    canvas[1:8, 2:9] = 1.0
    canvas[3:5, 4:7] = 0.0
    canvas[9:12, 11:14] = 0.6
    canvas[10, 12] = 0.0
    ours = _kernel_per_tau(canvas, np.array([0.1, 0.7]))
    ref = reference_boxes_from_scoremap(canvas, [0.1, 0.7], multi_contour=True)
    _assert_same_multisets(ours, ref, np.array([0.1, 0.7]), "hand-made holes")
    assert sorted(map(tuple, ours[0].tolist())) == [
        (2, 1, 9, 8),
        (3, 2, 8, 6),
        (11, 9, 13, 11),
        (11, 9, 13, 11),
    ]
    assert sorted(map(tuple, ours[1].tolist())) == [(2, 1, 9, 8), (3, 2, 8, 6)]  # above 0.6: the square only


def test_golden_maps_equal_reference():
    data = dict(np.load(GOLDEN))  # read once: an NpzFile decompresses an array at every access
    shapes = data["cam_shapes"]
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
    flat = data["cams_flat"].astype(np.float64)
    coarse = data["thresholds_coarse"]
    counts = data["v2_box_counts"]
    starts = np.concatenate([[0], np.cumsum(counts.ravel())])
    for i in range(len(shapes)):
        smap = flat[offsets[i] : offsets[i + 1]].reshape(shapes[i])
        # every map against the fixture's own reference boxes at the coarse thresholds ...
        k = i * len(coarse)
        expected = [data["v2_boxes_flat"][starts[k + t] : starts[k + t + 1]] for t in range(len(coarse))]
        _assert_same_multisets(_kernel_per_tau(smap, coarse), expected, coarse, f"golden map {i} (coarse)")
        if i % 4 == 0:  # ... and a quarter of them against the reference loop at 1000 thresholds
            _assert_reference(smap, f"golden map {i}")


def test_grouping_empty_mask_and_bad_input():
    rng = np.random.default_rng(5)
    q = (rng.random((9, 11)) * 40).astype(np.uint8) * 3  # gaps between values: many levels share a mask
    tau_levels = np.append(np.floor(TAUS * q.max()).astype(np.int64), q.max())
    boxes, inverse = all_contour_boxes(q, tau_levels)
    _, expected = distinct_masks(q, tau_levels)
    assert np.array_equal(inverse, expected)
    assert len(boxes) == inverse.max() + 1
    assert boxes[-1].tolist() == [[0, 0, 0, 0]]  # level max(q): empty mask
    assert not boxes[0].flags.writeable
    for levels in (np.array([-1]), np.array([], dtype=np.int64)):
        with pytest.raises(ValueError, match="tau_levels"):
            all_contour_boxes(q, levels)
    with pytest.raises(ValueError, match="2D"):
        all_contour_boxes(np.zeros((2, 2, 2), dtype=np.uint8), np.array([0]))


def test_default_order_uses_the_kernel_and_opencv_order_is_kept_on_request(monkeypatch):
    rng = np.random.default_rng(9)
    m = torch.as_tensor(_rings(rng, 30, 26), dtype=torch.float32)
    opencv = boxes_from_scoremap(m, TAUS, multi_contour=True, order="opencv")
    ref = reference_boxes_from_scoremap(m.double().numpy(), TAUS, multi_contour=True)
    assert all(np.array_equal(a, b) for a, b in zip(opencv, ref, strict=True)), "not OpenCV's order"
    calls = []
    kernel = contours._scoremap_level_boxes
    monkeypatch.setattr(contours, "_scoremap_level_boxes", lambda *a: calls.append(1) or kernel(*a))
    default = boxes_from_scoremap(m, TAUS, multi_contour=True)
    assert calls, "the default order with multi_contour=True must use the kernel"
    _assert_same_multisets(default, opencv, TAUS, "API")
    # rings: components come before holes in the kernel, not in OpenCV's list, so the option has an effect
    assert any(not np.array_equal(a, b) for a, b in zip(default, opencv, strict=True))
    # v1 has one box: ``order`` changes nothing
    v1 = boxes_from_scoremap(m, TAUS, order="opencv")
    assert all(np.array_equal(a, b) for a, b in zip(v1, boxes_from_scoremap(m, TAUS), strict=True))
    with pytest.raises(ValueError, match="order must be"):
        boxes_from_scoremap(m, TAUS, multi_contour=True, order=False)
    # without numba the default falls back to the OpenCV path, hence OpenCV's order
    calls.clear()
    monkeypatch.setattr(contours, "USE_NUMBA", False)
    slow = boxes_from_scoremap(m, TAUS, multi_contour=True)
    assert not calls
    assert all(np.array_equal(a, b) for a, b in zip(slow, opencv, strict=True))


def test_modes_default_order_uses_the_kernel(monkeypatch):
    """Both modes at once (the evaluate command line): V2 from the kernel by default, OpenCV's on request."""
    rng = np.random.default_rng(4)
    m = _rings(rng, 40, 33)
    calls = []
    kernel = contours._all_contour_boxes
    monkeypatch.setattr(contours, "_all_contour_boxes", lambda *a: calls.append(1) or kernel(*a))
    (v1, v2), inverse = distinct_level_boxes_modes(m, TAUS)
    assert calls, "the default order must take the V2 boxes from the kernel"
    calls.clear()
    (v1_cv, v2_cv), inverse_cv = distinct_level_boxes_modes(m, TAUS, order="opencv")
    assert not calls
    assert np.array_equal(inverse, inverse_cv)
    assert all(np.array_equal(a, b) for a, b in zip(v1, v1_cv, strict=True))
    _assert_same_multisets(v2, v2_cv, range(len(v2)), "modes")
    ref = reference_boxes_from_scoremap(m, TAUS, multi_contour=True)
    assert all(np.array_equal(v2_cv[j], b) for j, b in zip(inverse.tolist(), ref, strict=True))


def test_v2_metric_uses_the_kernel_and_equals_golden(monkeypatch):
    data = dict(np.load(GOLDEN))
    calls = []
    kernel = contours._best_iou_curves
    monkeypatch.setattr(contours, "_best_iou_curves", lambda *a: calls.append(1) or kernel(*a))
    shapes = data["cam_shapes"]
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
    box_offsets = np.concatenate([[0], np.cumsum(data["gt_box_counts"])])
    metric = BoxAccuracyMetric(cam_curve_interval=0.001, multi_contour=True)
    for i in range(len(shapes)):
        cam = data["cams_flat"][offsets[i] : offsets[i + 1]].reshape(shapes[i])
        metric(cam[None, None], [data["gt_boxes_flat"][box_offsets[i] : box_offsets[i + 1]]])
    assert len(calls) == len(shapes)
    result = metric.aggregate()
    np.testing.assert_array_equal(result["box_acc"], data["boxacc_fine_multi"])
    assert result["MaxBoxAccV2"] == np.mean(data["boxacc_fine_multi"].max(axis=1))
