"""The decision threshold chosen on validation: "lesion or not" from the lesion probability, read on test, and
the class it decides for one image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_wsol.engines.evaluation import (
    figures_at_validation_tau,
    load_curves,
    mask_boxes,
    save_curves,
    split_curves,
)
from monai_wsol.metrics.threshold import decision_threshold, predicted_class


def test_the_threshold_separates_the_classes_midway_between_scores():
    # lesion images score >= 0.8, the others <= 0.7: any cut between is perfect, the midpoint is taken
    assert decision_threshold([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0]) == pytest.approx(0.75)
    # overlapping classes: the best cut misses one image
    t = decision_threshold([0.9, 0.6, 0.8, 0.3, 0.65], [1, 1, 0, 0, 0])
    scores, labels = np.array([0.9, 0.6, 0.8, 0.3, 0.65]), np.array([1, 1, 0, 0, 0], bool)
    best = max(np.mean((scores >= c) == labels) for c in [*scores, np.inf])
    assert np.mean((scores >= t) == labels) == best == 0.8
    # all lesion / all negative: call every image lesion / none
    assert decision_threshold([0.2, 0.4], [1, 1]) == 0.2
    assert decision_threshold([0.2, 0.4], [0, 0]) > 0.4
    # random splits with tied scores: the threshold reaches the best accuracy of any cut, the lowest such cut
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, labels = rng.integers(0, 12, 60) / 11.0, rng.random(60) < 0.5
        cuts = [*np.unique(scores), np.inf]
        accuracy = [np.mean((scores >= c) == labels) for c in cuts]
        t = decision_threshold(scores, labels)
        assert np.mean((scores >= t) == labels) == max(accuracy)
        lowest_best = cuts[int(np.argmax(accuracy))]
        np.testing.assert_array_equal(scores >= t, scores >= lowest_best)
    with pytest.raises(ValueError, match="scores for"):
        decision_threshold([0.1, 0.2], [1])


def _curves(probs: list[list[float]], labels: list[int]):
    lesion = [i for i, y in enumerate(labels) if y]
    masks = torch.zeros(len(lesion), 1, 16, 16)
    masks[:, :, 4:10, 4:10] = 1
    boxes = [mask_boxes(m[0].numpy()) for m in masks]
    return split_curves(torch.tensor(probs), torch.tensor(labels), masks.clone(), masks, boxes, box_step=0.05)


def test_test_accuracy_at_the_validation_threshold(tmp_path):
    # a segmenter-like lesion probability: high for every image, so the argmax calls everything "lesion"
    val = _curves([[0.1, 0.9], [0.15, 0.85], [0.3, 0.7], [0.25, 0.75]], [1, 1, 0, 0])
    test = _curves([[0.05, 0.95], [0.2, 0.8], [0.28, 0.72], [0.4, 0.6]], [1, 1, 0, 0])
    assert test.scalars["accuracy"] == 50.0
    figures, taus = figures_at_validation_tau(val, test)
    assert taus["decision"] == pytest.approx(0.8)  # midway between 0.75 and 0.85 on validation
    # the validation report carries the same threshold, for inference's decision_threshold
    assert val.scalars["decision_threshold"] == taus["decision"]
    assert np.isnan(_curves([[0.1, 0.9], [0.2, 0.8]], [1, 1]).scalars["decision_threshold"])  # one class only
    assert figures["accuracy@val_threshold"] == 100.0
    # curves keep the scores (and load without them when saved before they existed)
    path = save_curves(test, tmp_path / "test.npz")
    loaded = load_curves(path)
    np.testing.assert_allclose(loaded.lesion_scores, [0.95, 0.8, 0.72, 0.6])
    np.testing.assert_array_equal(loaded.is_lesion, [True, True, False, False])
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k not in ("lesion_scores", "is_lesion")}
    np.savez(path, **old)
    figures, taus = figures_at_validation_tau(val, load_curves(path))
    assert "accuracy@val_threshold" not in figures and "decision" not in taus


def test_predicted_class_is_the_argmax_or_the_thresholded_lesion_probability():
    assert predicted_class([0.3, 0.7]) == 1 and predicted_class(torch.tensor([0.8, 0.2])) == 0
    # a threshold overrules the argmax both ways; "lesion" from the threshold up
    assert predicted_class([0.3, 0.7], 0.8) == 0
    assert predicted_class([0.8, 0.2], 0.15) == 1
    assert predicted_class([0.4, 0.6], 0.6) == 1
    # several lesion classes: their summed probability against the threshold, then the likeliest of them
    probs = [0.4, 0.25, 0.35]
    assert predicted_class(probs) == 0
    assert predicted_class(probs, 0.5) == 2
    assert predicted_class(probs, 0.61) == 0
    assert predicted_class(probs, 0.2, lesion_classes=[1]) == 1
    assert predicted_class([0.3, 0.7], "0.8") == 0  # a threshold given as text, as configs may
    for bad in (1.5, -0.1, True, "high", float("nan"), [0.5]):
        with pytest.raises(ValueError, match="decision_threshold must be a probability"):
            predicted_class([0.5, 0.5], bad)
    with pytest.raises(ValueError, match="lesion_classes"):
        predicted_class([0.5, 0.5], 0.5, lesion_classes=[0])
