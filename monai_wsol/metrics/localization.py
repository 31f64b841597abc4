"""Classification-aware localization accuracy: Top-1 Loc, Top-5 Loc and GT-known Loc, 2D and 3D, streaming.

Definitions (``delta`` = ``iou_threshold``, 0.5 by default; "the box" = the box(es) extracted from the CAM
of the ground-truth class at threshold tau, exactly as MaxBoxAcc does: largest region in v1 mode, every
region as a candidate with ``multi_contour=True``; an image's IoU is the best over its candidate boxes and
its GT boxes):

- **GT-known Loc(tau)**: percentage of images whose box has IoU >= delta with a GT box, the class being
  given (this is BoxAcc(tau, delta)).
- **Top-1 Loc(tau)**: percentage of images whose top-1 predicted class is the GT class AND whose box has
  IoU >= delta.  When the class is right the top-1 class's CAM is the GT class's CAM, so no other CAM is
  needed.
- **Top-5 Loc(tau)**: percentage of images whose GT class is among the 5 highest-scoring classes AND whose
  box has IoU >= delta (the box of the GT class's guess among the five).
- **Predicted-class BoxAcc(tau)** (only when the CAM of the top-1 class is given): percentage of images whose
  top-1 class's box has IoU >= delta, the class being ignored (what a deployed model localizes).

Ties: a class's rank is the number of classes scoring strictly higher plus the number scoring equally with
a lower index (a stable descending sort, as ``argmax`` picks the first maximum), and the GT class is in the
top k when its rank is < k.  "Best tau" is the first threshold maximising the dataset-level figure; each
figure has its own best tau.  Images without GT boxes count for the classification accuracies only.

GT boxes are compared in the protocol's convention (``monai_wsol.boxes``); they may be given as
:class:`~monai_wsol.boxes.Boxes` of either convention or as bare arrays in the metric's ``box_convention``
(the protocol's by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from monai_wsol.boxes import BoxConvention, Boxes, check_convention_name

from ._quantize import as_thresholds
from .box_accuracy import as_gt_boxes, best_iou_curve
from .mask_overlap import ArrayLike, as_items
from .volume import distinct_boxes

__all__ = ["class_rank", "best_iou_per_threshold", "LocalizationAccuracyMetric"]


def class_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank of each label among the class scores (0 = top-1), ties broken towards the lower class index.

    Args:
        scores: logits or probabilities, shape (B, C).
        labels: class indices, shape (B,).

    Returns:
        int64 ranks, shape (B,).
    """
    own = scores.gather(1, labels[:, None])
    index = torch.arange(scores.shape[1], device=scores.device)[None, :]
    ahead = (scores > own) | ((scores == own) & (index < labels[:, None]))
    return ahead.sum(1)


def best_iou_per_threshold(
    score: np.ndarray | torch.Tensor,
    gt_boxes: Boxes | np.ndarray,
    thresholds: np.ndarray,
    multi_region: bool = False,
    connectivity: int = 26,
) -> np.ndarray:
    """Best IoU between the boxes of ``score`` at each threshold and ``gt_boxes`` (shape (n_tau,)).

    Boxes and IoUs are computed once per distinct mask (at most 256) and mapped back to the thresholds.

    Args:
        score: (H, W) map or (D, H, W) volume in [0, 1].
        gt_boxes: (k, 4) or (k, 6) int boxes, k >= 1, in the map's grid: a :class:`~monai_wsol.boxes.Boxes`
            of either convention, or a bare array in the protocol's convention.
        thresholds: taus in [0, 1).
        multi_region: every contour / component is a candidate (V2) instead of the largest only.
        connectivity: 3D neighbourhood (26, 18 or 6).
    """
    # only the best IoU over a level's boxes matters: their order does not (the default, faster 2D path)
    boxes, inverse = distinct_boxes(score, thresholds, multi_region, connectivity)
    return best_iou_curve(boxes, gt_boxes)[inverse]


def _has_boxes(boxes: Boxes | ArrayLike) -> bool:
    """Whether an image's GT holds at least one box (a Boxes, a tensor or an array)."""
    if isinstance(boxes, Boxes):
        return len(boxes) > 0
    if isinstance(boxes, torch.Tensor):  # np.size would return the tensor's size method, always truthy
        return boxes.numel() > 0
    return np.asarray(boxes).size > 0


class LocalizationAccuracyMetric(CumulativeIterationMetric):
    """Streaming Top-1 Loc, Top-5 Loc, GT-known Loc (and predicted-class BoxAcc), at a fixed tau and the best
    tau.

    Per image it stores the GT label, the GT class's rank and the best-IoU curve over the thresholds;
    ``aggregate`` thresholds the curves at ``iou_threshold``.  Correct under DDP (MONAI ``Cumulative``
    buffers are gathered across ranks).  All figures are percentages.

    Args:
        num_classes: number of classes C (scores are (B, C)).
        thresholds: CAM thresholds tau in [0, 1), ascending (default ``np.arange(0, 1, 0.001)``, as MaxBoxAcc,
            so that GT-known Loc equals its BoxAcc curve).
        iou_threshold: delta, the IoU a box needs to count as correct.
        multi_contour: every contour (2D) / component (3D) is a candidate box (V2 style) instead of the
            largest only.
        fixed_threshold: the fixed tau reported next to the best tau; must be one of ``thresholds``.  The
            default 0.2 is CAM's (Zhou et al., 2016) "20% of the max" rule.
        topk: k of the "Top-k Loc" figure (5, as ILSVRC).
        connectivity: 3D neighbourhood for the components (26, 18 or 6).
        box_convention: the convention of ``gt_boxes`` (``monai_wsol.boxes``): ``"standard"`` or
            ``"protocol"`` reads bare arrays in it and rejects :class:`~monai_wsol.boxes.Boxes` of the other
            one; ``None`` (default) lets each ``Boxes`` carry its own and reads bare arrays as protocol.

    Example::

        metric = LocalizationAccuracyMetric(num_classes=3)
        metric(y_pred=logits, y=labels, cam=gt_class_cams, gt_boxes=boxes)   # cams (B, 1, *spatial)
        out = metric.aggregate()   # out["top1_loc"], out["top1_loc_threshold"], out["top1_loc_fixed"], ...
    """

    def __init__(
        self,
        num_classes: int,
        thresholds: Sequence[float] | np.ndarray | None = None,
        iou_threshold: float = 0.5,
        multi_contour: bool = False,
        fixed_threshold: float = 0.2,
        topk: int = 5,
        connectivity: int = 26,
        box_convention: BoxConvention | None = None,
    ) -> None:
        super().__init__()
        self.box_convention = check_convention_name(box_convention, "box_convention", allow_none=True)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}.")
        self.thresholds = as_thresholds(np.arange(0, 1, 0.001) if thresholds is None else thresholds)
        hit = np.flatnonzero(np.abs(self.thresholds - fixed_threshold) <= 1e-9)
        if hit.size == 0:
            raise ValueError(f"fixed_threshold {fixed_threshold} is not one of the thresholds.")
        self.fixed_index = int(hit[0])
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.multi_contour = multi_contour
        self.topk = topk
        self.connectivity = connectivity

    def _labels(self, y: ArrayLike | Sequence[Any], batch: int) -> torch.Tensor:
        labels = (
            torch.as_tensor(np.asarray(y) if isinstance(y, (list, tuple)) else y)
            .detach()
            .cpu()
            .as_subclass(torch.Tensor)
        )
        if labels.ndim == 2 and labels.shape[1] == self.num_classes and self.num_classes > 1:
            labels = labels.argmax(1)  # one-hot
        labels = labels.reshape(-1)
        if labels.numel() != batch or (labels.is_floating_point() and (labels != labels.round()).any()):
            raise ValueError(
                f"y must hold {batch} integer class labels (or one-hot rows), "
                f"got shape {tuple(labels.shape)}."
            )
        labels = labels.long()
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"y holds labels outside [0, {self.num_classes - 1}]: {labels.tolist()}.")
        return labels

    @staticmethod
    def _check_cams(cams: list[torch.Tensor], name: str) -> None:
        for i, cam in enumerate(cams):
            if cam.ndim not in (3, 4) or cam.shape[0] != 1:
                raise ValueError(
                    f"{name}[{i}] must be channel-first (1, *spatial) in 2D or 3D, got {tuple(cam.shape)}."
                )

    def _iou_curves(self, cams: list[torch.Tensor], boxes: list[np.ndarray | None]) -> torch.Tensor:
        """Best-IoU curves (B, n_tau) of channel-first maps against checked boxes (NaN rows where None)."""
        curves = np.full((len(cams), self.thresholds.size), np.nan)
        for i, (cam, gt) in enumerate(zip(cams, boxes, strict=True)):
            if gt is not None:
                curves[i] = best_iou_per_threshold(
                    cam[0], gt, self.thresholds, self.multi_contour, self.connectivity
                )
        return torch.from_numpy(curves)

    def __call__(  # type: ignore[override]
        self,
        y_pred: ArrayLike,
        y: ArrayLike | Sequence[int],
        cam: ArrayLike | Sequence[ArrayLike],
        gt_boxes: Sequence[Boxes | ArrayLike],
        pred_cam: ArrayLike | Sequence[ArrayLike] | None = None,
    ) -> torch.Tensor:
        """Add a batch.

        Args:
            y_pred: class scores (logits or probabilities), shape (B, C).
            y: GT class indices (B,) or (B, 1), or one-hot (B, C).
            cam: CAMs of the GT class, (B, 1, *spatial) or a sequence of (1, *spatial), min-max normalised
                to [0, 1]; 2D or 3D.
            gt_boxes: per image the GT boxes in the CAM's grid (k = 0: no box), a
                :class:`~monai_wsol.boxes.Boxes` or a (k, 4) / (k, 6) array in ``box_convention``.
            pred_cam: optional CAMs of the top-1 predicted class, same layout as ``cam``.

        Returns:
            this batch's GT-class best-IoU curves, float64 (B, n_tau) (NaN rows for images without boxes).
        """
        scores = torch.as_tensor(y_pred).detach().cpu().to(torch.float64).as_subclass(torch.Tensor)
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"y_pred must be (B, {self.num_classes}) class scores, got {tuple(scores.shape)}."
            )
        if not torch.isfinite(scores).all():
            raise ValueError("y_pred contains NaN or infinite scores.")
        labels = self._labels(y, scores.shape[0])
        cams = as_items(cam, "cam")
        self._check_cams(cams, "cam")
        if len(cams) != scores.shape[0] or len(gt_boxes) != scores.shape[0]:
            raise ValueError(
                f"y_pred, cam and gt_boxes must describe the same images, got {scores.shape[0]}, {len(cams)} "
                f"and {len(gt_boxes)}."
            )
        # an image without boxes counts for the classification figures only
        boxes = [
            as_gt_boxes(b, c.shape[1:], f"gt_boxes[{i}]", self.box_convention) if _has_boxes(b) else None
            for i, (b, c) in enumerate(zip(gt_boxes, cams, strict=True))
        ]
        pred_cams = None
        if pred_cam is not None:
            pred_cams = as_items(pred_cam, "pred_cam")
            self._check_cams(pred_cams, "pred_cam")
            if len(pred_cams) != len(cams) or any(
                p.shape != c.shape for p, c in zip(pred_cams, cams, strict=False)
            ):
                raise ValueError("pred_cam must match cam image by image in number and shape.")
        ranks, gt_curves, pred_curves = self._compute_tensor(
            scores, labels, cams=cams, boxes=boxes, pred_cams=pred_cams
        )
        self.extend(labels, ranks, gt_curves, pred_curves)
        return gt_curves

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> list[torch.Tensor]:
        """Per-image buffers of a checked batch.

        Args:
            y_pred: class scores (B, C); y: labels (B,); kwargs ``cams`` (B channel-first maps), ``boxes``
                (B checked box arrays or None) and ``pred_cams`` (B maps or None).

        Returns:
            ``[ranks (B,), gt_curves (B, n_tau), pred_curves (B, n_tau)]`` (NaN curves where undefined).
        """
        gt_curves = self._iou_curves(kwargs["cams"], kwargs["boxes"])
        pred_curves = torch.full_like(gt_curves, float("nan"))
        if kwargs.get("pred_cams") is not None:
            pred_curves = self._iou_curves(kwargs["pred_cams"], kwargs["boxes"])
        return [class_rank(y_pred, y), gt_curves, pred_curves]

    def aggregate(self) -> dict[str, Any]:  # type: ignore[override]
        """Dataset-level figures (percent).

        Returns:
            for each figure ``f`` in ``top1_loc``, ``topk_loc`` (k = ``topk``), ``gt_known_loc`` and, when
            ``pred_cam`` was given, ``pred_class_box_acc``: ``f`` (at its best tau), ``f_threshold`` (that
                tau),
            ``f_fixed`` (at ``fixed_threshold``), ``f_curve`` (n_tau,), ``f_per_class`` and
            ``f_fixed_per_class`` (num_classes,) at the same two taus (NaN for classes without images with
            boxes); plus ``top1_cls``, ``topk_cls`` (classification accuracy over all images),
            ``fixed_threshold``, ``num_images`` and ``num_images_with_boxes``.
        """
        buffers = self.get_buffer()
        if buffers is None:
            raise RuntimeError("LocalizationAccuracyMetric.aggregate() called before any image was added.")
        labels, ranks, gt_curves, pred_curves = buffers
        has_box = ~torch.isnan(gt_curves[:, 0])
        correct_box = gt_curves >= self.iou_threshold  # NaN compares False
        top1, topk = (ranks < 1)[:, None], (ranks < self.topk)[:, None]
        hits = {
            "top1_loc": correct_box & top1,
            f"top{self.topk}_loc": correct_box & topk,
            "gt_known_loc": correct_box,
        }
        if not torch.isnan(pred_curves).all():
            hits["pred_class_box_acc"] = pred_curves >= self.iou_threshold
        out: dict[str, Any] = {
            "top1_cls": 100.0 * float((ranks < 1).double().mean()),
            f"top{self.topk}_cls": 100.0 * float((ranks < self.topk).double().mean()),
            "fixed_threshold": float(self.thresholds[self.fixed_index]),
            "num_images": int(labels.numel()),
            "num_images_with_boxes": int(has_box.sum()),
        }
        one_hot = torch.nn.functional.one_hot(labels[has_box], self.num_classes).double()  # (N_box, C)
        per_class_count = one_hot.sum(0)
        for name, hit in hits.items():
            rate = hit[has_box].double()  # (N_box, n_tau)
            curve = (
                100.0 * rate.mean(0) if rate.shape[0] else torch.full((self.thresholds.size,), float("nan"))
            )
            best = int(torch.argmax(torch.nan_to_num(curve, nan=-1.0)))  # first maximum
            per_class = (
                100.0 * (one_hot.T @ rate) / per_class_count[:, None]
            )  # (C, n_tau), NaN for empty classes
            out.update(
                {
                    name: float(curve[best]),
                    f"{name}_threshold": float(self.thresholds[best]),
                    f"{name}_fixed": float(curve[self.fixed_index]),
                    f"{name}_curve": curve,
                    f"{name}_per_class": per_class[:, best],
                    f"{name}_fixed_per_class": per_class[:, self.fixed_index],
                }
            )
        return out
