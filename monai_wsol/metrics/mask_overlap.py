"""Best-threshold Dice and IoU between binarised score maps and ground-truth masks, 2D and 3D, streaming.

At threshold ``tau`` a pixel (voxel) is predicted foreground when its score is ``>= tau``: the same rule as
the precision/recall curve of PxAP, so the two pixel metrics read one curve of binarisations.  Per image the
metric stores the true-positive, false-positive and false-negative counts at every tau (shape (3, n_tau));
``aggregate`` sums them over the dataset (and over DDP ranks, through MONAI's ``Cumulative`` buffers) and
reports the dataset-level curves ``Dice(tau) = 2TP / (2TP + FP + FN)`` and ``IoU(tau) = TP / (TP + FP + FN)``,
their maximum and the threshold reaching it.  Because ``IoU = Dice / (2 - Dice)`` is increasing in Dice,
both maxima are reached at the same tau.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from ._quantize import as_thresholds

__all__ = ["as_items", "overlap_counts", "MaskOverlapMetric"]

ArrayLike = np.ndarray | torch.Tensor


def as_items(data: ArrayLike | Sequence[ArrayLike], name: str) -> list[torch.Tensor]:
    """Split a batch-first array (B, C, ...) or a sequence of channel-first arrays into a list of tensors.

    NumPy inputs become tensors (no copy where possible); tensors keep their device.

    Raises:
        ValueError: ``data`` is neither a non-empty sequence nor an array with a batch dimension.
    """
    if isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise ValueError(f"{name} is an empty sequence.")
        return [torch.as_tensor(d).as_subclass(torch.Tensor) for d in data]
    if isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim >= 1:
        # plain tensors: MONAI MetaTensor metadata is not needed to count pixels
        return list(torch.as_tensor(data).as_subclass(torch.Tensor).unbind(0))
    raise ValueError(
        f"{name} must be a batch-first array or a sequence of channel-first arrays, got {type(data)}."
    )


def overlap_counts(
    score: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """TP, FP and FN of the masks ``score >= tau`` against ``target``, at every tau.

    Args:
        score: scores in [0, 1], any shape (e.g. (1, H, W) or (1, D, H, W)).
        target: foreground, same shape (bool or {0, 1}).
        thresholds: ascending taus, shape (n_tau,), float64, on the device of ``score``.
        valid: optional bool mask of the pixels that count, same shape.

    Returns:
        int64 tensor of shape (3, n_tau): rows TP, FP, FN.
    """
    s = score.reshape(-1).to(torch.float64)
    fg = target.reshape(-1).bool()
    if valid is not None:
        keep = valid.reshape(-1).bool()
        s, fg = s[keep], fg[keep]
    n_tau = thresholds.numel()
    # index of the largest tau <= s (-1 when s is below every tau): one pass whatever n_tau
    bucket = torch.searchsorted(thresholds, s, right=True)  # in 0..n_tau; 0 means never predicted
    fg_hist = torch.bincount(bucket[fg], minlength=n_tau + 1)[1:]
    bg_hist = torch.bincount(bucket[~fg], minlength=n_tau + 1)[1:]
    # predicted at tau_i <=> bucket >= i: reverse cumulative sums
    tp = fg_hist.flip(0).cumsum(0).flip(0)
    fp = bg_hist.flip(0).cumsum(0).flip(0)
    fn = fg.sum() - tp
    return torch.stack([tp, fp, fn])


class MaskOverlapMetric(CumulativeIterationMetric):
    """Streaming best-threshold Dice and IoU of binarised score maps against GT masks (2D or 3D).

    Call it per batch with ``y_pred`` score maps and ``y`` masks, then ``aggregate()``; ``reset()`` starts a
    new round.  Correct under DDP: the per-image counts are gathered across ranks before summation.

    Args:
        thresholds: taus, ascending, each in [0, 1) (default ``np.arange(0, 1, 0.01)``).
        spatial_dims: 2 or 3 to enforce; None accepts both (inferred per image).

    Example::

        metric = MaskOverlapMetric()
        metric(y_pred=cams, y=masks)               # cams (B, 1, H, W) in [0, 1], masks (B, 1, H, W)
        metric(y_pred=cams3d, y=masks3d, ignore=ignore3d)
        result = metric.aggregate()                # {"dice": ..., "iou": ..., "threshold": ..., ...}
    """

    def __init__(
        self, thresholds: Sequence[float] | np.ndarray | None = None, spatial_dims: int | None = None
    ):
        super().__init__()
        taus = as_thresholds(np.arange(0, 1, 0.01) if thresholds is None else thresholds)
        if np.any(np.diff(taus) <= 0):
            raise ValueError("thresholds must be strictly increasing.")
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims must be 2, 3 or None, got {spatial_dims}.")
        self.thresholds = taus
        self.spatial_dims = spatial_dims

    def __call__(  # type: ignore[override]
        self,
        y_pred: ArrayLike | Sequence[ArrayLike],
        y: ArrayLike | Sequence[ArrayLike],
        ignore: ArrayLike | Sequence[ArrayLike] | None = None,
    ) -> torch.Tensor:
        """Add a batch.

        Args:
            y_pred: score maps (B, 1, *spatial) in [0, 1], or a sequence of (1, *spatial); torch or NumPy.
            y: GT foreground masks, same shapes.
            ignore: optional ignore masks, same shapes; ignored pixels that are not foreground are excluded.

        Returns:
            this batch's counts, int64 (B, 3, n_tau) (rows TP, FP, FN).
        """
        preds, targets = as_items(y_pred, "y_pred"), as_items(y, "y")
        ignores = [None] * len(preds) if ignore is None else as_items(ignore, "ignore")
        if not len(preds) == len(targets) == len(ignores):
            raise ValueError(
                f"y_pred, y and ignore must hold the same number of images, got {len(preds)}, {len(targets)}"
                f" and {len(ignores)}."
            )
        counts = torch.stack(
            [self._compute_tensor(p, t, ignore=i) for p, t, i in zip(preds, targets, ignores, strict=True)]
        )
        self.extend(counts)
        return counts

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Counts (3, n_tau) of one channel-first image (1, *spatial)."""
        ignore = kwargs.get("ignore")
        dims = y_pred.ndim - 1
        if y_pred.shape[0] != 1 or dims not in (2, 3) or (self.spatial_dims not in (None, dims)):
            raise ValueError(
                f"y_pred items must be (1, *spatial) with {self.spatial_dims or '2 or 3'} spatial dims, "
                f"got {tuple(y_pred.shape)}."
            )
        if y is None or tuple(y.shape) != tuple(y_pred.shape):
            raise ValueError(
                f"y must match y_pred's shape {tuple(y_pred.shape)}, "
                f"got {None if y is None else tuple(y.shape)}."
            )
        if not torch.isfinite(y_pred).all() or y_pred.min() < 0 or y_pred.max() > 1:
            raise ValueError("y_pred must be finite and min-max normalised to [0, 1].")
        target = y.to(y_pred.device).bool()
        valid = None
        if ignore is not None:
            if tuple(ignore.shape) != tuple(y_pred.shape):
                raise ValueError(
                    f"ignore must match y_pred's shape {tuple(y_pred.shape)}, got {tuple(ignore.shape)}."
                )
            # as PxAP: an ignored pixel still counts when it is foreground
            valid = ~ignore.to(y_pred.device).bool() | target
        taus = torch.as_tensor(self.thresholds, dtype=torch.float64, device=y_pred.device)
        return overlap_counts(y_pred, target, taus, valid).cpu()

    def aggregate(self) -> dict[str, Any]:  # type: ignore[override]
        """Dataset-level results.

        Returns:
            ``dice``, ``iou``: maxima over tau of the dataset-level curves (fractions in [0, 1]);
            ``threshold``: the first tau reaching them; ``mean_dice``: mean per-image Dice at that tau over
            images with some GT foreground; ``dice_curve``, ``iou_curve``: (n_tau,) float64 tensors;
            ``num_images``.  Values are NaN when no pixel is foreground or predicted at any tau.

        Raises:
            RuntimeError: no image was added since the last ``reset()``.
        """
        buffer = self.get_buffer()
        if buffer is None or len(buffer) == 0:
            raise RuntimeError("MaskOverlapMetric.aggregate() called before any image was added.")
        counts = buffer.to(torch.float64)  # (N, 3, n_tau)
        tp, fp, fn = counts.sum(0)
        dice_curve = 2 * tp / (2 * tp + fp + fn)
        iou_curve = tp / (tp + fp + fn)
        if torch.isnan(dice_curve).all():
            best = 0
            dice = iou = float("nan")
        else:
            # first maximum, NaN-safe: the smallest tau wins a tie
            best = int(torch.argmax(torch.nan_to_num(dice_curve, nan=-1.0)))
            dice, iou = float(dice_curve[best]), float(iou_curve[best])
        itp, ifp, ifn = counts[:, 0, best], counts[:, 1, best], counts[:, 2, best]
        has_fg = (itp + ifn) > 0
        per_image = 2 * itp[has_fg] / (2 * itp[has_fg] + ifp[has_fg] + ifn[has_fg])
        return {
            "dice": dice,
            "iou": iou,
            "threshold": float(self.thresholds[best]),
            "mean_dice": float(per_image.mean()) if per_image.numel() else float("nan"),
            "dice_curve": dice_curve,
            "iou_curve": iou_curve,
            "num_images": int(counts.shape[0]),
        }
