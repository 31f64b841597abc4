"""BoxAcc curves, MaxBoxAcc and MaxBoxAccV2 as streaming MONAI metrics (2D score maps and 3D volumes).

Definitions (Choe et al., CVPR 2020, reference ``wsolevaluation``):

- BoxAcc(tau, delta) is the percentage of images whose best pixel-inclusive IoU, over the boxes extracted at
  score threshold tau and all the image's GT boxes, is at least delta;
- MaxBoxAcc is the maximum over tau of BoxAcc(tau, 0.5) with only the largest contour kept per threshold;
- MaxBoxAccV2 is the mean over delta in {0.3, 0.5, 0.7} of max over tau of BoxAcc(tau, delta), with every
  contour (outer and hole) a candidate box.

Box conventions: every box here is compared in the protocol's convention (``monai_wsol.boxes``: 2D
``[x0, y0, x1, y1]`` with x along the last array axis, 3D in array-axis order, IoU pixel-inclusive).  GT boxes
may be given as :class:`~monai_wsol.boxes.Boxes` of either convention (converted here) or, as the reference's
drop-in API, as bare arrays read in the protocol's convention unless the metric's ``box_convention`` says
otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import Cumulative

from monai_wsol.boxes import BoxConvention, Boxes, check_box_convention, check_convention_name

from ._quantize import as_thresholds
from .contours import boxes_from_scoremaps, scoremap_best_iou_curves

__all__ = [
    "box_iou_inclusive",
    "best_iou_curve",
    "as_gt_boxes",
    "BoxAccuracyMetric",
    "MaxBoxAccMetric",
    "MaxBoxAccV2Metric",
]


def _protocol_coords(boxes: Boxes | Any) -> np.ndarray:
    """The protocol-convention coordinates of a :class:`Boxes` (converted), or a bare array as it is."""
    if isinstance(boxes, Boxes):
        return boxes.to_protocol().coords
    if isinstance(boxes, torch.Tensor):
        return boxes.detach().cpu().numpy()
    return np.asarray(boxes)


def box_iou_inclusive(a: Boxes | np.ndarray, b: Boxes | np.ndarray) -> np.ndarray:
    """Pixel/voxel-inclusive IoU of every box of ``a`` with every box of ``b``.

    Args:
        a: boxes (n, 2 * d): a :class:`~monai_wsol.boxes.Boxes` of either convention, or a bare array in the
            protocol's convention, rows ``[lo_0 .. lo_{d-1}, hi_0 .. hi_{d-1}]`` (d = 2: x0, y0, x1, y1 with x
            along the last array axis; d = 3: array-axis order).
        b: boxes (m, 2 * d), likewise.

    Returns:
        (n, m) float64 IoUs; extents are ``hi - lo + 1``, and a non-positive union gives 0, exactly as the
        reference's ``calculate_multiple_iou`` (same integer arithmetic, same final division).
    """
    a = np.asarray(_protocol_coords(a), dtype=np.int64)
    b = np.asarray(_protocol_coords(b), dtype=np.int64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] % 2:
        raise ValueError(f"boxes must be (n, 2d) and (m, 2d) arrays, got shapes {a.shape} and {b.shape}.")
    d = a.shape[1] // 2
    lo = np.maximum(a[:, None, :d], b[None, :, :d])
    hi = np.minimum(a[:, None, d:], b[None, :, d:])
    inter = np.prod(np.maximum(0, hi - lo + 1), axis=-1)
    area_a = np.prod(a[:, d:] - a[:, :d] + 1, axis=-1)
    area_b = np.prod(b[:, d:] - b[:, :d] + 1, axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    degenerate = union <= 0
    iou = inter / np.where(degenerate, 1, union)
    iou[degenerate] = 0.0
    return iou


def best_iou_curve(
    boxes_per_tau: Sequence[np.ndarray], gt_boxes: Boxes | np.ndarray, inverse: np.ndarray | None = None
) -> np.ndarray:
    """Best IoU at each threshold: max over the threshold's boxes and all GT boxes.

    Args:
        boxes_per_tau: one (k, 2d) protocol-convention box array per threshold (as returned by
            ``boxes_from_scoremap`` or ``boxes_from_scorevolume``); thresholds sharing one array object are
            computed once.  With ``inverse``, one array per distinct mask instead (as ``distinct_level_boxes``
            returns).
        gt_boxes: GT boxes (g, 2d), g >= 1: a :class:`~monai_wsol.boxes.Boxes` of either convention or a
            bare array in the protocol's convention.
        inverse: optional (n_tau,) index of each threshold's array in ``boxes_per_tau``.

    Returns:
        (n_tau,) float64 best IoU per threshold.
    """
    gt = np.asarray(_protocol_coords(gt_boxes), dtype=np.int64)
    if inverse is not None:
        return _best_iou_distinct(boxes_per_tau, gt)[np.asarray(inverse)]
    index: dict[int, int] = {}
    distinct: list[np.ndarray] = []
    inverse = np.empty(len(boxes_per_tau), dtype=np.int64)
    for t, boxes in enumerate(boxes_per_tau):
        j = index.setdefault(id(boxes), len(distinct))
        if j == len(distinct):
            distinct.append(np.asarray(boxes))
        inverse[t] = j
    return _best_iou_distinct(distinct, gt)[inverse]


def _best_iou_distinct(distinct: Sequence[np.ndarray], gt: np.ndarray) -> np.ndarray:
    """Best IoU (max over boxes and GT) of each of several box arrays, with one vectorised IoU call."""
    counts = np.fromiter((len(b) for b in distinct), dtype=np.int64, count=len(distinct))
    starts = np.zeros(len(distinct), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    per_box = box_iou_inclusive(np.concatenate(distinct, axis=0), gt).max(axis=1)
    return np.maximum.reduceat(per_box, starts)


def as_gt_boxes(
    boxes: Boxes | Any,
    spatial_shape: Sequence[int],
    name: str = "y",
    convention: BoxConvention | None = None,
) -> np.ndarray:
    """GT boxes as an int64 (g, 2d) protocol-convention array, checked against the map's spatial shape.

    Args:
        boxes: a :class:`~monai_wsol.boxes.Boxes` (converted to the protocol's convention), or a bare
            (g, 2d) / (2d,) array, tensor or sequence in ``convention`` (the protocol's when ``None``: the
            reference's drop-in API).
        spatial_shape: the score map's (H, W) or (D, H, W).
        name: how error messages call ``boxes``.
        convention: the convention this boundary expects: a :class:`Boxes` of the other one raises, and bare
            arrays are read in it.  ``None``: a :class:`Boxes` carries its own, bare arrays are protocol.

    Returns:
        (g, 2d) int64 rows ``[x0, y0, x1, y1]`` in 2D (x along the last axis), array-axis order in 3D; ends
        at start + extent (the reference's ``x + w``), compared pixel-inclusively.

    Raises:
        ValueError: wrong convention (both named), wrong shape or spatial dims, no box, non-integer values,
            inverted boxes or boxes outside the map.
    """
    d = len(spatial_shape)
    check_convention_name(convention, allow_none=True)
    if isinstance(boxes, Boxes):
        if convention is not None:
            check_box_convention(boxes, convention, name)
        if boxes.spatial_dims != d:
            raise ValueError(
                f"{name} holds {boxes.spatial_dims}D boxes for a {d}D map {tuple(spatial_shape)}."
            )
        arr = boxes.to_protocol().coords
    else:
        arr = _protocol_coords(boxes)
        if arr.ndim == 1 and arr.size == 2 * d:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 2 * d:
            raise ValueError(f"{name} must hold boxes of {2 * d} coordinates, got shape {arr.shape}.")
        if convention == "standard" and arr.size:
            try:
                arr = Boxes.standard(arr, d).to_protocol().coords
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one box of {2 * d} coordinates, got shape {arr.shape}.")
    if not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{name} box coordinates must be integers, got {arr.tolist()}.")
    arr = arr.astype(np.int64)
    if (arr[:, d:] < arr[:, :d]).any():
        raise ValueError(f"{name} has an inverted box (end < start): {arr.tolist()}.")
    # 2D protocol boxes are (x, y), i.e. the reverse of the array's (H, W) order
    extent = np.asarray(spatial_shape[::-1] if d == 2 else spatial_shape, dtype=np.int64)
    # an end equal to the size is accepted: it is the end (start + extent) of a box reaching the border, and
    # the reference's int-truncated rescaling of such a box lands there too
    if (arr < 0).any() or (arr[:, d:] > extent).any():
        raise ValueError(f"{name} has a box outside the {tuple(spatial_shape)} map: {arr.tolist()}.")
    return arr


def _batch_maps(y_pred: Any, spatial_dims: int | None) -> tuple[np.ndarray, int]:
    """(B, *spatial) float64 array and the spatial rank from a (B, [1,] *spatial) tensor or array."""
    if isinstance(y_pred, (list, tuple)):  # a decollated batch: channel-first items of one shape
        y_pred = [
            p.detach().to(device="cpu", dtype=torch.float64) if isinstance(p, torch.Tensor) else p
            for p in y_pred
        ]
        y_pred = (
            np.stack([np.asarray(p, dtype=np.float64) for p in y_pred]) if y_pred else np.zeros((0, 1, 1))
        )
    if isinstance(y_pred, torch.Tensor):
        y_pred = y_pred.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(y_pred, dtype=np.float64)
    if spatial_dims is None:
        if arr.ndim == 3:
            spatial_dims = 2
        elif arr.ndim in (4, 5) and arr.shape[1] == 1:
            spatial_dims = arr.ndim - 2
        else:
            raise ValueError(
                f"y_pred must be (B, H, W), (B, 1, H, W) or (B, 1, D, H, W), got shape {arr.shape}; "
                "pass spatial_dims for (B, D, H, W)."
            )
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if arr.ndim == spatial_dims + 2:
        if arr.shape[1] != 1:
            raise ValueError(f"y_pred must have one channel, got shape {arr.shape}.")
        arr = arr[:, 0]
    if arr.ndim != spatial_dims + 1:
        raise ValueError(
            f"y_pred must be (B, [1,] *spatial) with {spatial_dims} spatial dims, got {arr.shape}."
        )
    return arr, spatial_dims


class BoxAccuracyMetric(Cumulative):
    """BoxAcc(tau, delta) curves of the WSOL protocol, streamed per batch (DDP-safe via MONAI's Cumulative).

    Each call stores, per image, whether it is correct at every (delta, tau); ``aggregate()`` gathers the
    images of all ranks and returns the curves and their maxima.  2D maps go through the exact OpenCV
    contour path (:func:`~.contours.boxes_from_scoremap`), 3D volumes through
    ``monai_wsol.metrics.volume.boxes_from_scorevolume`` (connected components).

    Args:
        thresholds: score thresholds tau in [0, 1), default ``np.arange(0, 1, 0.001)``; see
            ``cam_curve_interval``.
        iou_thresholds: deltas in percent (the reference's ``--iou_threshold_list``), default (30, 50, 70).
        multi_contour: False keeps only the largest region per threshold (MaxBoxAcc), True keeps them all
            (MaxBoxAccV2).
        cam_curve_interval: if given, ``thresholds = np.arange(0, 1, cam_curve_interval)`` as the reference.
        spatial_dims: 2 or 3, or None to infer it from ``y_pred`` (rank 3 or 4 with one channel: 2D; rank 5:
            3D).
        connectivity: 3D only, 26 (default), 18 or 6.
        num_workers: for a batch of 2D maps, threads running the compiled kernels (or, without numba,
            processes running the OpenCV path); 0: in the calling thread.
        box_convention: the convention of the GT boxes ``y`` (``monai_wsol.boxes``): ``"standard"`` or
            ``"protocol"`` reads bare arrays in it and rejects :class:`~monai_wsol.boxes.Boxes` of the other
            one; ``None`` (default, the reference's drop-in API) lets each ``Boxes`` carry its own and reads
            bare arrays in the protocol's convention.

    Example::

        metric = MaxBoxAccV2Metric()
        for batch in loader:
            metric(y_pred=cams, y=[b["boxes"] for b in decollate_batch(batch)])
        result = metric.aggregate()  # {"MaxBoxAccV2": ..., "BoxAcc@50": ..., "box_acc": (3, 1000), ...}
    """

    def __init__(
        self,
        thresholds: Sequence[float] | np.ndarray | None = None,
        iou_thresholds: Sequence[float] = (30, 50, 70),
        multi_contour: bool = False,
        cam_curve_interval: float | None = None,
        spatial_dims: int | None = None,
        connectivity: int = 26,
        num_workers: int = 0,
        box_convention: BoxConvention | None = None,
    ) -> None:
        super().__init__()
        self.box_convention = check_convention_name(box_convention, "box_convention", allow_none=True)
        if cam_curve_interval is not None:
            if thresholds is not None:
                raise ValueError("give thresholds or cam_curve_interval, not both.")
            if not 0.0 < cam_curve_interval < 1.0:
                raise ValueError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval}.")
            thresholds = np.arange(0, 1, cam_curve_interval)
        self.thresholds = as_thresholds(np.arange(0, 1, 0.001) if thresholds is None else thresholds)
        deltas = [float(d) for d in iou_thresholds]
        if not deltas or any(not 0.0 < d <= 100.0 for d in deltas):
            raise ValueError(f"iou_thresholds must be percentages in (0, 100], got {list(iou_thresholds)}.")
        self.iou_thresholds = deltas
        # the reference compares with (delta / 100) computed from the integer percentage
        self._iou_cut = np.array([d / 100 for d in deltas], dtype=np.float64)
        self.multi_contour = bool(multi_contour)
        self.spatial_dims = spatial_dims
        self.connectivity = connectivity
        self.num_workers = num_workers

    def _curves(self, maps: np.ndarray, gts: list[np.ndarray], spatial_dims: int) -> np.ndarray:
        """(B, n_tau) best IoU per image and threshold."""
        if spatial_dims == 2:
            # the compiled batch path: no box lists, maps checked and quantised inside (exactly the same
            # values)
            curves = scoremap_best_iou_curves(
                maps, self.thresholds, gts, self.multi_contour, self.num_workers
            )
            if curves is not None:
                return curves
            # only the best IoU over each threshold's boxes matters: the default order (any) will do
            boxes = boxes_from_scoremaps(list(maps), self.thresholds, self.multi_contour, self.num_workers)
        else:
            # imported lazily: the 3D extractor is an optional sibling module
            from .volume import boxes_from_scorevolume

            boxes = [
                boxes_from_scorevolume(v, self.thresholds, self.multi_contour, connectivity=self.connectivity)
                for v in maps
            ]
        return np.stack([best_iou_curve(b, g) for b, g in zip(boxes, gts, strict=True)])

    def __call__(self, y_pred: Any, y: Sequence[Any]) -> torch.Tensor:
        """Add a batch.

        Args:
            y_pred: score maps (B, 1, H, W) / (B, H, W), or volumes (B, 1, D, H, W), in [0, 1]; torch (any
                device) or NumPy, or a list of B channel-first items (a decollated batch).
            y: B GT box sets in the map's pixel grid, each a :class:`~monai_wsol.boxes.Boxes` or a (g, 4) /
                (g, 6) array in ``box_convention`` (protocol by default: ``[x0, y0, x1, y1]``, x along the
                last axis).

        Returns:
            (B, n_tau) float64 tensor of each image's best IoU per threshold.
        """
        maps, spatial_dims = _batch_maps(y_pred, self.spatial_dims)
        if len(y) != len(maps):
            raise ValueError(f"y must hold one box array per image: {len(y)} for a batch of {len(maps)}.")
        gts = [as_gt_boxes(g, maps.shape[1:], f"y[{i}]", self.box_convention) for i, g in enumerate(y)]
        if len(maps) == 0:
            return torch.zeros((0, len(self.thresholds)), dtype=torch.float64)
        curves = self._curves(maps, gts, spatial_dims)
        self.add_curves(curves)
        return torch.from_numpy(curves)

    def add_curves(self, curves: np.ndarray | torch.Tensor) -> None:
        """Add images by their best-IoU-per-threshold curves (B, n_tau), e.g. computed by worker processes
        with :func:`best_iou_curve`; only whether each image is correct at every (delta, tau) is kept."""
        if isinstance(curves, torch.Tensor):
            curves = curves.detach().to(device="cpu", dtype=torch.float64).numpy()
        curves = np.asarray(curves, dtype=np.float64)
        if curves.ndim != 2 or curves.shape[1] != len(self.thresholds):
            raise ValueError(f"curves must be (B, {len(self.thresholds)}), got shape {curves.shape}.")
        correct = curves[:, None, :] >= self._iou_cut[None, :, None]
        self.extend(torch.from_numpy(correct.astype(np.uint8)))

    def aggregate(self) -> dict[str, Any]:
        """Curves and maxima over all images seen (on all ranks).

        Returns:
            dict with ``box_acc`` (n_delta, n_tau) percentages, ``thresholds``, ``iou_thresholds``,
            ``BoxAcc@{d}`` (max over tau) and ``tau@{d}`` (first best tau) per delta, ``mean_max_box_acc``
            (mean over deltas of the maxima), ``num_images``, and ``MaxBoxAcc`` (largest region, delta 50;
            present when 50 is a delta and ``multi_contour`` is False) or ``MaxBoxAccV2`` (all regions, mean
            over deltas; present when ``multi_contour`` is True).
        """
        buffer = self.get_buffer()
        if buffer is None or len(buffer) == 0:
            raise RuntimeError(f"{self.__class__.__name__}.aggregate() called before any image was added.")
        correct = buffer.to(torch.int64).sum(dim=0).numpy()
        n = int(buffer.shape[0])
        box_acc = correct * 100.0 / float(n)
        maxima = box_acc.max(axis=1)
        best = box_acc.argmax(axis=1)
        out: dict[str, Any] = {
            "box_acc": box_acc,
            "thresholds": self.thresholds.copy(),
            "iou_thresholds": list(self.iou_thresholds),
            "num_images": n,
            "mean_max_box_acc": float(np.average(maxima)),
        }
        for d, m, b in zip(self.iou_thresholds, maxima, best, strict=True):
            key = f"{d:g}"
            out[f"BoxAcc@{key}"] = float(m)
            out[f"tau@{key}"] = float(self.thresholds[b])
        if self.multi_contour:
            out["MaxBoxAccV2"] = out["mean_max_box_acc"]
        elif 50.0 in self.iou_thresholds:
            out["MaxBoxAcc"] = out["BoxAcc@50"]
        return out


class MaxBoxAccMetric(BoxAccuracyMetric):
    """MaxBoxAcc (v1): largest region per threshold, delta = 50 (add 70 via ``iou_thresholds=(50, 70)``)."""

    def __init__(self, iou_thresholds: Sequence[float] = (50,), **kwargs: Any) -> None:
        super().__init__(iou_thresholds=iou_thresholds, multi_contour=False, **kwargs)


class MaxBoxAccV2Metric(BoxAccuracyMetric):
    """MaxBoxAccV2: every region is a candidate, mean over deltas (30, 50, 70) of each delta's best BoxAcc."""

    def __init__(self, iou_thresholds: Sequence[float] = (30, 50, 70), **kwargs: Any) -> None:
        super().__init__(iou_thresholds=iou_thresholds, multi_contour=True, **kwargs)
