"""Honest threshold choice: pick tau on a held-out split, apply it to the test split, report both.

``MaxBoxAcc``-style figures take the best threshold on the very split they report, which is an oracle
choice.  Here the threshold is chosen on a validation curve and read off the test curve at that tau
("tau chosen on validation, applied to test"), and the oracle figure ("oracle tau on test") is reported
next to it, each labelled.  Any curve over the thresholds works: BoxAcc(tau) at one IoU threshold, the
rows of BoxAcc(tau, delta) for several deltas (each row picks its own tau, as MaxBoxAccV2), Dice(tau),
Top-1 Loc(tau), ...  Ties go to the smallest tau (the first maximum), as everywhere in ``monai_wsol``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._quantize import as_thresholds

__all__ = [
    "choose_threshold",
    "apply_threshold",
    "ThresholdSelection",
    "select_threshold",
    "decision_threshold",
    "as_decision_threshold",
    "predicted_class",
]

CurveLike = np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]


def _as_curve(curve: CurveLike, thresholds: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(
        curve.detach().cpu().numpy() if isinstance(curve, torch.Tensor) else curve, dtype=np.float64
    )
    if arr.ndim not in (1, 2) or arr.shape[-1] != thresholds.size:
        raise ValueError(
            f"{name} must have shape (n_tau,) or (rows, n_tau) with n_tau = {thresholds.size}, "
            f"got {arr.shape}."
        )
    if np.isnan(arr).all(axis=-1).any():
        raise ValueError(f"{name} has a row that is NaN at every threshold.")
    return arr


def choose_threshold(
    curve: CurveLike, thresholds: Sequence[float] | np.ndarray
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """The threshold maximising ``curve`` (first maximum; NaNs are never chosen) and the maximum.

    Args:
        curve: values at each threshold, shape (n_tau,), or (rows, n_tau) for one choice per row.
        thresholds: the taus, shape (n_tau,).

    Returns:
        ``(tau, value)``: floats for a 1D curve, arrays of shape (rows,) for a 2D curve.
    """
    taus = as_thresholds(thresholds)
    arr = _as_curve(curve, taus, "curve")
    index = np.argmax(np.where(np.isnan(arr), -np.inf, arr), axis=-1)
    value = np.take_along_axis(arr, np.asarray(index)[..., None], axis=-1)[..., 0]
    if arr.ndim == 1:
        return float(taus[index]), float(value)
    return taus[index], value


def apply_threshold(
    curve: CurveLike, thresholds: Sequence[float] | np.ndarray, tau: float | Sequence[float] | np.ndarray
) -> float | np.ndarray:
    """Read ``curve`` at ``tau`` (one tau, or one per row of a 2D curve); ``tau`` must be one of the
    thresholds.

    Raises:
        ValueError: ``tau`` is not on the threshold grid (within 1e-9).
    """
    taus = as_thresholds(thresholds)
    arr = _as_curve(curve, taus, "curve")
    tau_arr = np.broadcast_to(np.asarray(tau, dtype=np.float64), arr.shape[:-1])
    index = np.abs(taus[None, :] - tau_arr.reshape(-1, 1)).argmin(axis=1)
    off_grid = np.abs(taus[index] - tau_arr.reshape(-1)) > 1e-9
    if off_grid.any():
        raise ValueError(f"tau {tau_arr.reshape(-1)[off_grid].tolist()} is not one of the thresholds.")
    values = np.take_along_axis(arr.reshape(-1, taus.size), index[:, None], axis=1)[:, 0]
    return float(values[0]) if arr.ndim == 1 else values


@dataclass(frozen=True)
class ThresholdSelection:
    """A threshold chosen on validation and applied to test, next to the oracle threshold on test.

    Scalars for a 1D curve; arrays of shape (rows,) for a 2D curve (one choice per row).

    Attributes:
        name: what the curve measures (e.g. ``"BoxAcc@50"``, ``"Dice"``).
        validation_threshold: tau maximising the validation curve.
        validation_value: the validation curve's maximum (itself an oracle figure on validation).
        test_value: the test curve at ``validation_threshold``: the honest figure.
        oracle_threshold: tau maximising the test curve.
        oracle_value: the test curve's maximum: optimistic, since tau was chosen on test.
    """

    name: str
    validation_threshold: float | np.ndarray
    validation_value: float | np.ndarray
    test_value: float | np.ndarray
    oracle_threshold: float | np.ndarray
    oracle_value: float | np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """Labelled figures (JSON-friendly); 2D curves also give the mean over rows, as MaxBoxAccV2."""
        out: dict[str, Any] = {
            f"{self.name} [tau chosen on validation, applied to test]": self.test_value,
            f"{self.name} [oracle tau on test]": self.oracle_value,
            f"{self.name} [tau chosen on validation]": self.validation_threshold,
            f"{self.name} [oracle tau on test, tau]": self.oracle_threshold,
            f"{self.name} [validation, at its own best tau]": self.validation_value,
        }
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}
        if isinstance(self.test_value, np.ndarray):
            out[f"{self.name} [tau chosen on validation, applied to test, mean over rows]"] = float(
                np.mean(self.test_value)
            )
            out[f"{self.name} [oracle tau on test, mean over rows]"] = float(np.mean(self.oracle_value))
        return out


def select_threshold(
    validation_curve: CurveLike,
    test_curve: CurveLike,
    thresholds: Sequence[float] | np.ndarray,
    name: str = "metric",
) -> ThresholdSelection:
    """Choose tau on ``validation_curve``, apply it to ``test_curve``, and record the oracle test tau too.

    Args:
        validation_curve: values on the held-out split, shape (n_tau,) or (rows, n_tau).
        test_curve: values on the test split, same shape.
        thresholds: the taus both curves were computed at, shape (n_tau,).
        name: label of the figure in :meth:`ThresholdSelection.as_dict`.
    """
    taus = as_thresholds(thresholds)
    val = _as_curve(validation_curve, taus, "validation_curve")
    test = _as_curve(test_curve, taus, "test_curve")
    if val.shape != test.shape:
        raise ValueError(
            f"validation_curve {val.shape} and test_curve {test.shape} must have the same shape."
        )
    val_tau, val_value = choose_threshold(val, taus)
    oracle_tau, oracle_value = choose_threshold(test, taus)
    return ThresholdSelection(
        name=name,
        validation_threshold=val_tau,
        validation_value=val_value,
        test_value=apply_threshold(test, taus, val_tau),
        oracle_threshold=oracle_tau,
        oracle_value=oracle_value,
    )


def decision_threshold(scores: np.ndarray, is_lesion: np.ndarray) -> float:
    """The lesion-probability threshold (an image is called "lesion" when its score is >= it) with the
    highest accuracy on these images, e.g. a validation split's; on ties the lowest such threshold, placed
    midway between the two scores it separates (not on a validation score)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_lesion = np.asarray(is_lesion, dtype=bool).reshape(-1)
    if scores.shape != is_lesion.shape or not len(scores):
        raise ValueError(f"decision_threshold: {scores.shape} scores for {is_lesion.shape} labels.")
    levels = np.unique(scores)  # candidate: "lesion" from levels[i] up; the last one calls no image "lesion"
    # correct calls at each candidate, from sorted scores (O(n log n)): lesion images at or above it plus the
    # others below it; the appended candidate (+inf) calls every image "no lesion"
    candidates = np.append(levels, np.inf)
    lesion, other = np.sort(scores[is_lesion]), np.sort(scores[~is_lesion])
    correct = (len(lesion) - np.searchsorted(lesion, candidates, side="left")) + np.searchsorted(
        other, candidates, side="left"
    )
    best = int(np.argmax(correct))
    if best == 0:
        return float(levels[0])
    if best == len(levels):
        return float(np.nextafter(levels[-1], np.inf))
    return float((levels[best - 1] + levels[best]) / 2)


def as_decision_threshold(value: Any) -> float | None:
    """A ``decision_threshold`` argument as a probability in [0, 1], or ``None`` (the argmax decides); any
    other value raises a ``ValueError`` naming the argument."""
    if value is None:
        return None
    try:  # a number, or its text (a config or the command line may give either)
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"decision_threshold must be a probability in [0, 1] or None, got {value!r}.")
    return number


def predicted_class(
    probabilities: Sequence[float] | np.ndarray | torch.Tensor,
    threshold: float | None = None,
    lesion_classes: Sequence[int] | None = None,
) -> int:
    """One image's class: the argmax of its ``probabilities`` without a ``threshold``; with one (a
    :func:`decision_threshold` chosen on validation), a lesion when the summed probability of
    ``lesion_classes`` (default: every class but 0) is at least the threshold -- then the most probable of
    those classes -- else class 0 ("no lesion")."""
    probs = np.asarray(
        probabilities.detach().cpu().numpy() if isinstance(probabilities, torch.Tensor) else probabilities,
        dtype=np.float64,
    ).reshape(-1)
    threshold = as_decision_threshold(threshold)
    if threshold is None:
        return int(np.argmax(probs))
    lesions = list(range(1, len(probs))) if lesion_classes is None else [int(c) for c in lesion_classes]
    if not lesions or min(lesions) < 1 or max(lesions) >= len(probs):
        raise ValueError(
            f"lesion_classes {lesions} for {len(probs)} class probabilities (class 0 is no lesion)."
        )
    if probs[lesions].sum() < threshold:
        return 0
    return lesions[int(np.argmax(probs[lesions]))]
