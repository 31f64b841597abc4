"""Ignite handlers so that MONAI engines (``SupervisedEvaluator``, ``Workflow``) use the WSOL metrics
directly.

Every handler subclasses :class:`monai.handlers.IgniteMetricHandler`: ``reset`` at epoch start, ``update`` per
iteration, ``compute`` at epoch end (DDP-safe: the wrapped metric gathers its buffers across ranks).  The
wrapped metrics return dictionaries; as MONAI's handlers record one number, ``engine.state.metrics[name]``
holds the entry ``value_key`` of that dictionary and, with ``save_details=True``, the whole dictionary goes to
``engine.state.metric_details[name]`` (where MONAI's handlers put their per-image details).

Expected ``engine.state.output`` (batch dict, or MONAI's decollated list of per-image dicts; the key names
are arguments of each handler):

- ``"cam"``: score map of the GT class, (B, 1, *spatial) or per image (1, *spatial), min-max normalised to
  [0, 1], 2D or 3D;
- ``"gt_boxes"``: per image the GT boxes in the CAM's grid, as a list (boxes are not collated): a
  :class:`~monai_wsol.boxes.Boxes`, or a (k, 4) / (k, 6) array in the handler's ``box_convention`` --
  ``"standard"`` by default (MONAI ``StandardMode``, what datalists and ``mask_to_boxes`` give), or
  ``"protocol"`` (the WSOL reference's ``[x0, y0, x1, y1]``, x along the last axis);
- ``"gt_mask"`` (and optionally an ignore mask key): GT foreground, same layout as ``"cam"``;
- ``"pred"``: class scores (B, C) or per image (C,); ``"label"``: class index (B,) / (B, 1) or per image ();
- optionally ``"pred_cam"``: the top-1 class's score map, same layout as ``"cam"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.utils import IgniteInfo, min_version, optional_import

from monai_wsol.boxes import BoxConvention

from .box_accuracy import BoxAccuracyMetric
from .localization import LocalizationAccuracyMetric
from .mask_overlap import MaskOverlapMetric
from .pxap import PxAPMetric

reinit__is_reduced, _ = optional_import(
    "ignite.metrics.metric",
    IgniteInfo.OPT_IMPORT_VERSION,
    min_version,
    "reinit__is_reduced",
    as_type="decorator",
)

__all__ = [
    "from_engine_output",
    "WSOLMetricHandler",
    "BoxAccuracyHandler",
    "PositiveBoxAccuracyHandler",
    "PxAPHandler",
    "MaskOverlapHandler",
    "LocalizationAccuracyHandler",
]


def _gather(data: Any, key: str | None, stack: bool) -> Any:
    """One key of a batch dict or of a decollated list of dicts (stacked into a batch when possible)."""
    if key is None:
        return None
    if isinstance(data, dict):
        if key not in data:
            raise KeyError(f"engine.state.output has no key {key!r} (keys: {sorted(data)}).")
        return data[key]
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], dict):
        missing = [i for i, d in enumerate(data) if key not in d]
        if missing:
            raise KeyError(
                f"engine.state.output[{missing[0]}] has no key {key!r} (keys: {sorted(data[missing[0]])})."
            )
        items = [d[key] for d in data]
        if stack and all(isinstance(x, (torch.Tensor, np.ndarray)) for x in items):
            try:
                return torch.stack([torch.as_tensor(x) for x in items])
            except RuntimeError:  # different sizes: leave a list of channel-first items
                return items
        return items
    raise TypeError(f"engine.state.output must be a dict or a list of dicts, got {type(data)}.")


def from_engine_output(keys: Sequence[str | None], unstacked: Sequence[str] = ()) -> Callable[[Any], tuple]:
    """An ``output_transform`` picking ``keys`` from ``engine.state.output`` in order (None gives None).

    Per-image values of a decollated output are stacked into batch tensors, except for the keys in
    ``unstacked`` (e.g. variable-length box lists), which stay lists.
    """

    def _transform(output: Any) -> tuple:
        return tuple(_gather(output, k, stack=k not in unstacked) for k in keys)

    return _transform


class WSOLMetricHandler(IgniteMetricHandler):
    """Ignite handler of a WSOL metric whose ``aggregate()`` returns a dict.

    Args:
        metric_fn: a metric called as ``metric_fn(*output)`` per iteration, with ``aggregate()`` and
            ``reset()``.
        value_key: entry of the aggregated dict recorded as the handler's value (``engine.state.metrics``).
        output_transform: maps ``engine.state.output`` to the tuple of ``metric_fn``'s positional arguments.
        save_details: also store the whole aggregated dict in ``engine.state.metric_details[name]``.
    """

    def __init__(
        self, metric_fn: Any, value_key: str, output_transform: Callable, save_details: bool = True
    ) -> None:
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
        self.value_key = value_key
        # the arguments are not a (y_pred, y) pair of per-sample lists: never let ignite unroll them
        self._skip_unrolling = True

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Feed one iteration: ``output`` is the tuple of the metric's positional arguments."""
        self.metric_fn(*output)

    def compute(self) -> Any:
        """The aggregated dict's ``value_key`` entry; the whole dict goes to ``metric_details``."""
        result = self.metric_fn.aggregate()
        if self.value_key not in result:
            raise KeyError(
                f"{self.metric_fn.__class__.__name__} has no result {self.value_key!r}: {sorted(result)}."
            )
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("please call the attach() function to connect expected engine first.")
            self._engine.state.metric_details[self._name] = result  # type: ignore[attr-defined]
        value = result[self.value_key]
        return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


class BoxAccuracyHandler(WSOLMetricHandler):
    """MaxBoxAcc (``multi_contour=False``, value ``"MaxBoxAcc"``) or MaxBoxAccV2 (``True``,
    ``"MaxBoxAccV2"``).

    Args:
        multi_contour: every region a candidate (V2) or the largest only (v1).
        value_key: recorded entry; default ``"MaxBoxAccV2"`` or ``"MaxBoxAcc"``.
        cam_key, boxes_key: keys of the score maps and GT boxes in ``engine.state.output``.
        output_transform: overrides the key-based transform; must return ``(cams, gt_boxes)``.
        save_details: store the whole result dict in ``engine.state.metric_details``.
        box_convention: convention of the GT boxes (``monai_wsol.boxes``): ``"standard"`` (default: MONAI
            ``StandardMode``, as datalists hold them) or ``"protocol"``; bare arrays are read in it and
            converted through :class:`~monai_wsol.boxes.Boxes`, a ``Boxes`` of the other convention raises.
        metric_kwargs: passed to :class:`~.box_accuracy.BoxAccuracyMetric` (thresholds, iou_thresholds, ...).
    """

    def __init__(
        self,
        multi_contour: bool = False,
        value_key: str | None = None,
        cam_key: str = "cam",
        boxes_key: str = "gt_boxes",
        output_transform: Callable | None = None,
        save_details: bool = True,
        box_convention: BoxConvention = "standard",
        **metric_kwargs: Any,
    ) -> None:
        if not multi_contour:
            metric_kwargs.setdefault("iou_thresholds", (50,))
        super().__init__(
            BoxAccuracyMetric(multi_contour=multi_contour, box_convention=box_convention, **metric_kwargs),
            value_key or ("MaxBoxAccV2" if multi_contour else "MaxBoxAcc"),
            output_transform or from_engine_output([cam_key, boxes_key], unstacked=[boxes_key]),
            save_details,
        )


class PositiveBoxAccuracyHandler(BoxAccuracyHandler):
    """:class:`BoxAccuracyHandler` over the images that have a GT box.

    The WSOL protocol scores box accuracy on images that contain the object; lesion data also has negatives
    (no box), which the box metric rejects. Their maps still count in PxAP and Dice. Arguments are those of
    ``BoxAccuracyHandler`` (``box_convention`` ``"standard"`` by default: datalist boxes are MONAI
    ``StandardMode``) with its default key-based ``output_transform`` (``(cams, gt_boxes)``).
    """

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """``output`` = ``(cams, gt_boxes)``; images with no box are skipped."""
        cams, boxes = output[0], output[1]
        keep = [i for i, b in enumerate(boxes) if len(b) > 0]
        if keep:  # a batch of negatives only adds nothing
            self.metric_fn([cams[i] for i in keep], [boxes[i] for i in keep], *output[2:])


class PxAPHandler(WSOLMetricHandler):
    """PxAP (percent) of the score maps against GT masks; ``ignore_key`` names optional ignore masks."""

    def __init__(
        self,
        threshold_step: float = 0.01,
        cam_key: str = "cam",
        mask_key: str = "gt_mask",
        ignore_key: str | None = None,
        value_key: str = "PxAP",
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            PxAPMetric(threshold_step),
            value_key,
            output_transform or from_engine_output([cam_key, mask_key, ignore_key]),
            save_details,
        )


class MaskOverlapHandler(WSOLMetricHandler):
    """Best-threshold Dice (default value) or IoU (``value_key="iou"``) of binarised score maps vs GT masks.

    ``positives_only=True`` scores only the images whose GT mask is not empty, as the WSOL protocol scores
    localization on images that contain the object: a negative's min-max normalised CAM still reaches 1
        somewhere,
    so with negatives included the dataset-level Dice mostly measures how many negatives there are. Negatives
    are passed with an all-ignore mask (zero counts; still in ``num_images``).
    """

    def __init__(
        self,
        thresholds: Sequence[float] | np.ndarray | None = None,
        spatial_dims: int | None = None,
        cam_key: str = "cam",
        mask_key: str = "gt_mask",
        ignore_key: str | None = None,
        value_key: str = "dice",
        output_transform: Callable | None = None,
        save_details: bool = True,
        positives_only: bool = False,
    ) -> None:
        super().__init__(
            MaskOverlapMetric(thresholds, spatial_dims),
            value_key,
            output_transform or from_engine_output([cam_key, mask_key, ignore_key]),
            save_details,
        )
        self.positives_only = positives_only

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add a batch: ``output`` = ``(cams, gt_masks, ignore_or_None)``.

        With ``positives_only``, empty-mask images are skipped.
        """
        if self.positives_only:
            # a negative is wholly ignored rather than dropped: it adds zero counts, so every DDP rank still
            # adds rows (a rank whose images were all negatives would otherwise have nothing to gather)
            cams, masks = output[0], output[1]
            ignores = output[2] if len(output) > 2 else None
            new_ignores = []
            for i in range(len(masks)):
                mask = torch.as_tensor(masks[i])
                if bool((mask > 0).any()):
                    keep = torch.zeros_like(mask, dtype=torch.bool) if ignores is None else ignores[i]
                    new_ignores.append(keep)
                else:
                    new_ignores.append(torch.ones_like(mask, dtype=torch.bool))
            output = (cams, masks, new_ignores)
        self.metric_fn(*output)


class LocalizationAccuracyHandler(WSOLMetricHandler):
    """Top-1 Loc (default value), Top-k Loc or GT-known Loc; see
    :class:`~.localization.LocalizationAccuracyMetric`.

    Args:
        num_classes: number of classes.
        value_key: recorded entry, e.g. ``"top1_loc"``, ``"top5_loc"``, ``"gt_known_loc"``,
            ``"top1_loc_fixed"``.
        pred_key, label_key, cam_key, boxes_key, pred_cam_key: keys in ``engine.state.output``
            (``pred_cam_key=None``: no predicted-class CAM).
        output_transform: overrides the key-based transform; must return
            ``(scores, labels, cams, gt_boxes, pred_cams_or_None)``.
        save_details: store the whole result dict in ``engine.state.metric_details``.
        box_convention: convention of the GT boxes, as :class:`BoxAccuracyHandler` (``"standard"`` default).
        metric_kwargs: passed to the metric (thresholds, iou_threshold, fixed_threshold, topk, ...).
    """

    def __init__(
        self,
        num_classes: int,
        value_key: str = "top1_loc",
        pred_key: str = "pred",
        label_key: str = "label",
        cam_key: str = "cam",
        boxes_key: str = "gt_boxes",
        pred_cam_key: str | None = None,
        output_transform: Callable | None = None,
        save_details: bool = True,
        box_convention: BoxConvention = "standard",
        **metric_kwargs: Any,
    ) -> None:
        keys = [pred_key, label_key, cam_key, boxes_key, pred_cam_key]
        super().__init__(
            LocalizationAccuracyMetric(num_classes, box_convention=box_convention, **metric_kwargs),
            value_key,
            output_transform or from_engine_output(keys, unstacked=[boxes_key]),
            save_details,
        )
