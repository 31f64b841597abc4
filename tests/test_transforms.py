"""Tests of monai_wsol.transforms.

CAM -> normalised map -> mask -> regions -> voxel / world boxes (2D and 3D).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes, convert_mask_to_box
from monai.data import MetaTensor
from monai.transforms.utils import get_largest_connected_component_mask

from monai_wsol.transforms import (
    BinarizeCAM,
    BinarizeCAMd,
    CAMToLocation,
    CAMToLocationd,
    KeepRegions,
    KeepRegionsd,
    MaskToBoxes,
    MaskToBoxesd,
    NormalizeCAM,
    NormalizeCAMd,
    UpsampleCAM,
    UpsampleCAMd,
    binarize_cam,
    boxes_to_world,
    keep_regions,
    label_regions,
    locate_regions,
    mask_to_boxes,
    normalize_cam,
    upsample_cam,
)


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _two_blobs_2d() -> np.ndarray:
    """(1, 10, 12) map with two blocks.

    A 3x4 block of 1.0 at rows 1..3, cols 2..5; a 2x2 block of 0.6 at rows 6..7, cols 8..9.
    """
    cam = np.zeros((1, 10, 12), dtype=np.float32)
    cam[0, 1:4, 2:6] = 1.0
    cam[0, 6:8, 8:10] = 0.6
    return cam


def _two_blobs_3d() -> np.ndarray:
    """(1, 8, 9, 10) volume with two blobs.

    A 2x3x4 block of 1.0 at (1..2, 2..4, 3..6) and a single voxel of 0.8 at (6, 7, 8).
    """
    cam = np.zeros((1, 8, 9, 10), dtype=np.float32)
    cam[0, 1:3, 2:5, 3:7] = 1.0
    cam[0, 6, 7, 8] = 0.8
    return cam


# ------------------------------------------------------------------------------------------------------------
# normalise / binarise
# ------------------------------------------------------------------------------------------------------------
def test_normalize_per_channel_min_max_and_constant_map():
    cam = np.stack([np.arange(12, dtype=np.float32).reshape(3, 4) * 2 - 5, np.full((3, 4), 7.0, np.float32)])
    out = normalize_cam(cam)
    np.testing.assert_allclose(out[0], np.arange(12).reshape(3, 4) / 11.0, rtol=1e-6)
    assert np.all(out[1] == 0)  # constant -> zeros, not NaN
    assert out.dtype == np.float32 and isinstance(out, np.ndarray)


def test_normalize_batched_spatial_dims_each_map_independent():
    rng = np.random.default_rng(0)
    cam = rng.normal(size=(2, 3, 4, 5, 6)).astype(np.float64)  # (B, K, D, H, W)
    out = normalize_cam(torch.from_numpy(cam), spatial_dims=3)
    assert out.dtype == torch.float64
    for b in range(2):
        for k in range(3):
            ref = (cam[b, k] - cam[b, k].min()) / (cam[b, k].max() - cam[b, k].min())
            np.testing.assert_allclose(out[b, k].numpy(), ref, rtol=1e-12)


def test_normalize_integer_input_becomes_float32():
    cam = np.array([[[-1024, 0], [1000, 3071]]], dtype=np.int16)  # HU-like signed ints
    out = normalize_cam(cam)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[0, 1024 / 4095], [2024 / 4095, 1]], rtol=1e-6)


def test_flipped_and_big_endian_numpy_inputs():
    cam = _two_blobs_2d()
    flipped = cam[:, ::-1]  # negative strides, as after np.flip
    big = cam.astype(">f4")  # non-native byte order, as read from some NIfTI files
    np.testing.assert_allclose(normalize_cam(flipped), cam[:, ::-1])
    np.testing.assert_array_equal(mask_to_boxes(flipped[0] > 0), [[6, 2, 9, 6]])
    res = CAMToLocation(0.5, spatial_size=(20, 24))(big)
    np.testing.assert_array_equal(res["boxes"], CAMToLocation(0.5, spatial_size=(20, 24))(cam)["boxes"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_normalize_rejects_non_finite(bad):
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, 1, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalize_cam(cam)
    with pytest.raises(ValueError, match="NaN or infinite"):
        NormalizeCAM()(torch.from_numpy(cam))
    with pytest.raises(ValueError, match="NaN or infinite"):
        BinarizeCAM(0.5)(cam)


@pytest.mark.parametrize("shape", [(4, 4), (1, 1, 2, 4, 4), (4,)])
def test_wrong_rank_raises(shape):
    x = np.zeros(shape, np.float32)
    for t in (NormalizeCAM(), BinarizeCAM(0.5), KeepRegions(), MaskToBoxes(), CAMToLocation(0.5)):
        with pytest.raises(ValueError, match="channel-first"):
            t(x)
    if len(shape) != 2:
        with pytest.raises(ValueError, match="spatial-only"):
            mask_to_boxes(x)
    with pytest.raises(ValueError, match="at least one channel"):
        MaskToBoxes()(np.zeros((0, 4, 4), bool))


def test_binarize_threshold_is_inclusive_and_tau_checked():
    cam = torch.tensor([[[0.0, 0.25, 0.5], [0.75, 1.0, 0.4999]]])
    mask = binarize_cam(cam, 0.5)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[[False, False, True], [True, True, False]]]
    assert binarize_cam(cam, 0.0).all()
    assert binarize_cam(cam, 1.0).sum() == 1
    for tau in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="tau"):
            BinarizeCAM(tau)
        with pytest.raises(ValueError, match="tau"):
            binarize_cam(cam, tau)


# ------------------------------------------------------------------------------------------------------------
# connectivity / regions
# ------------------------------------------------------------------------------------------------------------
def test_connectivity_2d_diagonal():
    mask = np.eye(4, dtype=bool)  # 4 pixels touching only by corners
    assert label_regions(mask, 4)[1] == 4
    assert label_regions(mask, 8)[1] == 1
    assert label_regions(mask)[1] == 1  # default = full connectivity
    assert mask_to_boxes(mask, 4, mode="all").shape == (4, 4)
    np.testing.assert_array_equal(mask_to_boxes(mask, 8), [[0, 0, 4, 4]])
    with pytest.raises(ValueError, match="connectivity"):
        label_regions(mask, 6)


def test_connectivity_3d_corner_and_edge_neighbours():
    corner = np.zeros((3, 3, 3), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = corner[2, 2, 2] = True  # touch by corners only
    assert [label_regions(corner, c)[1] for c in (6, 18, 26)] == [3, 3, 1]
    edge = np.zeros((3, 3, 3), bool)
    edge[0, 0, 0] = edge[0, 1, 1] = True  # touch by an edge
    assert [label_regions(edge, c)[1] for c in (6, 18, 26)] == [2, 1, 1]
    labels, n = label_regions(torch.from_numpy(corner), 6)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int32 and n == 3
    assert set(labels[torch.from_numpy(corner)].tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="connectivity"):
        label_regions(corner, 8)


def test_keep_regions_largest_all_min_size():
    mask = _two_blobs_2d()[0] > 0  # 12-pixel and 4-pixel regions
    largest = keep_regions(mask)
    np.testing.assert_array_equal(largest, _two_blobs_2d()[0] == 1.0)
    np.testing.assert_array_equal(keep_regions(mask, mode="all"), mask)
    np.testing.assert_array_equal(keep_regions(mask, mode="all", min_size=5), largest)
    assert not keep_regions(mask, min_size=13).any()  # min_size applies before choosing the largest
    tie = np.zeros((5, 5), bool)
    tie[3:5, 0:2] = tie[0:2, 3:5] = True  # equal sizes: the first in raster order (rows 0..1) wins
    np.testing.assert_array_equal(mask_to_boxes(tie), [[0, 3, 2, 5]])
    np.testing.assert_array_equal(mask_to_boxes(tie, mode="all"), [[0, 3, 2, 5], [3, 0, 5, 2]])
    with pytest.raises(ValueError, match="mode"):
        keep_regions(mask, mode="biggest")
    with pytest.raises(ValueError, match="min_size"):
        keep_regions(mask, min_size=-1)


def test_keep_largest_matches_monai():
    rng = np.random.default_rng(3)
    compared = 0
    for spatial, conn, hops in (((20, 20), 4, 1), ((20, 20), 8, 2), ((8, 9, 10), 6, 1), ((8, 9, 10), 26, 3)):
        for _ in range(3):
            mask = rng.random(spatial) > 0.75
            sizes = np.sort(np.bincount(label_regions(mask, conn)[0].ravel())[1:])
            if len(sizes) < 2 or sizes[-1] == sizes[-2]:  # a tie would make the choice arbitrary
                continue
            theirs = get_largest_connected_component_mask(mask.copy(), connectivity=hops)
            np.testing.assert_array_equal(keep_regions(mask, conn), theirs)
            compared += 1
    assert compared >= 6


def test_keep_regions_transform_per_channel_keeps_meta_and_input():
    m = np.zeros((2, 6, 6), bool)
    m[0, 0:2, 0:2] = True
    m[0, 4:6, 3:6] = True  # 6 px: largest of channel 0
    m[1, 0:3, 0:3] = True  # 9 px: largest of channel 1
    m[1, 5, 5] = True
    aff = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0], dtype=torch.float64))
    mt = MetaTensor(torch.from_numpy(m.copy()), affine=aff, meta={"filename_or_obj": "x.nii.gz"})
    out = KeepRegions()(mt)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.nii.gz"
    torch.testing.assert_close(out.affine, aff)
    assert out[0].sum() == 6 and out[0, 4:6, 3:6].all()
    assert out[1].sum() == 9 and out[1, 0:3, 0:3].all()
    np.testing.assert_array_equal(mt.numpy(), m)  # input untouched
    out_d = KeepRegionsd("m", mode="all", min_size=5)({"m": m})["m"]
    assert out_d[0].sum() == 6 and out_d[1].sum() == 9


# ------------------------------------------------------------------------------------------------------------
# boxes (voxel)
# ------------------------------------------------------------------------------------------------------------
def test_boxes_2d_known_and_monai_max_corner():
    mask = _two_blobs_2d()[0] > 0
    np.testing.assert_array_equal(mask_to_boxes(mask), [[1, 2, 4, 6]])  # rows 1..3, cols 2..5, max exclusive
    np.testing.assert_array_equal(mask_to_boxes(mask, mode="all"), [[1, 2, 4, 6], [6, 8, 8, 10]])
    np.testing.assert_array_equal(mask_to_boxes(mask, mode="all", min_size=5), [[1, 2, 4, 6]])
    # MONAI's own mask -> box conversion agrees on the max corner convention
    monai_box, _ = convert_mask_to_box((_two_blobs_2d() == 1.0).astype(np.int16), bg_label=0)
    np.testing.assert_array_equal(mask_to_boxes(mask), monai_box)
    single = np.zeros((5, 5), bool)
    single[2, 3] = True
    np.testing.assert_array_equal(mask_to_boxes(single), [[2, 3, 3, 4]])


def test_boxes_3d_known():
    mask = _two_blobs_3d()[0] > 0
    np.testing.assert_array_equal(mask_to_boxes(mask), [[1, 2, 3, 3, 5, 7]])
    np.testing.assert_array_equal(mask_to_boxes(mask, mode="all"), [[1, 2, 3, 3, 5, 7], [6, 7, 8, 7, 8, 9]])
    monai_box, _ = convert_mask_to_box(
        (mask & (np.arange(8) < 4)[:, None, None])[None].astype(np.int16), bg_label=0
    )
    np.testing.assert_array_equal(mask_to_boxes(mask), monai_box)


@pytest.mark.parametrize("spatial", [(7, 8), (4, 5, 6)])
def test_empty_mask_gives_zero_boxes(spatial):
    d = len(spatial)
    boxes = mask_to_boxes(np.zeros(spatial, bool), mode="all")
    assert boxes.shape == (0, 2 * d) and boxes.dtype == np.float32
    b, lab, s = MaskToBoxes(world=True)(
        torch.zeros((2, *spatial)), cam=torch.rand(2, *spatial), affine=np.eye(d + 1)
    )
    assert b.shape == (0, 2 * d) and lab.shape == (0,) and s.shape == (0,)
    assert boxes_to_world(np.zeros((0, 2 * d)), np.eye(d + 1)).shape == (0, 2 * d)


def test_mask_to_boxes_labels_scores():
    cam = np.zeros((2, 6, 6), np.float32)
    cam[0, 0:2, 0:2] = [[0.6, 0.8], [0.7, 0.9]]
    cam[1, 3:6, 3:5] = 0.5
    cam[1, 5, 4] = 1.0
    mask = cam >= 0.5
    boxes, labels, scores = MaskToBoxes(reduction="mean")(mask, cam=cam)
    np.testing.assert_array_equal(boxes, [[0, 0, 2, 2], [3, 3, 6, 5]])
    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_allclose(scores, [0.75, 3.5 / 6], rtol=1e-6)
    _, _, smax = MaskToBoxes(reduction="max")(mask, cam=cam)
    np.testing.assert_allclose(smax, [0.9, 1.0])
    assert MaskToBoxes()(mask)[2] is None
    with pytest.raises(ValueError, match="cam shape"):
        MaskToBoxes()(mask, cam=cam[:1])
    with pytest.raises(ValueError, match="reduction"):
        MaskToBoxes(reduction="median")


# ------------------------------------------------------------------------------------------------------------
# world coordinates
# ------------------------------------------------------------------------------------------------------------
def test_world_boxes_3d_scaled_translated_flipped_by_hand():
    # x flipped with 2 mm spacing, y 3 mm, z 4 mm, origin (10, 20, 30)
    aff = np.array([[-2.0, 0, 0, 10], [0, 3, 0, 20], [0, 0, 4, 30], [0, 0, 0, 1]])
    box = np.array([[1, 2, 3, 4, 5, 6]], np.float32)  # voxels x 1..3, y 2..4, z 3..5
    # voxel edges: x in [0.5, 3.5] -> 10 - 2 * [3.5, 0.5] = [3, 9]; y [1.5, 4.5] -> [24.5, 33.5]; z [2.5, 5.5]
    # -> [40, 52]
    np.testing.assert_allclose(boxes_to_world(box, aff), [[3, 24.5, 40, 9, 33.5, 52]])
    # voxel_edges=False maps the box numbers as they are, exactly as MONAI's AffineBoxToWorldCoordinated
    np.testing.assert_allclose(boxes_to_world(box, aff, voxel_edges=False), [[2, 26, 42, 8, 35, 54]])
    np.testing.assert_allclose(
        boxes_to_world(box, aff, voxel_edges=False), apply_affine_to_boxes(torch.from_numpy(box), aff).numpy()
    )
    out_t = boxes_to_world(torch.from_numpy(box), torch.from_numpy(aff))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    np.testing.assert_allclose(out_t.numpy(), [[3, 24.5, 40, 9, 33.5, 52]])


def test_world_boxes_2d_rotation_90_and_45_degrees():
    # 90 degrees: world_x = 5 - j, world_y = i - 2
    rot90 = np.array([[0.0, -1, 5], [1, 0, -2], [0, 0, 1]])
    box = np.array([[1, 2, 4, 6]])  # i in 1..3 -> edges [0.5, 3.5]; j in 2..5 -> edges [1.5, 5.5]
    np.testing.assert_allclose(boxes_to_world(box, rot90), [[-0.5, -1.5, 3.5, 1.5]])
    # 45 degrees: the axis-aligned world box needs all four corners (two opposite corners would collapse x)
    c = s = math.sqrt(0.5)
    rot45 = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    r2 = math.sqrt(2)
    np.testing.assert_allclose(
        boxes_to_world(np.array([[0, 0, 2, 2]]), rot45, False), [[-r2, 0, r2, 2 * r2]], atol=1e-12
    )


def test_world_boxes_2d_from_4x4_affine_and_bad_affines():
    aff4 = np.diag([2.0, 3.0, 5.0, 1.0])
    aff4[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(boxes_to_world(np.array([[0, 0, 1, 2]]), aff4), [[0, 0.5, 2, 6.5]])
    with pytest.raises(ValueError, match="square"):
        boxes_to_world(np.array([[0, 0, 0, 1, 1, 1]]), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        boxes_to_world(np.array([[0, 0, 1, 1]]), np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(N, 4\) or \(N, 6\)"):
        boxes_to_world(np.zeros((2, 5)), np.eye(3))


def test_mask_to_boxes_world_uses_metatensor_affine():
    aff = torch.tensor([[0, 0, 1.5, -5], [0, -0.5, 0, 7], [2, 0, 0, 1], [0, 0, 0, 1]], dtype=torch.float64)
    mask = MetaTensor(torch.from_numpy(_two_blobs_3d() > 0), affine=aff)
    world, labels, _ = MaskToBoxes(world=True)(mask)
    np.testing.assert_allclose(_np(world), boxes_to_world(np.array([[1, 2, 3, 3, 5, 7]]), aff.numpy()))
    # by hand: world_x = 1.5 k - 5, k edges [2.5, 6.5]; world_y = 7 - 0.5 j, j [1.5, 4.5]; world_z = 2 i + 1,
    # i [0.5, 2.5]
    np.testing.assert_allclose(_np(world), [[-1.25, 4.75, 2, 4.75, 6.25, 6]])
    assert not isinstance(world, MetaTensor) and labels.tolist() == [0]
    with pytest.raises(ValueError, match="needs an affine"):
        MaskToBoxes(world=True)(_two_blobs_3d() > 0)


# ------------------------------------------------------------------------------------------------------------
# upsampling and the composed transform
# ------------------------------------------------------------------------------------------------------------
def test_upsample_to_size_and_to_reference():
    cam = np.zeros((2, 4, 4), np.float32)
    cam[0, 1:3, 1:3] = 1
    cam[1] = 0.25
    up = upsample_cam(cam, (8, 8))
    assert isinstance(up, np.ndarray) and up.shape == (2, 8, 8)
    np.testing.assert_allclose(up[1], 0.25)  # linear interpolation of a constant is the constant
    np.testing.assert_allclose(up[0], up[0][::-1, ::-1])  # symmetric blob stays symmetric
    assert up[0, 3:5, 3:5].min() == pytest.approx(1.0) and up[0, 0, 0] == 0
    ref_aff = torch.tensor(
        [[-0.8, 0, 0, 3], [0, 0.8, 0, -4], [0, 0, 2.5, 9], [0, 0, 0, 1]], dtype=torch.float64
    )
    ref = MetaTensor(torch.zeros(1, 8, 12), affine=ref_aff, meta={"filename_or_obj": "img.nii.gz"})
    out = UpsampleCAM()(torch.from_numpy(cam), ref=ref)
    assert isinstance(out, MetaTensor) and out.shape == (2, 8, 12)
    torch.testing.assert_close(out.affine, ref_aff)
    assert out.meta["filename_or_obj"] == "img.nii.gz"
    with pytest.raises(ValueError, match="spatial_size"):
        UpsampleCAM()(cam)
    with pytest.raises(ValueError, match="spatial_size"):
        upsample_cam(cam, (8, 8, 8))


def test_upsample_metatensor_without_ref_updates_affine():
    cam = MetaTensor(torch.rand(1, 4, 4, 4), affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0])))
    out = UpsampleCAM((8, 8, 8))(cam)
    # MONAI's Resize keeps the field of view: spacing halves, the first voxel centre moves by -1 mm
    expected = torch.tensor(
        [[2.0, 0, 0, -1], [0, 2, 0, -1], [0, 0, 2, -1], [0, 0, 0, 1]], dtype=torch.float64
    )
    torch.testing.assert_close(out.affine, expected)


def test_cam_to_location_2d_low_res_to_reference():
    cam = torch.zeros(1, 7, 7)
    cam[0, 2:5, 1:4] = 5.0  # un-normalised CAM at feature resolution
    ref_aff = torch.tensor(
        [[0, -0.5, 0, 10], [0.5, 0, 0, -10], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64
    )
    ref = MetaTensor(torch.zeros(1, 28, 28), affine=ref_aff)
    out = CAMToLocation(tau=0.5)(cam, ref=ref)
    assert (
        out["cam"].shape == (1, 28, 28) and float(out["cam"].max()) == 1.0 and float(out["cam"].min()) == 0.0
    )
    assert isinstance(out["mask"], MetaTensor) and out["mask"].dtype == torch.bool
    torch.testing.assert_close(out["mask"].affine, ref_aff)
    # the block spans feature rows 2..4 = image rows 8..19 and cols 1..3 = 4..15: bilinear
    # (align_corners=False) gives 0.625 on the outermost rows/cols of that square (kept at tau 0.5), 0.375
    # just outside, and 0.625**2 = 0.39 at its four corner pixels (dropped)
    np.testing.assert_array_equal(_np(out["boxes"]), [[8, 4, 20, 16]])
    expected = np.pad(np.ones((12, 12), bool), ((8, 8), (4, 12)))
    expected[[8, 8, 19, 19], [4, 15, 4, 15]] = False
    np.testing.assert_array_equal(_np(out["mask"][0]), expected)
    assert out["labels"].tolist() == [0] and out["scores"].tolist() == [1.0]
    np.testing.assert_allclose(
        _np(out["boxes_world"]), boxes_to_world(np.array([[8, 4, 20, 16]]), ref_aff.numpy())
    )
    # normalise -> upsample -> normalise equals the WSOL protocol's upsample -> normalise
    np.testing.assert_allclose(_np(out["cam"]), _np(normalize_cam(upsample_cam(cam, (28, 28)))), atol=1e-6)


def test_cam_to_location_3d_and_numpy_torch_equal():
    cam = _two_blobs_3d() * 3 - 1
    for mode, n in (("largest", 1), ("all", 2)):
        # x2 trilinear spreads the single 0.8 voxel to 0.8 * 0.75**3 = 0.34 at most, so tau 0.3 keeps it
        res_np = CAMToLocation(0.3, mode=mode, spatial_size=(16, 18, 20))(cam)
        res_t = CAMToLocation(0.3, mode=mode, spatial_size=(16, 18, 20))(torch.from_numpy(cam))
        assert res_np["boxes"].shape == (n, 6) and res_np["boxes_world"] is None
        for key in ("cam", "mask", "boxes", "labels", "scores"):
            np.testing.assert_allclose(_np(res_np[key]), _np(res_t[key]), atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(res_np["boxes"], [[2, 4, 6, 6, 10, 14], [12, 14, 16, 14, 16, 18]])
    same = CAMToLocation(0.9, mode="all")(cam)
    # without upsampling the lone voxel normalises to 0.8 < 0.9
    np.testing.assert_array_equal(same["boxes"], [[1, 2, 3, 3, 5, 7]])


def test_numpy_torch_equal_and_inputs_untouched():
    rng = np.random.default_rng(1)
    cam = rng.random((2, 9, 11)).astype(np.float32)
    keep = cam.copy()
    cam_t = torch.from_numpy(cam.copy())
    mask = cam > 0.6
    for t in (NormalizeCAM(), BinarizeCAM(0.6), UpsampleCAM((13, 17))):
        np.testing.assert_allclose(_np(t(cam)), _np(t(cam_t)), atol=1e-6)
    for t in (KeepRegions(4, "all", 3), KeepRegions(8)):
        np.testing.assert_array_equal(t(mask), _np(t(torch.from_numpy(mask))))
    b_np, l_np, s_np = MaskToBoxes(4, "all", 2)(mask, cam=cam)
    b_t, l_t, s_t = MaskToBoxes(4, "all", 2)(torch.from_numpy(mask), cam=cam_t)
    assert isinstance(b_np, np.ndarray) and isinstance(b_t, torch.Tensor)
    np.testing.assert_array_equal(b_np, _np(b_t))
    np.testing.assert_array_equal(l_np, _np(l_t))
    np.testing.assert_allclose(s_np, _np(s_t))
    CAMToLocation(0.6, mode="all")(cam_t, ref=MetaTensor(torch.zeros(1, 18, 22)))
    np.testing.assert_array_equal(cam, keep)
    np.testing.assert_array_equal(cam_t.numpy(), keep)
    np.testing.assert_array_equal(mask, keep > 0.6)


def test_metatensor_affine_through_pipeline():
    aff = torch.tensor([[1.5, 0, 0, -3], [0, -1.5, 0, 4], [0, 0, 2, 5], [0, 0, 0, 1]], dtype=torch.float64)
    cam = MetaTensor(torch.from_numpy(_two_blobs_2d()), affine=aff, meta={"filename_or_obj": "a.nii.gz"})
    for t in (NormalizeCAM(), BinarizeCAM(0.5)):
        out = t(cam)
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.nii.gz"
        torch.testing.assert_close(out.affine, aff)
    res = CAMToLocation(0.5)(cam)
    torch.testing.assert_close(res["mask"].affine, aff)
    np.testing.assert_allclose(_np(res["boxes_world"]), boxes_to_world(np.array([[1, 2, 4, 6]]), aff.numpy()))
    explicit = np.eye(4)
    np.testing.assert_allclose(
        _np(CAMToLocation(0.5)(cam, affine=explicit)["boxes_world"]), [[0.5, 1.5, 3.5, 5.5]]
    )


# ------------------------------------------------------------------------------------------------------------
# dictionary transforms
# ------------------------------------------------------------------------------------------------------------
def test_dictionary_pipeline_matches_array_and_writes_keys():
    aff = torch.tensor([[0.9, 0, 0, 1], [0, 0.9, 0, 2], [0, 0, 3, 4], [0, 0, 0, 1]], dtype=torch.float64)
    image = MetaTensor(torch.zeros(1, 20, 24), affine=aff)
    cam = torch.from_numpy(_two_blobs_2d())
    data = {"image": image, "cam": cam}
    step = NormalizeCAMd("cam")(data)
    step = UpsampleCAMd("cam", ref_key="image")(step)
    step = BinarizeCAMd("cam", tau=0.5, mask_keys="mask")(step)
    step = KeepRegionsd("mask", mode="all")(step)
    step = MaskToBoxesd("mask", cam_key="cam", mode="all")(step)
    assert set(step) >= {"pred_boxes", "pred_labels", "pred_scores", "pred_boxes_world", "mask", "cam"}
    assert step["cam"] is not cam and data["cam"] is cam  # the input dict is not modified
    one = CAMToLocationd("cam", tau=0.5, ref_key="image", mode="all", cam_out_key="cam_up")(data)
    np.testing.assert_array_equal(_np(one["pred_boxes"]), _np(step["pred_boxes"]))
    np.testing.assert_allclose(_np(one["pred_boxes_world"]), _np(step["pred_boxes_world"]))
    np.testing.assert_allclose(_np(one["pred_scores"]), _np(step["pred_scores"]))
    np.testing.assert_array_equal(_np(one["pred_mask"]), _np(step["mask"]))
    torch.testing.assert_close(one["pred_mask"].affine, aff)
    assert one["cam_up"].shape == (1, 20, 24) and one["cam"] is cam
    np.testing.assert_array_equal(_np(one["pred_boxes"]), [[2, 4, 8, 12], [13, 17, 15, 19]])


def test_dictionary_affine_key_and_errors():
    mask = _two_blobs_3d() > 0
    meta = {"affine": np.diag([2.0, 2.0, 2.0, 1.0])}
    out = MaskToBoxesd("m", affine_key="m_meta_dict")({"m": mask, "m_meta_dict": meta})
    np.testing.assert_allclose(out["pred_boxes_world"], [[1, 3, 5, 5, 9, 13]])
    assert "pred_scores" not in out
    with pytest.raises(ValueError, match="needs an affine"):
        MaskToBoxesd("m")({"m": mask})
    assert "pred_boxes_world" not in MaskToBoxesd("m", world_box_key=None)({"m": mask})
    with pytest.raises(KeyError, match="affine_key"):
        MaskToBoxesd("m", affine_key="nope")({"m": mask})
    with pytest.raises(ValueError, match="needs an affine"):
        CAMToLocationd("c", tau=0.5)({"c": mask.astype(np.float32)})
    with pytest.raises(ValueError, match="one output key per key"):
        MaskToBoxesd(["a", "b"], box_key="boxes")
    with pytest.raises(KeyError, match="ref_key"):
        UpsampleCAMd("c", ref_key="image")({"c": mask.astype(np.float32)})
    assert MaskToBoxesd("absent", allow_missing_keys=True)({"m": mask}) == {"m": mask}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip():
    cam = torch.from_numpy(_two_blobs_3d()).cuda()
    res = CAMToLocation(0.5, mode="all")(cam, affine=np.eye(4))
    assert res["mask"].device == cam.device and res["boxes"].device == cam.device
    kept, boxes, _ = locate_regions(res["mask"][0])
    assert kept.device == cam.device
    np.testing.assert_array_equal(boxes.cpu().numpy(), [[1, 2, 3, 3, 5, 7]])
