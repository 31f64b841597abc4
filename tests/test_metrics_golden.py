"""Equality with every array of the reference's golden outputs (``tests/fixtures/metric_golden.npz``).

The fixture was produced by the protocol's public reference (wsolevaluation ``evaluation.py``); nothing here
is
recomputed by a second, in-repository implementation: boxes, curves and PxAP must match the stored arrays
exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _paths import GOLDEN

from monai_wsol.metrics import (
    BoxAccuracyMetric,
    MaxBoxAccMetric,
    MaxBoxAccV2Metric,
    PxAPMetric,
    boxes_from_scoremap,
)


@pytest.fixture(scope="module")
def golden():
    data = dict(np.load(GOLDEN))
    shapes = data["cam_shapes"]
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
    data["cams"] = [
        data["cams_flat"][offsets[i] : offsets[i + 1]].reshape(shapes[i]) for i in range(len(shapes))
    ]
    box_offsets = np.concatenate([[0], np.cumsum(data["gt_box_counts"])])
    data["gts"] = [data["gt_boxes_flat"][box_offsets[i] : box_offsets[i + 1]] for i in range(len(shapes))]
    return data


def test_v1_boxes_every_coarse_threshold(golden):
    taus = golden["thresholds_coarse"]
    for i, cam in enumerate(golden["cams"]):
        boxes = boxes_from_scoremap(cam, taus, multi_contour=False)
        assert all(b.shape == (1, 4) for b in boxes)
        np.testing.assert_array_equal(np.concatenate(boxes), golden["v1_boxes"][i], err_msg=f"map {i}")


def test_v2_boxes_every_coarse_threshold(golden):
    taus = golden["thresholds_coarse"]
    counts, flat = golden["v2_box_counts"], golden["v2_boxes_flat"]
    ends = np.cumsum(counts.ravel())
    starts = ends - counts.ravel()
    for i, cam in enumerate(golden["cams"]):
        boxes = boxes_from_scoremap(cam, taus, multi_contour=True)
        for t, got in enumerate(boxes):
            k = i * len(taus) + t
            ref = flat[starts[k] : ends[k]]
            assert len(got) == counts[i, t], (i, t)
            # compared as multisets: the default order is the kernel's (components, then holes), not OpenCV's
            assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, ref.tolist())), (i, t)


@pytest.mark.parametrize("grid", ["coarse", "fine"])
@pytest.mark.parametrize("multi", [False, True])
def test_box_acc_curves(golden, grid, multi):
    metric = BoxAccuracyMetric(cam_curve_interval=0.01 if grid == "coarse" else 0.001, multi_contour=multi)
    assert len(metric.thresholds) == (100 if grid == "coarse" else 1000)
    for cam, gt in zip(golden["cams"], golden["gts"], strict=True):
        metric(y_pred=cam[None, None], y=[gt])
    result = metric.aggregate()
    expected = golden[f"boxacc_{grid}_{'multi' if multi else 'largest'}"]
    np.testing.assert_array_equal(result["box_acc"], expected)
    assert result["num_images"] == len(golden["cams"])
    for row, d in enumerate((30, 50, 70)):
        assert result[f"BoxAcc@{d}"] == expected[row].max()
        assert result[f"tau@{d}"] == metric.thresholds[int(np.argmax(expected[row]))]


def test_max_box_acc_and_v2(golden):
    v1, v2 = MaxBoxAccMetric(), MaxBoxAccV2Metric()
    for cam, gt in zip(golden["cams"], golden["gts"], strict=True):
        v1(torch.from_numpy(cam)[None], [torch.from_numpy(gt)])
        v2(cam[None], [gt])
    assert v1.aggregate()["MaxBoxAcc"] == golden["boxacc_fine_largest"][1].max()
    assert v2.aggregate()["MaxBoxAccV2"] == np.mean(golden["boxacc_fine_multi"].max(axis=1))


@pytest.mark.parametrize("grid, step", [("coarse", 0.01), ("fine", 0.001)])
def test_pxap(golden, grid, step):
    metric = PxAPMetric(threshold_step=step)
    cams, masks, ignores = golden["mask_cams"], golden["gt_masks"], golden["ignore_masks"]
    metric(cams[:5, None], masks[:5, None], ignores[:5, None])  # channel-first numpy batch
    metric(torch.from_numpy(cams[5:]), torch.from_numpy(masks[5:]), torch.from_numpy(ignores[5:]))
    result = metric.aggregate()
    assert result["PxAP"] == float(golden[f"pxap_{grid}"])
    assert result["precision"].shape == result["recall"].shape == (len(metric.edges) - 1,)
