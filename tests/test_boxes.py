"""``monai_wsol.boxes``: the box value and its convention, the one converter, the checks at the metrics."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from monai_wsol.boxes import BOX_CONVENTIONS, Boxes, check_box_convention
from monai_wsol.metrics import MaxBoxAccV2Metric, as_gt_boxes, box_iou_inclusive, boxes_from_scoremap
from monai_wsol.metrics.localization import LocalizationAccuracyMetric
from monai_wsol.metrics.volume import boxes_from_scorevolume
from monai_wsol.transforms.functional import mask_to_boxes


def _random_standard(rng: np.random.Generator, n: int, spatial_dims: int) -> np.ndarray:
    lo = rng.integers(0, 50, size=(n, spatial_dims))
    return np.concatenate([lo, lo + rng.integers(0, 30, size=(n, spatial_dims))], axis=1)


def test_conversion_values_2d_and_3d():
    # 2D: a region on rows 1..3 and columns 2..5 is [1, 2, 4, 6) in StandardMode; the protocol puts x (the
    # column, the last axis) first and keeps the ends (start + extent, the reference's x + w)
    assert Boxes.standard([[1, 2, 4, 6]], 2).to_protocol().coords.tolist() == [[2, 1, 6, 4]]
    assert Boxes.protocol([[2, 1, 6, 4]], 2).to_standard().coords.tolist() == [[1, 2, 4, 6]]
    # 3D: both conventions follow the array axes, so the numbers are the same
    box3 = [[1, 2, 3, 4, 6, 8]]
    assert Boxes.standard(box3, 3).to_protocol().coords.tolist() == box3
    assert Boxes.standard(box3, 3).to_protocol().convention == "protocol"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_round_trips(spatial_dims):
    rng = np.random.default_rng(spatial_dims)
    coords = _random_standard(rng, 7, spatial_dims)
    standard = Boxes.standard(coords, spatial_dims)
    protocol = standard.to_protocol()
    assert protocol.convention == "protocol" and protocol.spatial_dims == spatial_dims
    assert protocol.to_standard() == standard
    np.testing.assert_array_equal(protocol.to_standard().coords, coords)
    # from the other side too, and through the generic to()
    given_protocol = Boxes.protocol(coords, spatial_dims)
    assert given_protocol.to_standard().to_protocol() == given_protocol
    assert standard.to("protocol") == protocol and standard.to_standard() is standard
    # float boxes (MONAI transforms give float32) convert exactly
    floats = Boxes.standard(torch.as_tensor(coords, dtype=torch.float32), spatial_dims)
    assert floats.coords.dtype == np.float64
    np.testing.assert_array_equal(floats.to_protocol().to_standard().coords, coords)


def test_mask_to_boxes_converted_is_the_metric_box_2d():
    # regions away from the border (the metric clips a box end to W - 1), elongated so the axis order matters
    mask = np.zeros((30, 40), dtype=bool)
    mask[3:20, 5:9] = True  # tall
    rr, cc = np.mgrid[:30, :40]
    mask |= ((rr - 23) / 3) ** 2 + ((cc - 25) / 11) ** 2 <= 1  # a wide ellipse
    standard = Boxes.standard(mask_to_boxes(mask, mode="all"), 2)
    protocol = standard.to_protocol().coords
    score = mask.astype(np.float64)
    # every region is a candidate (V2): the multiset of the metric's boxes is the converted GT
    (multi,) = boxes_from_scoremap(score, [0.5], multi_contour=True)
    assert sorted(map(tuple, multi.tolist())) == sorted(map(tuple, protocol.tolist()))
    # largest region (v1): mask_to_boxes' default keeps the largest region too
    (largest,) = boxes_from_scoremap(score, [0.5], multi_contour=False)
    np.testing.assert_array_equal(largest, Boxes.standard(mask_to_boxes(mask), 2).to_protocol().coords)
    # the same boxes compare with IoU 1, the wrongly read (unconverted) ones do not
    assert box_iou_inclusive(multi, standard).max(axis=1).tolist() == [1.0, 1.0]
    assert box_iou_inclusive(multi, standard.coords).max() < 0.5


def test_mask_to_boxes_converted_is_the_metric_box_3d():
    mask = np.zeros((12, 16, 20), dtype=bool)
    mask[2:10, 3:5, 4:6] = True  # long along axis 0
    mask[5:7, 9:14, 8:18] = True  # flat, long along axis 2
    standard = Boxes.standard(mask_to_boxes(mask, mode="all"), 3)
    (multi,) = boxes_from_scorevolume(mask.astype(np.float64), [0.5], multi_component=True)
    assert sorted(map(tuple, multi.tolist())) == sorted(map(tuple, standard.to_protocol().coords.tolist()))
    (largest,) = boxes_from_scorevolume(mask.astype(np.float64), [0.5], multi_component=False)
    np.testing.assert_array_equal(largest, Boxes.standard(mask_to_boxes(mask), 3).to_protocol().coords)


def test_value_is_validated_and_immutable():
    boxes = Boxes.standard([1, 2, 4, 6], 2)  # a single flat box
    assert boxes.coords.shape == (1, 4) and len(boxes) == 1 and boxes.coords.dtype == np.int64
    assert len(Boxes.standard([], 3)) == 0 and Boxes.standard([], 3).coords.shape == (0, 6)
    with pytest.raises(ValueError, match="read-only"):
        boxes.coords[0, 0] = 9
    with pytest.raises(AttributeError, match="immutable"):
        boxes.convention = "protocol"  # type: ignore[misc]
    source = np.array([[1, 2, 4, 6]])
    owned = Boxes.standard(source, 2)
    source[0, 0] = 3  # the value owns its coordinates
    assert owned.coords.tolist() == [[1, 2, 4, 6]]
    assert Boxes.standard([[1, 2, 4, 6]], 2) != Boxes.protocol([[1, 2, 4, 6]], 2)
    restored = pickle.loads(pickle.dumps(boxes))
    assert restored == boxes and not restored.coords.flags.writeable and copy.deepcopy(boxes) == boxes
    for bad, match in [
        ([[1, 2, 4]], r"\(N, 4\)"),
        (np.zeros((0, 6)), r"\(N, 4\)"),
        ([[4, 2, 1, 6]], "inverted"),
        ([[0, 0, np.nan, 2]], "finite"),
        ([["a", "b", "c", "d"]], "numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            Boxes.standard(bad, 2)
    with pytest.raises(ValueError, match="spatial_dims"):
        Boxes.standard([[0, 0, 1, 1]], 4)
    with pytest.raises(ValueError, match="convention"):
        Boxes([[0, 0, 1, 1]], "xyxy", 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="to_standard"):
        Boxes.protocol(boxes, 2)


def test_check_box_convention_names_both():
    standard = Boxes.standard([[1, 2, 4, 6]], 2)
    assert check_box_convention(standard, "standard") is standard
    with pytest.raises(ValueError) as err:
        check_box_convention(standard, "protocol")
    message = str(err.value)
    assert "'standard'" in message and "'protocol'" in message
    assert BOX_CONVENTIONS["standard"] in message and BOX_CONVENTIONS["protocol"] in message
    with pytest.raises(TypeError, match="Boxes"):
        check_box_convention(np.array([[1, 2, 4, 6]]), "standard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected"):
        check_box_convention(standard, "xyxy")  # type: ignore[arg-type]


def test_metric_given_expected_rejects_the_other_convention():
    maps = np.zeros((1, 1, 16, 16))
    maps[0, 0, 2:12, 5:8] = 1.0
    standard = Boxes.standard([[2, 5, 12, 8]], 2)
    for metric in (
        MaxBoxAccV2Metric(box_convention="protocol"),
        MaxBoxAccV2Metric(box_convention="standard"),
    ):
        wrong = standard if metric.box_convention == "protocol" else standard.to_protocol()
        with pytest.raises(ValueError) as err:
            metric(maps, [wrong])
        assert "'standard'" in str(err.value) and "'protocol'" in str(err.value) and "y[0]" in str(err.value)
    loc = LocalizationAccuracyMetric(num_classes=2, box_convention="protocol")
    with pytest.raises(ValueError, match="'standard'.*'protocol'"):
        loc(torch.tensor([[0.0, 1.0]]), [1], maps, [standard])
    with pytest.raises(ValueError, match="box_convention"):
        MaxBoxAccV2Metric(box_convention="xyxy")  # type: ignore[arg-type]


def test_metric_reads_bare_arrays_in_its_convention():
    # a tall lesion: its StandardMode box read as protocol would be a wide box elsewhere (IoU < 0.3)
    maps = np.zeros((1, 1, 16, 16))
    maps[0, 0, 2:12, 5:8] = 1.0
    standard = np.array([[2, 5, 12, 8]])
    as_standard = MaxBoxAccV2Metric(box_convention="standard")
    as_standard(maps, [standard])
    assert as_standard.aggregate()["MaxBoxAccV2"] == 100.0
    default = MaxBoxAccV2Metric()  # the reference's drop-in API: bare arrays are protocol
    default(maps, [standard])
    assert default.aggregate()["MaxBoxAccV2"] == 0.0
    tagged = MaxBoxAccV2Metric()  # a Boxes carries its own convention
    tagged(maps, [Boxes.standard(standard, 2)])
    assert tagged.aggregate()["MaxBoxAccV2"] == 100.0
    np.testing.assert_array_equal(as_gt_boxes(standard, (16, 16), convention="standard"), [[5, 2, 8, 12]])
    with pytest.raises(ValueError, match="3D boxes for a 2D map"):
        as_gt_boxes(Boxes.standard([[0, 0, 0, 1, 1, 1]], 3), (16, 16))
