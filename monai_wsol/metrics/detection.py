"""Per-lesion detection of binary masks, 2D and 3D: lesions found and false components, streaming.

A *lesion* is a connected component of a ground-truth mask and a *predicted component* a connected component
of a predicted mask (face connectivity: 4 in 2D, 6 in 3D, scipy's default structure). A lesion is *found* when
some predicted component overlaps it at ``IoU >= iou_threshold`` (0.3 by default; the IoU of the two voxel
sets); a predicted component that reaches that IoU with no lesion is a *false component*. Per image the metric
stores ``(lesions, found, components, false components)``; ``aggregate`` sums them over the dataset (and over
DDP ranks, through MONAI's ``Cumulative`` buffers) and reports the sensitivity ``found / lesions``, the false
components per image and the components' precision. Masks are binarised by ``!= 0``: threshold a score map
first (e.g. at the threshold chosen on validation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from .mask_overlap import ArrayLike, as_items

__all__ = ["lesion_detection_counts", "detection_curve", "LesionDetectionMetric"]


def lesion_detection_counts(pred: np.ndarray, target: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """``(lesions, found, components, false components)`` of one image (module docstring).

    Args:
        pred: predicted mask, any spatial shape (non-zero = foreground).
        target: ground-truth mask, same shape.
        iou_threshold: the IoU a component needs with a lesion to find it.

    Returns:
        int64 array of shape (4,).
    """
    return _counts(np.asarray(pred) != 0, _Lesions(target), iou_threshold)


class _Lesions:
    """A ground-truth mask labelled once: its lesion labels, their number and their sizes."""

    def __init__(self, target: np.ndarray) -> None:
        from scipy.ndimage import label

        self.labels, self.count = label(np.asarray(target) != 0)
        self.sizes = np.bincount(self.labels.ravel(), minlength=self.count + 1)[1:]


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (slices) holding every foreground element of ``mask``; None when it has none."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _counts(pred: np.ndarray, lesions: _Lesions, iou_threshold: float) -> np.ndarray:
    from scipy.ndimage import label

    box = _foreground_box(pred)
    if box is None:
        return np.array([lesions.count, 0, 0, 0], np.int64)
    # the components lie in the predicted foreground's box: label and intersect there only; the lesions'
    # sizes come from the whole mask, so a lesion partly outside the box keeps its true IoU
    parts, n_parts = label(pred[box])
    if lesions.count == 0:
        return np.array([0, 0, n_parts, n_parts], np.int64)
    # intersections of every (lesion, component) pair from one joint histogram; row/column 0 = background
    joint = np.bincount(
        lesions.labels[box].ravel() * (n_parts + 1) + parts.ravel(),
        minlength=(lesions.count + 1) * (n_parts + 1),
    )
    joint = joint.reshape(lesions.count + 1, n_parts + 1)
    inter = joint[1:, 1:].astype(np.float64)
    sizes_parts = joint[:, 1:].sum(0)
    iou = inter / (lesions.sizes[:, None] + sizes_parts[None, :] - inter)
    matched = iou >= iou_threshold
    found = int(matched.any(1).sum())
    false = int((~matched.any(0)).sum())
    return np.array([lesions.count, found, n_parts, false], np.int64)


def detection_curve(
    maps: ArrayLike | Sequence[ArrayLike],
    masks: ArrayLike | Sequence[ArrayLike],
    thresholds: Sequence[float] | np.ndarray,
    iou_threshold: float = 0.3,
) -> np.ndarray:
    """Detection counts summed over images at every threshold: ``(len(thresholds), 4)`` int64 rows of
    ``(lesions, found, components, false components)``, a map binarised as ``map >= tau`` (the rule of
    :class:`~monai_wsol.metrics.mask_overlap.MaskOverlapMetric`, so the counts read along its Dice curve).

    Args:
        maps: score maps (B, 1, *spatial) or a sequence of (1, *spatial).
        masks: ground-truth masks, same shapes.
        thresholds: the taus.
        iou_threshold: see :func:`lesion_detection_counts`.
    """
    taus = np.asarray(thresholds, dtype=np.float64)
    out = np.zeros((len(taus), 4), np.int64)
    for score, target in zip(as_items(maps, "maps"), as_items(masks, "masks"), strict=True):
        score_np = score.detach().cpu().double().numpy()
        lesions = _Lesions(target.detach().cpu().numpy())  # once per image, not per threshold
        for k, tau in enumerate(taus):
            out[k] += _counts(score_np >= tau, lesions, iou_threshold)
    return out


class LesionDetectionMetric(CumulativeIterationMetric):
    """Per-lesion detection over a dataset (module docstring), 2D or 3D.

    Example::

        metric = LesionDetectionMetric(iou_threshold=0.3)
        metric(pred_masks, gt_masks)  # (B, 1, *spatial) each, or sequences of (1, *spatial)
        metric.aggregate()  # {"sensitivity": ..., "false_per_image": ..., ...}

    Args:
        iou_threshold: the IoU in (0, 1] a predicted component needs with a lesion to find it.
    """

    def __init__(self, iou_threshold: float = 0.3) -> None:
        super().__init__()
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
        self.iou_threshold = float(iou_threshold)

    def __call__(  # type: ignore[override]
        self, y_pred: ArrayLike | Sequence[ArrayLike], y: ArrayLike | Sequence[ArrayLike]
    ) -> torch.Tensor:
        """Add a batch of predicted and ground-truth masks ((B, 1, *spatial) or sequences of (1, *spatial)).

        Returns:
            this batch's counts, int64 (B, 4): lesions, found, components, false components.
        """
        preds, targets = as_items(y_pred, "y_pred"), as_items(y, "y")
        if len(preds) != len(targets):
            raise ValueError(
                f"y_pred and y must hold the same number of images, got {len(preds)} and {len(targets)}."
            )
        counts = torch.stack([self._compute_tensor(p, t) for p, t in zip(preds, targets, strict=True)])
        self.extend(counts)
        return counts

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if (
            y is None
            or tuple(y.shape) != tuple(y_pred.shape)
            or y_pred.shape[0] != 1
            or y_pred.ndim not in (3, 4)
        ):
            raise ValueError(
                f"y_pred and y must be (1, *spatial) masks of one shape with 2 or 3 spatial dims, got "
                f"{tuple(y_pred.shape)} and {None if y is None else tuple(y.shape)}."
            )
        pred, target = y_pred[0].detach().cpu().numpy(), y[0].detach().cpu().numpy()
        return torch.as_tensor(lesion_detection_counts(pred, target, self.iou_threshold))

    def aggregate(self) -> dict[str, Any]:  # type: ignore[override]
        """Dataset-level results.

        Returns:
            ``sensitivity`` (found / lesions; NaN without lesions), ``false_per_image``, ``precision``
            ((components - false) / components; NaN without components), and the totals ``lesions``,
            ``found``, ``components``, ``false_components``, ``num_images``.

        Raises:
            RuntimeError: no image was added since the last ``reset()``.
        """
        buffer = self.get_buffer()
        if buffer is None or len(buffer) == 0:
            raise RuntimeError("LesionDetectionMetric.aggregate() called before any image was added.")
        lesions, found, components, false = (int(v) for v in buffer.sum(0))
        return {
            "sensitivity": found / lesions if lesions else float("nan"),
            "false_per_image": false / len(buffer),
            "precision": (components - false) / components if components else float("nan"),
            "lesions": lesions,
            "found": found,
            "components": components,
            "false_components": false,
            "num_images": len(buffer),
        }
