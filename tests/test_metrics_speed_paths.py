"""The fast paths of the 2D box metrics give the reference's numbers exactly.

Three routes must agree on every map: the compiled batch path the metrics use
(``contours.scoremap_best_iou_curves``: one call per batch, maps checked and quantised inside, IoUs per
distinct mask), the per-map box path (``boxes_from_scoremap`` + ``best_iou_curve``) and the reference's own
per-threshold OpenCV loop (``reference_boxes_from_scoremap``), in v1 and V2 mode, on random and adversarial
maps (checkerboards, single pixels, holes in holes, maps touching the border, all-equal maps, 1-pixel-wide
maps), with unsorted and repeated thresholds, torch float32 input, and over threads.  Bad maps are rejected
with an error naming the map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fast_contours import _lines, _noise, _normalise, _rings, _smooth, _tied_squares
from test_fast_multi_contours import _border, _checkerboard, _nested

from monai_wsol.metrics import BoxAccuracyMetric, best_iou_curve, boxes_from_scoremap, contours
from monai_wsol.metrics._fast_contours import _TILE
from monai_wsol.metrics.contours import reference_boxes_from_scoremap, scoremap_best_iou_curves

pytest.importorskip("numba")

TAUS = np.arange(0, 1, 0.001)


def _gt(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1-3 random GT boxes inside an (h, w) map, ends up to the size (as rescaled reference boxes may be)."""
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        x0, x1 = np.sort(rng.integers(0, w + 1, size=2))
        y0, y1 = np.sort(rng.integers(0, h + 1, size=2))
        boxes.append([min(x0, w - 1), min(y0, h - 1), x1, y1])
    return np.asarray(boxes, dtype=np.int64)


def _reference_curve(smap: np.ndarray, taus: np.ndarray, gt: np.ndarray, multi: bool) -> np.ndarray:
    return best_iou_curve(reference_boxes_from_scoremap(smap, taus, multi), gt)


def _assert_three_paths(maps: np.ndarray, gts: list[np.ndarray], taus: np.ndarray, what: str) -> None:
    for multi in (False, True):
        batch = scoremap_best_iou_curves(maps, taus, gts, multi)
        assert batch is not None and batch.shape == (len(maps), len(taus))
        for i, (smap, gt) in enumerate(zip(maps, gts, strict=True)):
            per_map = best_iou_curve(boxes_from_scoremap(smap, taus, multi), gt)
            ref = _reference_curve(smap, taus, gt, multi)
            mode = "V2" if multi else "v1"
            assert np.array_equal(per_map, ref), f"{what} #{i} {mode}: per-map path != reference"
            bad = np.flatnonzero(batch[i] != ref)
            assert bad.size == 0, f"{what} #{i} {mode}: batch path != reference at taus {taus[bad[:5]]}"


def _adversarial(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    one_pixel = np.zeros((h, w))
    one_pixel[int(rng.integers(0, h)), int(rng.integers(0, w))] = 1.0
    pixels = np.zeros((h, w))  # isolated pixels, some diagonal neighbours, some on the border
    pixels[rng.random((h, w)) < 0.15] = rng.uniform(0.2, 1.0)
    pixels[0, : w // 2] = 0.9
    return [
        one_pixel,
        pixels,
        np.full((h, w), 0.4),  # all equal: level 0 keeps everything, higher levels nothing
        np.zeros((h, w)),  # all zero: every mask empty
        np.ones((h, w)),
        _checkerboard(rng, h, w),
        _nested(rng, h, w),
        _border(rng, h, w),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_batch_equals_per_map_equals_reference(seed):
    rng = np.random.default_rng(100 + seed)
    h, w = (int(v) for v in rng.integers(5, 30, size=2))
    kinds = [_smooth, _rings, _lines, _tied_squares, _noise, _checkerboard, _nested, _border]
    maps = np.stack([kind(rng, h, w) for kind in kinds] + _adversarial(rng, h, w))
    gts = [_gt(rng, h, w) for _ in maps]
    _assert_three_paths(maps, gts, TAUS, f"seed {seed} ({h}x{w})")


def test_plateaus_across_the_kernels_visiting_tiles():
    """The kernels visit a value's pixels by 16 x 16 tiles: equal neighbours across tile edges (widths and
    heights 16k, 16k + 1, 16k + 2) decide which pixel joins first; few-level noise has many of them."""
    rng = np.random.default_rng(11)
    for shape in [(17, 17), (16, 33), (33, 16), (34, 18), (18, 49)]:
        maps = np.stack(
            [_noise(rng, *shape) for _ in range(6)] + [_checkerboard(rng, *shape) for _ in range(2)]
        )
        _assert_three_paths(maps, [_gt(rng, *shape) for _ in maps], TAUS, f"tiles {shape}")
    # a diagonal pair of equal pixels "/" across a tile edge is one component only if the pixel visited second
    # sees the first: at (y, t) and (y + 1, t - 1) (t = 16), in the last column, at tile rows' top and bottom
    # rows
    t = _TILE
    rows = (0, 4, t - 2, t - 1, t, 2 * t - 1)
    for width in (t + 1, t + 2, 2 * t + 1):
        maps = np.zeros((len(rows), 2 * t + 1, width))
        for k, y in enumerate(rows):
            maps[k, y, t] = maps[k, y + 1, t - 1] = 1.0
        # the reference's box of the pair: [x, y, x + w, y + h], ends clipped to W - 1 / H - 1
        gts = [np.array([[t - 1, y, min(t + 1, width - 1), min(y + 2, 2 * t)]]) for y in rows]
        _assert_three_paths(maps, gts, TAUS, f"diagonal pairs, width {width}")
        assert (scoremap_best_iou_curves(maps, TAUS, gts) == 1.0).all()  # one component, at every tau


def test_thin_maps_and_odd_threshold_lists():
    rng = np.random.default_rng(7)
    for shape in [(1, 1), (1, 17), (17, 1), (2, 2), (3, 40)]:
        maps = np.stack([_normalise(rng.random(shape)) for _ in range(4)] + [np.zeros(shape), np.ones(shape)])
        _assert_three_paths(maps, [_gt(rng, *shape) for _ in maps], TAUS, f"{shape}")
    # unsorted, repeated and coarse thresholds map back to the right masks
    maps = np.stack([_smooth(rng, 20, 23) for _ in range(3)])
    taus = np.array([0.5, 0.0, 0.999, 0.5, 0.25, 0.01, 0.75, 0.3])
    _assert_three_paths(maps, [_gt(rng, 20, 23) for _ in maps], taus, "odd taus")


def test_metric_uses_the_batch_path_and_threads_agree(monkeypatch):
    rng = np.random.default_rng(3)
    maps = np.stack([_smooth(rng, 24, 31) for _ in range(7)] + [_nested(rng, 24, 31)])
    gts = [_gt(rng, 24, 31) for _ in maps]
    calls = []
    kernel = contours._best_iou_curves
    monkeypatch.setattr(contours, "_best_iou_curves", lambda *a: calls.append(len(a[0])) or kernel(*a))
    for multi in (False, True):
        calls.clear()
        one = BoxAccuracyMetric(thresholds=TAUS, multi_contour=multi)
        curves = one(torch.as_tensor(maps[:, None], dtype=torch.float32), gts).numpy()
        assert calls == [len(maps)], "one compiled call for the whole batch"
        expected = np.stack(
            [
                _reference_curve(m.astype(np.float32).astype(np.float64), TAUS, g, multi)
                for m, g in zip(maps, gts, strict=True)
            ]
        )
        np.testing.assert_array_equal(curves, expected)
        single = one(maps, gts).numpy()
        calls.clear()
        threaded = BoxAccuracyMetric(thresholds=TAUS, multi_contour=multi, num_workers=3)
        np.testing.assert_array_equal(threaded(maps, gts).numpy(), single)
        assert sorted(calls) == [2, 3, 3], "the batch is split over the threads"
        threaded(maps, gts)
        np.testing.assert_array_equal(threaded.aggregate()["box_acc"], one.aggregate()["box_acc"])
    # numba switched off: the OpenCV path gives the same curves
    monkeypatch.setattr(contours, "USE_NUMBA", False)
    assert scoremap_best_iou_curves(maps, TAUS, gts) is None
    slow = BoxAccuracyMetric(thresholds=TAUS, multi_contour=True)(maps, gts).numpy()
    np.testing.assert_array_equal(
        slow, np.stack([_reference_curve(m, TAUS, g, True) for m, g in zip(maps, gts, strict=True)])
    )


@pytest.mark.parametrize(
    "value, match", [(np.nan, "NaN"), (np.inf, "NaN"), (1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]")]
)
def test_bad_maps_are_named(value, match):
    maps = np.zeros((4, 6, 7))
    maps[2, 3, 4] = value
    gts = [np.array([[0, 0, 3, 3]])] * 4
    with pytest.raises(ValueError, match=match) as err:
        scoremap_best_iou_curves(maps, TAUS, gts)
    assert "y_pred[2]" in str(err.value)
    with pytest.raises(
        ValueError, match="y_pred\\[3\\]"
    ):  # the index in the batch, also from a thread's chunk
        scoremap_best_iou_curves(np.roll(maps, 1, axis=0), TAUS, gts, num_workers=2)
    with pytest.raises(ValueError, match=match):
        BoxAccuracyMetric(thresholds=TAUS)(maps, gts)
    with pytest.raises(ValueError, match=match):
        boxes_from_scoremap(maps[2], TAUS, multi_contour=True)
    with pytest.raises(ValueError, match="thresholds"):
        scoremap_best_iou_curves(maps[:1] * 0, [0.5, 1.0], gts[:1])
    with pytest.raises(ValueError, match="one box array per map"):
        scoremap_best_iou_curves(maps[:2] * 0, TAUS, gts[:1])
