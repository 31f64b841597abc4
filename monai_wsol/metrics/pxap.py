"""PxAP: pixel average precision of score maps against GT masks, as a streaming MONAI metric.

Definition (Choe et al., CVPR 2020, reference ``wsolevaluation`` ``MaskEvaluator``): the area under the
pixel-level precision-recall curve obtained by thresholding the score maps, computed from dataset-level
histograms of the scores at foreground and at background pixels (ignore-region pixels that are not
foreground excluded) over the bin edges ``[0, step, ..., 1 - step, 1, 2, 3]``:
``PxAP = 100 * sum(precision[1:] * diff(recall))`` over the bins holding predictions.  Works for any spatial
rank (2D maps, 3D volumes): it is a per-pixel/voxel figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import Cumulative

from ._quantize import as_score_array

__all__ = ["pxap_bin_edges", "pxap_histograms", "pxap_from_histograms", "PxAPMetric"]


def pxap_bin_edges(threshold_step: float = 0.01) -> np.ndarray:
    """The reference's bin edges ``np.append(np.arange(0, 1, step), [1, 2, 3])`` (shape (n_tau + 3,))."""
    if not 0.0 < threshold_step < 1.0:
        raise ValueError(f"threshold_step must be in (0, 1), got {threshold_step}.")
    return np.append(np.arange(0, 1, threshold_step), [1.0, 2.0, 3.0])


def _as_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if (
        arr.shape != shape
        and arr.size == int(np.prod(shape))
        and np.squeeze(arr).shape == tuple(n for n in shape if n != 1)
    ):
        arr = arr.reshape(shape)  # only singleton (channel) axes differ, e.g. (1, H, W) against (H, W)
    if arr.shape != shape:
        raise ValueError(f"{name} must have the score map's shape {shape}, got {arr.shape}.")
    return arr.astype(bool)


def pxap_histograms(
    scoremap: Any, gt_mask: Any, ignore_mask: Any | None = None, threshold_step: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the scores at foreground and at counted background pixels of one map.

    Args:
        scoremap: score map or volume in [0, 1] (NumPy or torch), any spatial rank.
        gt_mask: foreground (union of instance masks), same shape, nonzero = foreground.
        ignore_mask: optional ignore region, same shape; its non-foreground pixels are not counted.
        threshold_step: bin width (the reference's ``cam_curve_interval``).

    Returns:
        ``(fg_hist, bg_hist)``, int64 arrays of shape (n_bins,) = (len(edges) - 1,).
    """
    smap = as_score_array(scoremap, "scoremap")
    fg = _as_mask(gt_mask, smap.shape, "gt_mask")
    background = ~fg
    if ignore_mask is not None:
        background &= ~_as_mask(ignore_mask, smap.shape, "ignore_mask")
    edges = pxap_bin_edges(threshold_step)
    fg_hist, _ = np.histogram(smap[fg], bins=edges)
    bg_hist, _ = np.histogram(smap[background], bins=edges)
    return fg_hist.astype(np.int64), bg_hist.astype(np.int64)


def pxap_from_histograms(fg_hist: np.ndarray, bg_hist: np.ndarray) -> dict[str, Any]:
    """PxAP (percent) and the precision-recall curve from dataset-level histograms.

    Bins are ascending (``[0, step)``, ..., ``[1, 2)``, ``[2, 3]``); the curve runs from the highest threshold
    down: entry i counts the pixels in the top i + 1 bins, as the reference's reverse cumulative sums.

    Returns:
        dict with ``PxAP`` (float), ``precision`` and ``recall`` (n_bins,) float64 arrays (precision is NaN
        where no pixel is predicted, as in the reference) and ``valid`` (n_bins,) bool (bins with
        predictions).

    Raises:
        ValueError: no foreground pixel, or no pixel at all.
    """
    fg_hist = np.asarray(fg_hist, dtype=np.float64)
    bg_hist = np.asarray(bg_hist, dtype=np.float64)
    tp = fg_hist[::-1].cumsum()
    fn = fg_hist.sum() - tp
    fp = bg_hist[::-1].cumsum()
    if ((tp + fn) <= 0).all():
        raise ValueError("PxAP: no positive (foreground) ground-truth pixel in the evaluated set.")
    if ((tp + fp) <= 0).all():
        raise ValueError("PxAP: no pixel was counted (empty histograms).")
    valid = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    # same expression and summation order as the reference, hence the same float64 result
    pxap = (precision[1:] * np.diff(recall))[valid[1:]].sum() * 100
    return {"PxAP": float(pxap), "precision": precision, "recall": recall, "valid": valid}


class PxAPMetric(Cumulative):
    """PxAP streamed per batch; per-batch histograms are gathered across DDP ranks by MONAI's Cumulative.

    Args:
        threshold_step: histogram bin width (0.01 as the reference's CLI default, 0.001 for fine curves).

    Call ``metric(y_pred, y, ignore=None)`` with score maps (B, 1, *spatial) or (B, *spatial) in [0, 1] and
    masks of the same shape (torch on any device or NumPy); ``aggregate()`` returns the dict of
    :func:`pxap_from_histograms` plus ``thresholds`` (the lower bin edges).
    """

    def __init__(self, threshold_step: float = 0.01) -> None:
        super().__init__()
        self.threshold_step = float(threshold_step)
        self.edges = pxap_bin_edges(self.threshold_step)

    def __call__(self, y_pred: Any, y: Any, ignore: Any | None = None) -> torch.Tensor:
        """Add a batch; returns its (2, n_bins) int64 histograms (foreground, background)."""
        if len(y_pred) != len(y) or (ignore is not None and len(ignore) != len(y)):
            raise ValueError("y_pred, y (and ignore) must have the same batch size.")
        hist = np.zeros((2, len(self.edges) - 1), dtype=np.int64)
        for i in range(len(y_pred)):
            fg, bg = pxap_histograms(
                y_pred[i], y[i], None if ignore is None else ignore[i], self.threshold_step
            )
            hist[0] += fg
            hist[1] += bg
        batch_hist = torch.from_numpy(hist)
        self.append(batch_hist)
        return batch_hist

    def aggregate(self) -> dict[str, Any]:
        """PxAP over everything seen on all ranks (see :func:`pxap_from_histograms`)."""
        buffer = self.get_buffer()
        if buffer is None or len(buffer) == 0:
            raise RuntimeError("PxAPMetric.aggregate() called before any batch was added.")
        hist = buffer.sum(dim=0).numpy()
        out = pxap_from_histograms(hist[0], hist[1])
        out["thresholds"] = self.edges[:-1].copy()
        return out
