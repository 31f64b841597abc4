"""3D box extraction (connected components) and best-threshold mask overlap (Dice / IoU), 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_wsol.metrics.contours import boxes_from_scoremap
from monai_wsol.metrics.mask_overlap import MaskOverlapMetric
from monai_wsol.metrics.volume import boxes_from_scorevolume, distinct_boxes

COARSE = np.arange(0, 1, 0.01)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def _bumps_2d(shape=(40, 64)) -> np.ndarray:
    """Three collinear Gaussian bumps of decreasing size: their level sets are discs (no holes)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    peaks = [(20, 14, 6.0, 1.0), (20, 38, 3.5, 0.8), (20, 55, 2.0, 0.6)]
    s = sum(a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sig**2)) for y, x, sig, a in peaks)
    return _normalise(s)


def _naive_volume_boxes(
    vol: np.ndarray, taus: np.ndarray, multi: bool, connectivity: int
) -> list[np.ndarray]:
    """Plain per-threshold oracle: label the whole mask at every tau, box each component from its voxels."""
    q = np.floor(vol.astype(np.float64) * 255.0)
    rank = {6: 1, 18: 2, 26: 3}[connectivity]
    structure = ndimage.generate_binary_structure(3, rank)
    out = []
    for tau in taus:
        mask = q > int(tau * q.max())
        labels, n = ndimage.label(mask, structure=structure)
        if n == 0:
            out.append(np.zeros((1, 6), dtype=np.int64))
            continue
        boxes, sizes = [], []
        for k in range(1, n + 1):
            idx = np.argwhere(labels == k)
            lo, hi = idx.min(0), idx.max(0)
            boxes.append(np.concatenate([lo, np.minimum(hi + 1, np.array(vol.shape) - 1)]))
            sizes.append(len(idx))
        boxes = np.array(boxes, dtype=np.int64)
        out.append(boxes if multi else boxes[[int(np.argmax(sizes))]])
    return out


def _slice_box_to_2d(box3d: np.ndarray) -> np.ndarray:
    """Box of a (1, H, W) volume -> box of the 2D protocol.

    [0, r0, c0, 0, r1, c1] -> [x0, y0, x1, y1] = [c0, r0, c1, r1].
    """
    return box3d[:, [2, 1, 5, 4]]


def test_one_slice_volume_matches_2d_contours_on_convex_blobs():
    smap = _bumps_2d()
    for multi in (False, True):
        b2 = boxes_from_scoremap(smap, COARSE, multi_contour=multi)
        b3 = boxes_from_scorevolume(smap[None], COARSE, multi_component=multi)
        for t in range(len(COARSE)):
            assert np.all(b3[t][:, [0, 3]] == 0), "the single slice's axis-0 extent is [0, 0]"
            got = sorted(map(tuple, _slice_box_to_2d(b3[t]).tolist()))
            want = sorted(map(tuple, b2[t].tolist()))
            assert got == want, (multi, COARSE[t])
    # the multi-region case is not trivial: several blobs are separate at high thresholds
    assert max(len(b) for b in boxes_from_scorevolume(smap[None], COARSE, multi_component=True)) == 3


def test_ring_hole_contour_has_no_3d_counterpart():
    """Where 2D and 3D cannot agree: a ring is one component but two contours (outer and hole)."""
    yy, xx = np.mgrid[:31, :31]
    r = np.hypot(yy - 15, xx - 15)
    ring = ((r >= 6) & (r <= 10)).astype(np.float64)
    b2 = boxes_from_scoremap(ring, [0.5], multi_contour=True)[0]
    b3 = boxes_from_scorevolume(ring[None], [0.5], multi_component=True)[0]
    assert len(b2) == 2 and len(b3) == 1
    # the component's box is the outer contour's box; the hole contour's box is an extra 2D candidate
    assert _slice_box_to_2d(b3).tolist() == [[5, 5, 26, 26]]
    assert [5, 5, 26, 26] in b2.tolist()
    (hole,) = [row for row in b2.tolist() if row != [5, 5, 26, 26]]
    assert 5 < hole[0] and 5 < hole[1] and hole[2] < 26 and hole[3] < 26


@pytest.mark.parametrize("method", ["label", "union_find"])
@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("sigma", [1.2, 0.0])
def test_volume_boxes_equal_a_plain_per_threshold_oracle(sigma, multi, connectivity, method):
    """Both strategies against plain labelling, on a smooth volume and on noise (many tiny components)."""
    rng = np.random.default_rng(7)
    vol = rng.random((10, 14, 12))
    vol = _normalise(ndimage.gaussian_filter(vol, sigma) if sigma else vol)
    taus = np.arange(0, 1, 0.05)
    got = boxes_from_scorevolume(vol, taus, multi_component=multi, connectivity=connectivity, method=method)
    want = _naive_volume_boxes(vol, taus, multi, connectivity)
    assert len(got) == len(taus)
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == np.int64 and g.shape[1] == 6
        np.testing.assert_array_equal(g, w, err_msg=f"tau={taus[t]}")
    if multi:
        assert max(len(g) for g in got) > 1, "the random volume should split into several components"


@pytest.mark.parametrize("method", ["label", "union_find"])
def test_connectivity_decides_diagonal_neighbours(method):
    vol = np.zeros((3, 3, 3))
    vol[2, 2, 2] = 0.6
    vol[0, 0, 0] = vol[1, 1, 1] = 1.0
    multi = {"multi_component": True, "method": method}
    assert len(boxes_from_scorevolume(vol, [0.5], connectivity=26, **multi)[0]) == 1
    assert len(boxes_from_scorevolume(vol, [0.5], connectivity=6, **multi)[0]) == 3
    # 6-connectivity, v1: one-voxel components tie, the first in label (C) order wins
    v1 = boxes_from_scorevolume(vol, [0.5, 0.9], connectivity=6, method=method)
    np.testing.assert_array_equal(v1[0], [[0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(v1[1], [[0, 0, 0, 1, 1, 1]])


def test_union_find_equals_labelling_on_a_larger_volume():
    """``auto`` switches to the component sweep from 32768 voxels: same boxes as labelling at every tau."""
    rng = np.random.default_rng(3)
    vol = _normalise(ndimage.gaussian_filter(rng.random((24, 40, 36)), 2.0))
    taus = np.arange(0, 1, 0.001)
    for multi in (False, True):
        auto = boxes_from_scorevolume(vol, taus, multi_component=multi)
        label = boxes_from_scorevolume(vol, taus, multi_component=multi, method="label")
        assert all(np.array_equal(a, b) for a, b in zip(auto, label, strict=True))
        assert all(not a.flags.writeable for a in auto)
    assert max(len(b) for b in label) > 3


def test_the_other_variant_of_a_sweep_is_served_from_the_cache_and_the_cache_is_bounded(monkeypatch):
    """V2 then v1 of one volume (what an evaluation asks): one union-find sweep, the second answer from the
    cache and equal to labelling's; other volumes or levels are swept anew; the cache stays bounded."""
    from monai_wsol.metrics import volume

    sweeps = []
    sweep = volume._boxes_by_union_find
    monkeypatch.setattr(volume, "_boxes_by_union_find", lambda *a: sweeps.append(1) or sweep(*a))
    monkeypatch.setattr(volume, "_OTHER_VARIANT_CACHE_SIZE", 3)
    monkeypatch.setattr(volume, "_other_variant", type(volume._other_variant)())
    rng = np.random.default_rng(5)
    vol = _normalise(ndimage.gaussian_filter(rng.random((20, 24, 18)), 2.0))
    taus = np.arange(0, 1, 0.01)
    for first in (True, False):
        volume._other_variant.clear()
        sweeps.clear()
        asked = boxes_from_scorevolume(vol, taus, multi_component=first, method="union_find")
        other = boxes_from_scorevolume(vol, taus, multi_component=not first, method="union_find")
        assert len(sweeps) == 1
        for multi, got in ((first, asked), (not first, other)):
            label = boxes_from_scorevolume(vol, taus, multi_component=multi, method="label")
            assert all(np.array_equal(a, b) for a, b in zip(got, label, strict=True))
    sweeps.clear()
    boxes_from_scorevolume(vol, taus[::2], multi_component=False, method="union_find")  # other levels
    boxes_from_scorevolume(vol[::-1].copy(), taus, multi_component=False, method="union_find")
    assert len(sweeps) == 2
    for k in range(5):
        boxes_from_scorevolume(vol * (0.5 + 0.1 * k), taus, method="union_find")
    assert len(volume._other_variant) == 3


@pytest.mark.parametrize("method", ["label", "union_find"])
def test_empty_mask_gives_zero_box_and_box_end_is_clipped(method):
    faint = np.full((4, 5, 6), 0.003)  # floor(255 * 0.003) = 0: no voxel above any level
    assert boxes_from_scorevolume(faint, [0.0, 0.5], method=method)[0].tolist() == [[0] * 6]
    vol = np.zeros((4, 5, 6))
    vol[1:4, 2:5, 0:2] = 1.0  # touches the far faces of axes 0 and 1
    # start, then one past the last voxel clipped to size - 1 (the reference's x + w clipped to W - 1)
    assert boxes_from_scorevolume(vol, [0.5], method=method)[0].tolist() == [[1, 2, 0, 3, 4, 2]]


def test_shared_arrays_and_torch_input():
    rng = np.random.default_rng(1)
    vol = _normalise(ndimage.gaussian_filter(rng.random((6, 8, 8)), 1.0))
    taus = np.arange(0, 1, 0.001)
    boxes = boxes_from_scorevolume(torch.from_numpy(vol).float(), taus)
    assert len(boxes) == 1000 and len({id(b) for b in boxes}) <= 256
    assert not boxes[0].flags.writeable
    ref = boxes_from_scorevolume(vol.astype(np.float32), taus)
    assert all(np.array_equal(a, b) for a, b in zip(boxes, ref, strict=True))
    distinct, inverse = distinct_boxes(vol, taus)
    assert all(np.array_equal(distinct[j], boxes[t]) for t, j in enumerate(inverse.tolist()))


def test_distinct_boxes_dispatches_2d_to_contours():
    smap = _bumps_2d()
    distinct, inverse = distinct_boxes(smap, COARSE, multi_region=True)
    ref = boxes_from_scoremap(smap, COARSE, multi_contour=True)
    assert all(np.array_equal(distinct[j], ref[t]) for t, j in enumerate(inverse.tolist()))
    with pytest.raises(ValueError, match="score must be"):
        distinct_boxes(np.zeros((2, 2, 2, 2)), COARSE)


@pytest.mark.parametrize(
    "volume, kwargs, match",
    [
        (np.zeros((4, 4)), {}, "volume must have 3 dimensions"),
        (np.full((2, 2, 2), np.nan), {}, "NaN"),
        (np.full((2, 2, 2), 1.5), {}, r"\[0, 1\]"),
        (np.zeros((2, 2, 2)), {"connectivity": 8}, "connectivity"),
        (np.zeros((2, 2, 2)), {"method": "fast"}, "method"),
    ],
)
def test_volume_bad_input(volume, kwargs, match):
    with pytest.raises(ValueError, match=match):
        boxes_from_scorevolume(volume, COARSE, **kwargs)
    with pytest.raises(ValueError, match="thresholds"):
        boxes_from_scorevolume(np.zeros((2, 2, 2)), [1.0])


# ---------------------------------------------------------------- mask overlap (Dice / IoU)


def _naive_overlap(scores, masks, ignores, taus):
    """Per-threshold oracle with plain boolean algebra."""
    tp = np.zeros(len(taus))
    fp = np.zeros(len(taus))
    fn = np.zeros(len(taus))
    per_image = []
    for s, m, ig in zip(scores, masks, ignores, strict=True):
        keep = ~ig | m
        rows = []
        for t, tau in enumerate(taus):
            pred = s >= tau
            a, b, c = (pred & m & keep).sum(), (pred & ~m & keep).sum(), (~pred & m & keep).sum()
            tp[t] += a
            fp[t] += b
            fn[t] += c
            rows.append((a, b, c))
        per_image.append(rows)
    return tp, fp, fn, np.array(per_image, dtype=np.float64)


@pytest.mark.parametrize("spatial", [(12, 10), (5, 7, 6)])
def test_mask_overlap_matches_oracle(spatial):
    rng = np.random.default_rng(3)
    n = 4
    scores = rng.random((n, *spatial)).astype(np.float32)
    scores[0] = _normalise(scores[0])
    masks = rng.random((n, *spatial)) < 0.3
    ignores = rng.random((n, *spatial)) < 0.2
    taus = np.arange(0, 1, 0.05)
    metric = MaskOverlapMetric(thresholds=taus)
    # one batch as a batch-first torch tensor, one as a list of channel-first NumPy arrays
    metric(
        torch.from_numpy(scores[:2, None]),
        torch.from_numpy(masks[:2, None]),
        ignore=torch.from_numpy(ignores[:2, None]),
    )
    metric([s[None] for s in scores[2:]], [m[None] for m in masks[2:]], ignore=[i[None] for i in ignores[2:]])
    out = metric.aggregate()

    tp, fp, fn, per_image = _naive_overlap(scores.astype(np.float64), masks, ignores, taus)
    dice = 2 * tp / (2 * tp + fp + fn)
    np.testing.assert_allclose(out["dice_curve"].numpy(), dice, rtol=1e-12)
    np.testing.assert_allclose(out["iou_curve"].numpy(), tp / (tp + fp + fn), rtol=1e-12)
    best = int(np.argmax(dice))
    assert out["threshold"] == pytest.approx(taus[best])
    assert out["dice"] == pytest.approx(dice.max())
    assert out["iou"] == pytest.approx(out["dice"] / (2 - out["dice"]))
    a, b, c = per_image[:, best].T
    assert out["mean_dice"] == pytest.approx(np.mean(2 * a / (2 * a + b + c)))
    assert out["num_images"] == n


def test_mask_overlap_perfect_map_and_reset():
    cam = np.zeros((1, 1, 16, 16), dtype=np.float32)
    cam[..., 4:9, 3:12] = 0.8
    cam[..., 5:7, 5:7] = 1.0
    gt = cam > 0.5
    metric = MaskOverlapMetric()
    metric(cam, gt)
    out = metric.aggregate()
    assert out["dice"] == 1.0 and out["iou"] == 1.0
    # s >= tau: the first tau keeping exactly the 0.8 plateau is the first one above 0
    assert out["threshold"] == pytest.approx(0.01)
    metric.reset()
    metric(cam, ~gt)
    assert metric.aggregate()["dice"] < 1.0


def test_mask_overlap_ignored_foreground_still_counts():
    cam = np.array([[[[1.0, 1.0, 0.0, 0.0]]]])
    gt = np.array([[[[True, False, False, False]]]])
    ignore = np.array([[[[True, True, False, False]]]])
    metric = MaskOverlapMetric(thresholds=[0.5])
    counts = metric(cam, gt, ignore=ignore)
    # pixel 0: ignored but foreground -> TP; pixel 1: ignored background -> not an FP
    assert counts[0, :, 0].tolist() == [1, 0, 0]


def test_mask_overlap_bad_input():
    metric = MaskOverlapMetric(spatial_dims=3)
    with pytest.raises(ValueError, match="spatial dims"):
        metric(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 4)))
    metric = MaskOverlapMetric()
    with pytest.raises(ValueError, match="y must match"):
        metric(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 5)))
    with pytest.raises(ValueError, match="finite"):
        metric(np.full((1, 1, 4, 4), np.nan), np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="same number of images"):
        metric(np.zeros((2, 1, 4, 4)), np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="strictly increasing"):
        MaskOverlapMetric(thresholds=[0.5, 0.2])


def test_mask_overlap_metatensor_input_and_empty_aggregate():
    from monai.data import MetaTensor

    rng = np.random.default_rng(4)
    cams = rng.random((2, 1, 6, 7, 5))
    masks = cams > 0.7
    plain = MaskOverlapMetric(thresholds=np.arange(0, 1, 0.1))
    plain(cams, masks)
    meta = MaskOverlapMetric(thresholds=np.arange(0, 1, 0.1))
    meta(MetaTensor(torch.from_numpy(cams), affine=torch.eye(4) * 2), MetaTensor(torch.from_numpy(masks)))
    torch.testing.assert_close(meta.aggregate()["dice_curve"], plain.aggregate()["dice_curve"])
    assert plain.aggregate()["threshold"] == pytest.approx(0.7)
    plain.reset()
    with pytest.raises(RuntimeError, match="before any image"):
        plain.aggregate()
