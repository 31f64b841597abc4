"""Box extraction, IoU, BoxAcc/PxAP streaming metrics.

Hand-made cases, the plain reference loop, bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_wsol.boxes import Boxes
from monai_wsol.metrics import (
    BoxAccuracyMetric,
    MaxBoxAccMetric,
    MaxBoxAccV2Metric,
    PxAPMetric,
    best_iou_curve,
    box_iou_inclusive,
    boxes_from_scoremap,
    boxes_from_scoremaps,
    pxap_from_histograms,
)
from monai_wsol.metrics.contours import _euler_numbers, _single_region_levels, reference_boxes_from_scoremap

TAUS = np.arange(0, 1, 0.01)


def _smooth_map(seed: int, shape=(40, 52), sigma=3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.random(shape), sigma)
    return (m - m.min()) / (m.max() - m.min())


def test_iou_inclusive_values():
    a = np.array([[0, 0, 9, 9], [0, 0, 0, 0]])
    b = np.array([[5, 5, 14, 14], [0, 0, 9, 9]])
    iou = box_iou_inclusive(a, b)
    # 10x10 boxes overlapping on 5x5 pixels: 25 / (100 + 100 - 25)
    assert iou[0, 0] == 25 / 175 and iou[0, 1] == 1.0
    assert iou[1, 1] == 1 / 100 and iou[1, 0] == 0.0
    # 3D: a 2x2x2 cube inside a 4x4x4 cube
    assert box_iou_inclusive(np.array([[0, 0, 0, 1, 1, 1]]), np.array([[0, 0, 0, 3, 3, 3]]))[0, 0] == 8 / 64
    with pytest.raises(ValueError, match="boxes"):
        box_iou_inclusive(np.zeros((1, 4)), np.zeros((1, 6)))


def test_boxes_hand_made():
    m = np.zeros((10, 12))
    m[2:8, 3:9] = 1.0  # a square ring: outer and hole contours
    m[4:6, 5:7] = 0.0
    v2 = boxes_from_scoremap(m, [0.5], multi_contour=True)[0]
    assert sorted(map(tuple, v2.tolist())) == [(3, 2, 9, 8), (4, 3, 8, 7)]
    assert boxes_from_scoremap(m, [0.5])[0].tolist() == [[3, 2, 9, 8]]
    # a region touching the right/bottom border: x + w clipped to W - 1, y + h to H - 1
    edge = np.zeros((6, 7))
    edge[3:, 4:] = 1.0
    assert boxes_from_scoremap(edge, [0.0])[0].tolist() == [[4, 3, 6, 5]]
    # an all-zero map has no contour at any tau
    assert boxes_from_scoremap(np.zeros((5, 5)), [0.0, 0.5])[0].tolist() == [[0, 0, 0, 0]]
    # equal areas: the first contour in OpenCV's order wins, as Python's max() in the reference
    twins = np.zeros((9, 9))
    twins[1:3, 1:3] = 1.0
    twins[6:8, 5:7] = 1.0
    assert (
        boxes_from_scoremap(twins, [0.5])[0].tolist()
        == reference_boxes_from_scoremap(twins, [0.5])[0].tolist()
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("multi", [False, True])
def test_matches_plain_reference_loop(seed, multi):
    smap = _smooth_map(seed, sigma=1.5 + seed)
    if seed == 3:
        smap = np.round(smap * 7) / 7  # plateaus: many equal scores, masks shared by many taus
    taus = np.arange(0, 1, 0.001)
    ours = boxes_from_scoremap(smap, taus, multi_contour=multi, order="opencv")
    ref = reference_boxes_from_scoremap(smap, taus, multi_contour=multi)
    assert len(ours) == len(ref) == len(taus)
    for got, want in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(got, want)
    # the default order: the same boxes as multisets
    for got, want in zip(boxes_from_scoremap(smap, taus, multi_contour=multi), ref, strict=True):
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))


@pytest.mark.parametrize("seed", range(3))
def test_single_region_proof_is_sound(seed):
    # where a mask is declared one region (without holes), labelling must agree at every level
    q = (_smooth_map(seed, sigma=1.0 + seed) * 255).astype(np.uint8)
    if seed == 2:
        q = (q // 50 * 50).astype(np.uint8)
    one_component, one_region = _single_region_levels(q)
    assert one_component.any()
    for level in range(int(q.max())):
        mask = q > level
        n_components = ndimage.label(mask, structure=np.ones((3, 3)))[1]
        n_holes = ndimage.label(np.pad(~mask, 1, constant_values=True))[1] - 1  # 4-connected background
        assert n_components - n_holes == _euler_numbers(q)[level]
        if one_component[level]:
            assert n_components == 1, level
        if one_region[level]:
            assert n_components == 1 and n_holes == 0, level


def test_torch_numpy_and_processes_identical():
    maps = [_smooth_map(s).astype(np.float32) for s in range(3)]
    ref = [boxes_from_scoremap(m, TAUS, True) for m in maps]
    for got in (
        [boxes_from_scoremap(torch.from_numpy(m), TAUS, True) for m in maps],
        boxes_from_scoremaps(maps, TAUS, True, num_workers=2),
    ):
        for a, b in zip(got, ref, strict=True):
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_best_iou_curve_matches_per_tau_computation():
    smap = _smooth_map(7)
    gt = np.array([[10, 5, 30, 25], [0, 0, 4, 4]])
    boxes = boxes_from_scoremap(smap, TAUS, multi_contour=True)
    expected = np.array([box_iou_inclusive(b, gt).max() for b in boxes])
    np.testing.assert_array_equal(best_iou_curve(boxes, gt), expected)


def _dataset(n=6):
    maps = np.stack([_smooth_map(s) for s in range(n)])
    rng = np.random.default_rng(0)
    gts = []
    for _ in range(n):
        x0, y0 = rng.integers(0, 20, size=2)
        gts.append(np.array([[x0, y0, x0 + rng.integers(5, 30), y0 + rng.integers(5, 18)]]))
    return maps, gts


def test_streaming_equals_all_at_once_and_reset():
    maps, gts = _dataset()
    whole = MaxBoxAccV2Metric(thresholds=TAUS)
    whole(maps[:, None], gts)
    parts = MaxBoxAccV2Metric(thresholds=TAUS)
    parts(torch.from_numpy(maps[:2]), gts[:2])  # (B, H, W) torch
    parts(maps[2:5, None], gts[2:5])  # (B, 1, H, W) numpy
    parts(
        [torch.from_numpy(m[None]).float() for m in maps[5:]], [torch.from_numpy(g) for g in gts[5:]]
    )  # list
    a, b = whole.aggregate(), parts.aggregate()
    np.testing.assert_array_equal(a["box_acc"], b["box_acc"])
    assert a["MaxBoxAccV2"] == b["MaxBoxAccV2"] and a["num_images"] == 6
    # per image correctness is the best IoU curve compared with delta
    curves = np.stack(
        [best_iou_curve(boxes_from_scoremap(m, TAUS, True), g) for m, g in zip(maps, gts, strict=True)]
    )
    np.testing.assert_array_equal(a["box_acc"][1], (curves >= 0.5).sum(0) * 100.0 / 6)
    parts.reset()
    with pytest.raises(RuntimeError, match="before any image"):
        parts.aggregate()
    parts(maps[:1], gts[:1])
    assert parts.aggregate()["num_images"] == 1


def test_metric_names_and_modes():
    maps, gts = _dataset(3)
    v1 = MaxBoxAccMetric(thresholds=TAUS, iou_thresholds=(50, 70))
    v1(maps, gts)
    out = v1.aggregate()
    assert out["MaxBoxAcc"] == out["BoxAcc@50"] and "MaxBoxAccV2" not in out
    assert out["box_acc"].shape == (2, len(TAUS))
    assert out["tau@70"] == TAUS[int(np.argmax(out["box_acc"][1]))]


def test_3d_dispatch_one_cube():
    pytest.importorskip("monai_wsol.metrics.volume")
    vol = np.zeros((1, 1, 8, 9, 10))
    vol[0, 0, 2:6, 3:7, 1:5] = 1.0
    metric = BoxAccuracyMetric(thresholds=TAUS, iou_thresholds=(50,))
    # the cube's protocol box is its StandardMode box in 3D (array-axis order, end = start + extent)
    curves = metric(vol, [np.array([[2, 3, 1, 6, 7, 5]])])
    assert curves.shape == (1, len(TAUS)) and bool((curves == 1.0).all())
    assert metric.aggregate()["BoxAcc@50"] == 100.0
    tagged = BoxAccuracyMetric(thresholds=TAUS, iou_thresholds=(50,))
    assert bool((tagged(vol, [Boxes.standard([[2, 3, 1, 6, 7, 5]], 3)]) == curves).all())


def test_perfect_map_of_a_lesion_on_the_border():
    # a lesion on the last 5 columns and rows 2..7: its GT box ends at W (start + extent), the protocol's
    # extracted box at W - 1 (the reference clips x + w): IoU 5 * 7 / (6 * 7) with pixel-inclusive areas
    mask = np.zeros((10, 12))
    mask[2:8, 7:] = 1.0
    gt = Boxes.standard([[2, 7, 8, 12]], 2)
    assert gt.to_protocol().coords.tolist() == [[7, 2, 12, 8]]
    assert boxes_from_scoremap(mask, [0.5])[0].tolist() == [[7, 2, 11, 8]]
    curves = MaxBoxAccV2Metric(thresholds=TAUS)(mask[None], [gt])
    assert bool((curves == 35 / 42).all())


def test_iou_and_curve_accept_boxes_of_either_convention():
    standard = Boxes.standard([[1, 2, 4, 9]], 2)  # rows 1..3, columns 2..8
    protocol = np.array([[2, 1, 9, 4]])
    assert box_iou_inclusive(standard, protocol).tolist() == [[1.0]]
    assert box_iou_inclusive(standard.to_protocol(), standard).tolist() == [[1.0]]
    per_tau = [protocol, np.array([[0, 0, 3, 3]])]
    np.testing.assert_array_equal(best_iou_curve(per_tau, standard), best_iou_curve(per_tau, protocol))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((1, 8, 8), np.nan), "NaN"),
        (np.full((1, 8, 8), np.inf), "NaN or infinite"),
        (np.full((1, 8, 8), 1.5), r"\[0, 1\]"),
        (-np.ones((1, 8, 8)), r"\[0, 1\]"),
        (np.zeros((8, 8)), "y_pred"),
        (np.zeros((1, 2, 8, 8)), "y_pred"),
    ],
)
def test_bad_scoremaps(bad, match):
    with pytest.raises(ValueError, match=match):
        BoxAccuracyMetric(thresholds=TAUS)(bad, [np.array([[0, 0, 3, 3]])])


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 dimensions"):
        boxes_from_scoremap(np.zeros((2, 3, 3)), TAUS)
    with pytest.raises(ValueError, match="thresholds"):
        boxes_from_scoremap(np.zeros((3, 3)), [0.5, 1.0])
    metric = BoxAccuracyMetric(thresholds=TAUS)
    ok = np.zeros((1, 8, 8))
    for gt, match in [
        (np.array([[3, 3, 2, 5]]), "inverted"),
        (np.array([[0, 0, 9, 5]]), "outside"),
        (np.array([[-1, 0, 2, 5]]), "outside"),
        (np.zeros((0, 4)), "at least one box"),
        (np.array([[0.5, 0, 2, 5]]), "integers"),
    ]:
        with pytest.raises(ValueError, match=match):
            metric(ok, [gt])
    with pytest.raises(ValueError, match="one box array per image"):
        metric(ok, [])
    with pytest.raises(ValueError, match="iou_thresholds"):
        BoxAccuracyMetric(iou_thresholds=(0, 50))
    with pytest.raises(ValueError, match="not both"):
        BoxAccuracyMetric(thresholds=TAUS, cam_curve_interval=0.01)


def test_pxap_small_case_and_errors():
    # two images, scores in distinct bins: a perfect ranking gives PxAP 100
    scores = np.array([[[0.95, 0.2], [0.7, 0.05]], [[0.85, 0.1], [0.3, 0.0]]])
    masks = scores > 0.5
    metric = PxAPMetric(threshold_step=0.1)
    metric(scores, masks)
    out = metric.aggregate()
    assert out["PxAP"] == pytest.approx(100.0)
    assert out["recall"][-1] == 1.0
    # ignoring the only negative pixel above 0.5 changes nothing; ignoring a positive is not possible
    flipped = masks.copy()
    flipped[0, 0, 0] = False  # 0.95 is now background: precision at the top drops
    worse = PxAPMetric(threshold_step=0.1)
    worse(scores, flipped)
    assert worse.aggregate()["PxAP"] < 100.0
    ignored = PxAPMetric(threshold_step=0.1)
    ignore = np.zeros_like(masks)
    ignore[0, 0, 0] = True
    ignored(scores, flipped, ignore)
    assert ignored.aggregate()["PxAP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no positive"):
        pxap_from_histograms(np.zeros(12), np.ones(12))
    with pytest.raises(ValueError, match="shape"):
        metric(scores, masks[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        metric(np.full_like(scores, np.nan), masks)
