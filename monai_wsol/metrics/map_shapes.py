"""The shape of a localization map against its lesion, 2D and 3D: on it, shifted, peaked or fragmented.

Box and pixel figures can disagree (a map may win MaxBoxAccV2 and lose Dice); these per-image figures say
why. For a map ``cam`` in [0, 1], a ground-truth ``mask`` and a threshold ``tau`` (e.g. the validation Dice
threshold):

- ``mass_in_lesion``: share of the map's total value inside the lesion (the "energy" pointing game);
- ``peak_in_lesion``: 1 when the map's maximum lies in the lesion, else 0 (the pointing game);
- ``centroid_offset_mm``: distance from the lesion's centroid to the centroid of the thresholded map
  (``cam >= tau``, weighted by ``cam``), in mm with ``spacing`` (voxels without): a *shifted* map;
- ``area_ratio``: voxels with ``cam >= tau`` over lesion voxels: below 1 a *peaked* map that covers part of
  the lesion, above 1 a map that spills beyond it;
- ``components``: connected components of ``cam >= tau`` (face connectivity, as
  :mod:`~monai_wsol.metrics.detection`): a *fragmented* map has several;
- ``coverage`` and ``precision``: shares of the lesion inside ``cam >= tau`` and of ``cam >= tau`` inside the
  lesion.

Undefined values (no voxel at ``tau``: no centroid, no precision) are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAP_SHAPE_KEYS", "map_shape"]

#: the figures :func:`map_shape` returns, in table order
MAP_SHAPE_KEYS: tuple[str, ...] = (
    "mass_in_lesion",
    "peak_in_lesion",
    "centroid_offset_mm",
    "area_ratio",
    "components",
    "coverage",
    "precision",
)


def map_shape(
    cam: np.ndarray, mask: np.ndarray, tau: float, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """The :data:`MAP_SHAPE_KEYS` figures of one map (module docstring).

    Args:
        cam: (X, Y[, Z]) map in [0, 1] (a leading channel of 1 is dropped).
        mask: the ground-truth lesion mask, same shape (non-zero = lesion); it must hold a lesion.
        tau: the map threshold.
        spacing: voxel size per axis in mm (default: 1, offsets in voxels).
    """
    from scipy.ndimage import label

    cam = np.asarray(cam, dtype=np.float64)
    lesion = np.asarray(mask) != 0
    if cam.ndim == lesion.ndim + 1 and cam.shape[0] == 1:
        cam = cam[0]
    if lesion.ndim == cam.ndim + 1 and lesion.shape[0] == 1:
        lesion = lesion[0]
    if cam.shape != lesion.shape or cam.ndim not in (2, 3):
        raise ValueError(f"map_shape: cam {cam.shape} and mask {lesion.shape} must be one 2D or 3D shape.")
    if not lesion.any():
        raise ValueError("map_shape: the mask holds no lesion.")
    if not np.isfinite(cam).all():
        raise ValueError("map_shape: the map has non-finite values.")
    step = np.ones(cam.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if step.shape != (cam.ndim,) or (step <= 0).any():
        raise ValueError(f"map_shape: spacing must be {cam.ndim} positive sizes, got {spacing!r}.")
    total = cam.sum()
    above = cam >= tau
    n_above, n_lesion = int(above.sum()), int(lesion.sum())
    grid = np.indices(cam.shape).reshape(cam.ndim, -1).T * step
    lesion_centre = grid[lesion.reshape(-1)].mean(0)
    if n_above:
        weights = (cam * above).reshape(-1)
        map_centre = (grid * weights[:, None]).sum(0) / weights.sum()
        offset = float(np.linalg.norm(map_centre - lesion_centre))
        precision = float((above & lesion).sum() / n_above)
    else:
        offset = precision = float("nan")
    return {
        "mass_in_lesion": float(cam[lesion].sum() / total) if total > 0 else float("nan"),
        "peak_in_lesion": float(lesion.reshape(-1)[int(np.argmax(cam))]),
        "centroid_offset_mm": offset,
        "area_ratio": n_above / n_lesion,
        "components": float(label(above)[1]),
        "coverage": float((above & lesion).sum() / n_lesion),
        "precision": precision,
    }
