"""The decision threshold chosen on validation: "lesion or not" from the lesion probability, read on test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_wsol.engines.evaluation import (
    decision_threshold,
    figures_at_validation_tau,
    load_curves,
    mask_boxes,
    save_curves,
    split_curves,
)


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
