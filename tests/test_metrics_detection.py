"""Per-lesion detection: lesions found at IoU >= 0.3 by a connected component, false components, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_wsol.metrics import LesionDetectionMetric, lesion_detection_counts
from monai_wsol.metrics.detection import detection_curve


def _square(shape, x0, y0, side):
    m = np.zeros(shape, np.uint8)
    m[x0 : x0 + side, y0 : y0 + side] = 1
    return m


def test_counts_2d_at_the_iou_boundary():
    shape = (40, 40)
    truth = _square(shape, 2, 2, 10) | _square(shape, 25, 25, 10)  # two lesions of 100 pixels
    # over the first lesion: IoU 30 / 100 = 0.3 exactly (found); a blob far from both (false); nothing on
    # the second lesion (missed)
    pred = np.zeros(shape, np.uint8)
    pred[2:5, 2:12] = 1
    pred[20:22, 2:4] = 1
    np.testing.assert_array_equal(lesion_detection_counts(pred, truth), [2, 1, 2, 1])
    # one pixel less: IoU 29 / 100 < 0.3, the lesion is missed and its component is false
    pred[4, 11] = 0
    np.testing.assert_array_equal(lesion_detection_counts(pred, truth), [2, 0, 2, 2])
    # components touch by faces only: a diagonal neighbour is a component of its own
    diagonal = np.zeros(shape, np.uint8)
    diagonal[0, 0] = diagonal[1, 1] = 1
    np.testing.assert_array_equal(lesion_detection_counts(diagonal, np.zeros(shape)), [0, 0, 2, 2])


def test_counts_3d_and_the_empty_cases():
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[2:8, 2:8, 2:8] = 1  # 216 voxels
    pred = np.zeros_like(truth)
    pred[3:8, 2:8, 2:8] = 1  # inside the lesion: IoU 180 / 216
    np.testing.assert_array_equal(lesion_detection_counts(pred, truth), [1, 1, 1, 0])
    pred[2:8, 2:8, 2] = 0
    pred[15:18, 15:18, 0:3] = 1  # one more component, away from the lesion
    np.testing.assert_array_equal(lesion_detection_counts(pred, truth), [1, 1, 2, 1])
    np.testing.assert_array_equal(lesion_detection_counts(np.zeros_like(truth), truth), [1, 0, 0, 0])
    np.testing.assert_array_equal(lesion_detection_counts(pred, np.zeros_like(truth)), [0, 0, 2, 2])


def test_one_component_can_find_two_lesions():
    truth = np.zeros((30, 30), np.uint8)
    truth[0:5, 0:5] = 1
    truth[0:5, 6:11] = 1
    pred = np.zeros_like(truth)
    pred[0:5, 0:11] = 1  # covers both: IoU 25 / 55 with each
    np.testing.assert_array_equal(lesion_detection_counts(pred, truth), [2, 2, 1, 0])


def _counts_by_definition(pred, truth, iou_threshold=0.3):
    """Both masks labelled whole, every (lesion, component) IoU from its voxel sets."""
    from scipy.ndimage import label

    lesions, n_lesions = label(truth != 0)
    parts, n_parts = label(pred != 0)
    iou = np.zeros((n_lesions, n_parts))
    for i in range(n_lesions):
        for j in range(n_parts):
            a, b = lesions == i + 1, parts == j + 1
            iou[i, j] = (a & b).sum() / (a | b).sum()
    matched = iou >= iou_threshold
    return [n_lesions, int(matched.any(1).sum()), n_parts, int((~matched.any(0)).sum())]


@pytest.mark.parametrize("shape", [(24, 20, 9), (30, 26)])
def test_curve_equals_the_definition_at_every_threshold(shape):
    """The curve labels each mask in its foreground's box and each lesion mask once: at every threshold it
    equals both masks labelled whole, also for lesions partly or wholly outside the predicted box."""
    rng = np.random.default_rng(len(shape))
    from scipy.ndimage import gaussian_filter

    maps, masks = [], []
    for _ in range(3):
        truth = np.zeros(shape, np.uint8)
        for _ in range(3):  # up to three box lesions anywhere, touching the border or each other
            lo = rng.integers(0, np.array(shape) - 2)
            hi = lo + rng.integers(2, 8, size=len(shape))
            truth[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = 1
        # a map that finds some lesions at some thresholds: the lesions blurred, plus smooth noise
        score = gaussian_filter(truth.astype(float), 1.0) + 0.3 * gaussian_filter(rng.random(shape), 1.5)
        score = (score - score.min()) / (score.max() - score.min())
        maps.append(torch.from_numpy(score)[None])
        masks.append(torch.from_numpy(truth)[None])
    taus = np.linspace(0.0, 0.99, 34)
    expected = np.zeros((len(taus), 4), np.int64)
    for score, truth in zip(maps, masks, strict=True):
        for k, tau in enumerate(taus):
            expected[k] += _counts_by_definition(score[0].numpy() >= tau, truth[0].numpy())
    np.testing.assert_array_equal(detection_curve(maps, masks, taus), expected)
    assert expected[:, 1].min() < expected[:, 1].max()  # lesions found at some thresholds and not others


def test_metric_accumulates_over_batches():
    shape = (1, 40, 40)
    truth = _square(shape[1:], 2, 2, 10)[None]
    hit, miss = truth.copy(), np.zeros(shape, np.uint8)
    miss[0, 30:33, 30:33] = 1
    metric = LesionDetectionMetric()
    batch = metric(torch.as_tensor(np.stack([hit, miss])), torch.as_tensor(np.stack([truth, truth])))
    np.testing.assert_array_equal(batch.numpy(), [[1, 1, 1, 0], [1, 0, 1, 1]])
    metric([torch.as_tensor(np.zeros(shape))], [torch.as_tensor(np.zeros(shape))])  # an image with neither
    result = metric.aggregate()
    assert result["sensitivity"] == 0.5 and result["precision"] == 0.5
    assert result["false_per_image"] == pytest.approx(1 / 3) and result["num_images"] == 3
    metric.reset()
    with pytest.raises(RuntimeError, match="before any image"):
        metric.aggregate()
    with pytest.raises(ValueError, match="same shape|one shape"):
        metric(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="iou_threshold"):
        LesionDetectionMetric(iou_threshold=0.0)


def test_split_figures_report_detection_at_the_validation_threshold(tmp_path):
    """The evaluation's curves carry the detection counts at every mask threshold; the test figures read them
    at the Dice threshold chosen on validation; curves saved without them still load."""
    from monai_wsol.engines.evaluation import (
        _CURVE_FIELDS,
        figures_at_validation_tau,
        load_curves,
        mask_boxes,
        save_curves,
        split_curves,
    )

    rng = np.random.default_rng(0)
    masks = np.zeros((4, 1, 32, 32), np.float32)
    for k in range(4):
        x, y = rng.integers(2, 20, 2)
        masks[k, 0, x : x + 8, y : y + 8] = 1
    cams = np.clip(masks * 0.9 + 0.05, 0, 1)  # a perfect map up to contrast
    cams[3, 0, 0:2, 28:30] = 0.95  # one image with a spurious blob above the lesion's level
    probs = torch.tensor([[0.1, 0.9]] * 4 + [[0.9, 0.1]] * 2)
    labels = torch.tensor([1, 1, 1, 1, 0, 0])
    boxes = [mask_boxes(m[0]) for m in masks]
    curves = split_curves(probs, labels, torch.as_tensor(cams), torch.as_tensor(masks), boxes, box_step=0.01)
    assert curves.detection.shape == (len(curves.mask_thresholds), 4)
    tau = curves.scalars["Dice_tau"]
    k = int(np.argmin(np.abs(curves.mask_thresholds - tau)))
    np.testing.assert_array_equal(curves.detection[k], [4, 4, 5, 1])  # every lesion found, the blob false
    figures, _ = figures_at_validation_tau(curves, curves)
    assert figures["LesionSens@val_tau"] == 100.0 and figures["FalseComp@val_tau"] == 0.25

    path = save_curves(curves, tmp_path / "test.npz")
    np.testing.assert_array_equal(load_curves(path).detection, curves.detection)
    with np.load(path) as z:
        old = {f: z[f] for f in _CURVE_FIELDS if f != "detection"}
    np.savez(path, **old)
    assert load_curves(path).detection.shape == (0, 4)
