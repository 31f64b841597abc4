"""Shared helpers of the WSOL box protocol: input checks, quantisation, threshold -> level mapping.

The reference (wsolevaluation ``evaluation.py``) binarises ``(s * 255).astype(np.uint8)`` with
``cv2.threshold(..., thresh=int(tau * max(q)), THRESH_BINARY)``, i.e. the mask at ``tau`` is
``q > int(tau * max(q))`` with ``q = floor(255 * s)`` computed in float64.  Hence at most 256 distinct masks
exist whatever the number of thresholds, and two levels give the same mask when no score is quantised in
between: everything here works per distinct mask and maps the result back to the thresholds.
These helpers are used for 2D score maps and 3D score volumes alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "as_float64",
    "as_score_array",
    "as_thresholds",
    "quantise_scores",
    "threshold_levels",
    "distinct_masks",
    "level_bounds",
    "level_crops",
]


def as_float64(score: np.ndarray | torch.Tensor) -> np.ndarray:
    """``score`` as a float64 NumPy array (torch on any device converted on the torch side: exact for
    float16/bfloat16/float32, which NumPy may not all represent); values are not checked."""
    if isinstance(score, torch.Tensor):
        score = score.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(score, dtype=np.float64)


def as_score_array(score: np.ndarray | torch.Tensor, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``score`` as a float64 NumPy array, checking it is finite and within [0, 1].

    Args:
        score: score map or volume (NumPy or torch on any device); float32 values convert exactly.
        name: argument name used in error messages.
        ndim: required number of dimensions, or None for any.

    Raises:
        ValueError: wrong number of dimensions, empty, NaN/inf or values outside [0, 1].
    """
    arr = as_float64(score)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(arr.shape)}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)}).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must be min-max normalised to [0, 1], got values in [{lo}, {hi}].")
    return arr


def as_thresholds(thresholds: Sequence[float] | np.ndarray, name: str = "thresholds") -> np.ndarray:
    """Score-map thresholds (taus) as a float64 vector, each finite and within [0, 1).

    Raises:
        ValueError: not a non-empty 1D sequence, or a value outside [0, 1).
    """
    taus = np.asarray(thresholds, dtype=np.float64)
    if taus.ndim != 1 or taus.size == 0:
        raise ValueError(f"{name} must be a non-empty 1D sequence, got shape {tuple(taus.shape)}.")
    if not np.all(np.isfinite(taus)) or taus.min() < 0.0 or taus.max() >= 1.0:
        raise ValueError(f"{name} must be finite and within [0, 1), got [{taus.min()}, {taus.max()}].")
    return taus


def quantise_scores(score: np.ndarray) -> np.ndarray:
    """``(s * 255).astype(np.uint8)`` in float64, as the reference; ``s`` must already be within [0, 1]."""
    return (np.asarray(score, dtype=np.float64) * 255.0).astype(np.uint8)


def threshold_levels(q_max: int, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Integer level per threshold, ``int(tau * max(q))`` (shape (n_tau,), int64).

    The product is the same float64 multiplication as the reference's ``threshold * np.max(q)`` and
    ``int()`` of a non-negative float is its floor, so the vectorised form is bit-identical.
    """
    return np.floor(as_thresholds(thresholds) * float(q_max)).astype(np.int64)


def distinct_masks(q: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group levels that give the same mask ``q > level``.

    Two levels ``a < b`` give the same mask exactly when no value of ``q`` lies in ``(a, b]``, i.e. when
    the number of values ``<= level`` is equal; this is read from one 256-bin histogram.

    Args:
        q: quantised scores (uint8, any shape).
        levels: level per threshold, shape (n_tau,).

    Returns:
        ``(representatives, inverse)``: one level per distinct mask (ascending) and, per threshold, the index
        of its representative, so that ``representatives[inverse]`` gives each threshold a level with the
        same mask as its own.
    """
    below = np.cumsum(np.bincount(q.ravel(), minlength=256))  # below[l] = #(q <= l)
    key = below[np.clip(levels, 0, 255)]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return levels[first], inverse.reshape(-1)


def level_bounds(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of ``q > l`` for every level l in 0..255 at once (``q`` uint8, any rank).

    The maximum of ``q`` over each hyperplane orthogonal to an axis tells which positions along that axis
    hold a pixel of the mask, for all levels together: the first (last) position of value > l is a suffix
    minimum (maximum) over values of the first (last) position holding each value.

    Returns:
        ``(lo, hi)``, int64 arrays (256, ndim): first and last index along each axis (inclusive); an empty
        mask has ``lo[l, 0] == q.shape[0]``.
    """
    lo = np.empty((256, q.ndim), dtype=np.int64)
    hi = np.empty((256, q.ndim), dtype=np.int64)
    for axis in range(q.ndim):
        profile = q.max(axis=tuple(a for a in range(q.ndim) if a != axis)).astype(np.int64)
        index = np.arange(profile.size)
        first = np.full(257, profile.size, dtype=np.int64)
        last = np.full(257, -1, dtype=np.int64)
        np.minimum.at(first, profile, index)
        np.maximum.at(last, profile, index)
        # level l keeps values l + 1 .. 255
        lo[:, axis] = np.minimum.accumulate(first[::-1])[::-1][1:]
        hi[:, axis] = np.maximum.accumulate(last[::-1])[::-1][1:]
    return lo, hi


def level_crops(
    q: np.ndarray, levels: Sequence[int] | np.ndarray, margin: int = 0
) -> list[tuple[slice, ...] | None]:
    """Bounding box (as slices, widened by ``margin`` and clipped to the array) of ``q > level`` per level;
    None stands for an empty mask (see :func:`level_bounds`)."""
    lo, hi = level_bounds(q)
    crops: list[tuple[slice, ...] | None] = []
    for level in np.asarray(levels).tolist():
        if lo[level, 0] >= q.shape[0]:
            crops.append(None)
            continue
        crops.append(
            tuple(
                slice(max(int(a) - margin, 0), min(int(b) + 1 + margin, n))
                for a, b, n in zip(lo[level], hi[level], q.shape, strict=True)
            )
        )
    return crops
