"""The one evaluation of a trained localizer: every figure and curve of a split, from an evaluator's outputs.

:class:`LocalizationReport` is an ignite handler for :class:`~monai_wsol.engines.inference.CAMEvaluator`. It
collects each image's class probabilities, label, map and ground truth, and at the end computes, with
:mod:`monai_wsol.metrics`:

- MaxBoxAccV2 (every contour; BoxAcc at IoU 30/50/70), MaxBoxAcc (largest contour; at 50 and 70), Top-1 and
  GT-known localization accuracy, each as a curve over the CAM threshold tau (step ``box_step``) and as its
  best-tau value (the WSOL protocol's definition);
- best-tau Dice and IoU of the binarised map against the GT mask, PxAP, and per-lesion detection counts
  (lesions found at IoU >= 0.3, false components) at every mask threshold, over the lesion images;
- accuracy (all classes) and the AUC of "a lesion" (the summed probability of the lesion classes) over all
  images.

Box figures are measured on the images of the lesion class(es) ``lesion_class`` (the protocol scores
localization where the object is; with several lesion classes, each image with its own class's map, the
evaluator's ``cam_class="label"``); their GT boxes are the datalist's ``boxes`` when the batch carries them
(MONAI standard mode, converted through :class:`monai_wsol.boxes.Boxes`), else one box per 8-connected (2D) /
26-connected (3D) region of the GT mask. :func:`figures_at_validation_tau` reads a test split's curves at the
thresholds chosen on a validation split (never on test). The bundle's ``evaluate`` and the benchmark both use
this module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.metrics import compute_roc_auc
from scipy import ndimage

from monai_wsol.boxes import Boxes
from monai_wsol.engines.handlers import write_rows
from monai_wsol.io_utils import atomic_path
from monai_wsol.metrics import MaxBoxAccMetric, MaxBoxAccV2Metric, PxAPMetric
from monai_wsol.metrics.detection import detection_curve
from monai_wsol.metrics.localization import LocalizationAccuracyMetric
from monai_wsol.metrics.mask_overlap import MaskOverlapMetric
from monai_wsol.metrics.threshold import decision_threshold, select_threshold

__all__ = [
    "SplitCurves",
    "split_curves",
    "lesion_classes",
    "figures_at_validation_tau",
    "LocalizationReport",
    "mask_boxes",
    "save_curves",
    "load_curves",
]

logger = logging.getLogger(__name__)


@dataclass
class SplitCurves:
    """Per-threshold figures of one split (percent unless said), what tau choice and reports need."""

    thresholds: np.ndarray  # box taus (step ``box_step``)
    boxacc_v2: np.ndarray  # (3, T) at IoU 0.3 / 0.5 / 0.7, all contours
    boxacc_v1: np.ndarray  # (2, T) at IoU 0.5 / 0.7, largest contour
    top1_loc: np.ndarray  # (T,)
    gt_known_loc: np.ndarray  # (T,)
    mask_thresholds: np.ndarray  # (M,) (step ``mask_step``)
    dice: np.ndarray  # (M,) dataset-level Dice over the lesion images, fraction
    iou: np.ndarray  # (M,)
    scalars: dict[str, float] = field(default_factory=dict)
    # (M, 4) per-lesion detection counts over the lesion images (lesions, found, components, false
    # components; monai_wsol.metrics.detection), empty without masks
    detection: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    # (N,) every image's lesion probability (summed over the lesion classes) and whether it is a lesion image:
    # what a decision threshold is chosen on (empty in curves saved before they were kept)
    lesion_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    is_lesion: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def mask_boxes(mask: np.ndarray) -> Boxes:
    """One box per connected region of a spatial-only GT mask (8-connected in 2D, 26 in 3D), standard mode."""
    mask = np.asarray(mask) > 0
    labelled, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    coords = [
        [s.start for s in slc] + [s.stop for s in slc]
        for slc in ndimage.find_objects(labelled)
        if slc is not None
    ]
    return Boxes.standard(
        np.asarray(coords, dtype=np.int64).reshape(-1, 2 * mask.ndim), spatial_dims=mask.ndim
    )


def lesion_classes(lesion_class: int | Sequence[int]) -> list[int]:
    """The lesion class indices as a non-empty list of distinct ints > 0 (class 0 is "no lesion")."""
    values = [lesion_class] if isinstance(lesion_class, (int, np.integer)) else list(lesion_class)
    if (
        not values
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(
            f"lesion_class must be a class index >= 1 or a list of distinct ones, got {lesion_class!r}."
        )
    return [int(v) for v in values]


def split_curves(
    probs: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    masks: torch.Tensor | None,
    boxes: Sequence[Boxes],
    lesion_class: int | Sequence[int] = 1,
    box_step: float = 0.001,
    mask_step: float = 0.01,
) -> SplitCurves:
    """Every curve and best-tau figure of one split.

    Args:
        probs: (N, K) class probabilities of every image.
        labels: (N,) class indices.
        cams: (P, 1, *spatial) maps in [0, 1] of the lesion images (labels in ``lesion_class``), in their
            order.
        masks: (P, 1, *spatial) GT masks of those images, or ``None`` (no Dice / IoU / PxAP).
        boxes: P GT :class:`~monai_wsol.boxes.Boxes` (any convention), one per lesion image.
        lesion_class: the class, or classes, whose images are localized; the AUC scores "a lesion" by the sum
            of their probabilities (a binary classifier's lesion probability for one class).
        box_step, mask_step: threshold steps of the box and mask curves.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    classes = lesion_classes(lesion_class)
    if max(classes) >= probs.shape[1]:
        raise ValueError(
            f"split_curves: lesion class {max(classes)} but {probs.shape[1]} class probabilities."
        )
    is_lesion = torch.isin(labels, torch.tensor(classes))
    pos = torch.nonzero(is_lesion).reshape(-1)
    if cams.shape[0] != pos.numel() or len(boxes) != pos.numel():
        raise ValueError(
            f"split_curves: {pos.numel()} images of class {lesion_class} but {cams.shape[0]} maps and "
            f"{len(boxes)} box sets."
        )
    if pos.numel() == 0:
        raise ValueError(f"split_curves: no image of class {lesion_class}: localization cannot be measured.")
    spatial_dims = cams.ndim - 2
    taus = np.arange(0, 1, box_step)
    gt = [b.to_protocol() for b in boxes]
    v2 = MaxBoxAccV2Metric(thresholds=taus, spatial_dims=spatial_dims)
    v1 = MaxBoxAccMetric(thresholds=taus, iou_thresholds=(50, 70), spatial_dims=spatial_dims)
    v2(y_pred=cams, y=gt)
    r2 = v2.aggregate()
    loc = LocalizationAccuracyMetric(num_classes=probs.shape[1], thresholds=taus)
    # the GT class's largest-contour best-IoU curves are MaxBoxAcc's: extract the boxes once, feed them to
    # both
    v1.add_curves(loc(y_pred=probs[pos], y=labels[pos], cam=cams, gt_boxes=gt))
    r1, rl = v1.aggregate(), loc.aggregate()
    mask_taus = np.arange(0, 1, mask_step)
    scalars = {
        "MaxBoxAccV2": float(r2["MaxBoxAccV2"]),
        "MaxBoxAcc": float(r1["MaxBoxAcc"]),
        "MaxBoxAcc@70": float(r1["BoxAcc@70"]),
        "BoxAcc@30": float(r2["BoxAcc@30"]),
        "BoxAcc@50": float(r2["BoxAcc@50"]),
        "BoxAcc@70": float(r2["BoxAcc@70"]),
    }
    dice = iou = np.full(mask_taus.shape, np.nan)
    detection = np.zeros((0, 4), np.int64)
    if masks is not None:
        overlap = MaskOverlapMetric(thresholds=mask_taus, spatial_dims=spatial_dims)
        overlap(y_pred=cams, y=masks)
        ro = overlap.aggregate()
        pxap = PxAPMetric(threshold_step=mask_step)
        pxap(y_pred=cams, y=masks)
        dice = np.asarray(ro["dice_curve"], dtype=np.float64)
        iou = np.asarray(ro["iou_curve"], dtype=np.float64)
        scalars.update(Dice=float(ro["dice"]), IoU=float(ro["iou"]), PxAP=float(pxap.aggregate()["PxAP"]))
        # the mask threshold of the best Dice: what a validation split hands to inference as its tau
        scalars["Dice_tau"] = float(mask_taus[int(np.argmax(dice))])
        detection = detection_curve(cams, masks, mask_taus)
        scalars["lesion_images"] = float(pos.numel())
    scalars["accuracy"] = 100.0 * float((probs.argmax(1) == labels).float().mean())
    lesion_scores = probs[:, classes].sum(1)
    scores, lesion = lesion_scores.detach().cpu().double().numpy(), is_lesion.cpu().numpy()
    both = 0 < is_lesion.sum() < len(labels)
    scalars["AUC"] = float(compute_roc_auc(lesion_scores, is_lesion.float())) if both else np.nan
    # the lesion-probability threshold of the best accuracy: what a validation split hands to inference as
    # its decision_threshold (as Dice_tau is its mask threshold); a probability, so at most 1
    scalars["decision_threshold"] = min(decision_threshold(scores, lesion), 1.0) if both else np.nan
    return SplitCurves(
        thresholds=taus,
        boxacc_v2=np.asarray(r2["box_acc"], dtype=np.float64),
        boxacc_v1=np.asarray(r1["box_acc"], dtype=np.float64),
        top1_loc=np.asarray(rl["top1_loc_curve"], dtype=np.float64),
        gt_known_loc=np.asarray(rl["gt_known_loc_curve"], dtype=np.float64),
        mask_thresholds=mask_taus,
        dice=dice,
        iou=iou,
        scalars=scalars,
        detection=detection,
        lesion_scores=scores,
        is_lesion=lesion,
    )


def figures_at_validation_tau(
    val: SplitCurves, test: SplitCurves
) -> tuple[dict[str, float], dict[str, float]]:
    """Test figures at the taus chosen on validation; returns ``(figures, chosen taus)``.

    Besides the CAM thresholds: ``accuracy@val_threshold``, the test accuracy of "lesion or not" with the
    decision threshold on the lesion probability that is best on validation (:func:`decision_threshold`;
    ``taus["decision"]``). The plain ``accuracy`` reads the argmax, i.e. a fixed 0.5 for two classes, which a
    segmenter's top-k probability (the bounds, self-training) is not calibrated to.
    """
    box = select_threshold(val.boxacc_v2, test.boxacc_v2, val.thresholds, "BoxAccV2")
    top1 = select_threshold(val.top1_loc, test.top1_loc, val.thresholds, "Top-1 Loc")
    known = select_threshold(val.gt_known_loc, test.gt_known_loc, val.thresholds, "GT-known Loc")
    figures = {
        "BoxAccV2@val_tau": float(np.mean(box.test_value)),
        "Top-1 Loc": float(top1.test_value),
        "GT-known Loc": float(known.test_value),
    }
    taus = {
        "BoxAccV2@50": float(np.asarray(box.validation_threshold)[1]),
        "Top-1 Loc": float(top1.validation_threshold),
        "GT-known Loc": float(known.validation_threshold),
    }
    if len(val.lesion_scores) and len(test.lesion_scores) and 0 < val.is_lesion.sum() < len(val.is_lesion):
        taus["decision"] = decision_threshold(val.lesion_scores, val.is_lesion)
        decided = test.lesion_scores >= taus["decision"]
        figures["accuracy@val_threshold"] = 100.0 * float(np.mean(decided == test.is_lesion))
    if np.isfinite(val.dice).all() and np.isfinite(test.dice).all():
        dice = select_threshold(val.dice, test.dice, val.mask_thresholds, "Dice")
        figures["Dice@val_tau"] = float(dice.test_value)
        taus["Dice"] = float(dice.validation_threshold)
        if len(test.detection) == len(test.mask_thresholds):
            # per-lesion detection of the test masks at that same threshold
            lesions, found, _, false = test.detection[
                int(np.argmin(np.abs(test.mask_thresholds - taus["Dice"])))
            ]
            figures["LesionSens@val_tau"] = 100.0 * found / lesions if lesions else np.nan
            images = test.scalars.get("lesion_images", np.nan)
            figures["FalseComp@val_tau"] = float(false) / images if images else np.nan
    return figures, taus


_CURVE_FIELDS = (
    "thresholds",
    "boxacc_v2",
    "boxacc_v1",
    "top1_loc",
    "gt_known_loc",
    "mask_thresholds",
    "dice",
    "iou",
    "detection",
    "lesion_scores",
    "is_lesion",
)


def save_curves(curves: SplitCurves, path: str | os.PathLike) -> Path:
    """Write a split's curves to an ``.npz`` and its figures to the ``.json`` and ``.csv`` beside it (one row;
    NaN as null), all atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: getattr(curves, k) for k in _CURVE_FIELDS})
    write_rows(path.parent, path.stem, [curves.scalars])
    return path


def load_curves(path: str | os.PathLike) -> SplitCurves:
    """Read what :func:`save_curves` wrote."""
    import json

    path = Path(path)
    with np.load(path) as z:
        # curves saved before a field existed (e.g. detection) load with its default
        arrays = {k: z[k] for k in _CURVE_FIELDS if k in z}
    (row,) = json.loads(path.with_suffix(".json").read_text())
    return SplitCurves(**arrays, scalars={k: (np.nan if v is None else v) for k, v in row.items()})


def _plain(x: Any) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class LocalizationReport:
    """Collect an evaluator's outputs and write the split's figures and curves at the end.

    Attach to a :class:`~monai_wsol.engines.inference.CAMEvaluator` whose ``batch_keys`` include the mask (and
    ``boxes`` when the datalist has them) and whose ``cam_class`` is ``lesion_class``.

    Args:
        output_dir: where ``<stem>.npz`` (curves), ``<stem>.json`` (figures) and, with ``num_examples``,
            ``<stem>_examples.npz`` (the first lesion images with their maps, masks and GT boxes, for figures)
            are written; ``None`` keeps the results in memory only (:attr:`curves`).
        stem: file stem.
        lesion_class: the lesion class, or classes (see :func:`split_curves`).
        box_step, mask_step: threshold steps.
        num_examples: lesion images kept for the example figure.
        prob_key, label_key, cam_key, mask_key, box_key, image_key: keys of the decollated output.
        box_convention: the convention of ``box_key`` boxes (the datalist's: ``"standard"``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        stem: str = "localization",
        lesion_class: int | Sequence[int] = 1,
        box_step: float = 0.001,
        mask_step: float = 0.01,
        num_examples: int = 0,
        prob_key: str = "prob",
        label_key: str = "label",
        cam_key: str = "cam",
        mask_key: str | None = "mask",
        box_key: str | None = "boxes",
        image_key: str = "image",
        box_convention: str = "standard",
    ) -> None:
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.stem = stem
        self.lesion_class = lesion_classes(lesion_class)
        self.box_step, self.mask_step = float(box_step), float(mask_step)
        self.num_examples = int(num_examples)
        self.prob_key, self.label_key, self.cam_key = prob_key, label_key, cam_key
        self.mask_key, self.box_key, self.image_key = mask_key, box_key, image_key
        self.box_convention = box_convention
        self.curves: SplitCurves | None = None
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[int] = []
        self._cams: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self._boxes: list[Boxes] = []
        self._images: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            self.add(item)

    def add(self, item: Mapping[str, Any]) -> None:
        """Add one decollated item."""
        prob = _plain(item[self.prob_key]).detach().float().cpu().reshape(-1)
        label = _plain(item[self.label_key]).reshape(-1)
        label = int(label.argmax()) if label.numel() == prob.numel() and label.numel() > 1 else int(label[0])
        self._probs.append(prob)
        self._labels.append(label)
        if label not in self.lesion_class:
            return
        cam = _plain(item[self.cam_key]).detach().float().cpu()
        mask = None
        if self.mask_key is not None and item.get(self.mask_key) is not None:
            mask = _plain(item[self.mask_key]).detach().cpu() > 0.5
            if mask.shape[1:] != cam.shape[1:]:
                raise ValueError(
                    f"LocalizationReport: mask {tuple(mask.shape)} and map {tuple(cam.shape)} "
                    "are on different grids; evaluate on the image's own grid."
                )
            self._masks.append(mask)
        given = item.get(self.box_key) if self.box_key is not None else None
        if given is not None and len(given) > 0:
            coords = _plain(given).detach().cpu().numpy().reshape(-1, 2 * (cam.ndim - 1))
            self._boxes.append(Boxes(coords, self.box_convention, cam.ndim - 1))
        elif mask is not None:
            self._boxes.append(mask_boxes(mask[0].numpy()))
        else:
            raise ValueError("LocalizationReport: a lesion image has neither GT boxes nor a GT mask.")
        self._cams.append(cam)
        if len(self._images) < self.num_examples:
            self._images.append(_plain(item[self.image_key]).detach().float().cpu()[0])

    def compute(self) -> SplitCurves:
        """The split's :class:`SplitCurves` from what was added."""
        if not self._probs:
            raise ValueError("LocalizationReport: no image was evaluated.")
        masks = torch.stack(self._masks) if self._masks and len(self._masks) == len(self._cams) else None
        return split_curves(
            torch.stack(self._probs),
            torch.tensor(self._labels),
            torch.stack(self._cams) if self._cams else torch.zeros(0, 1, 1, 1),
            masks,
            self._boxes,
            self.lesion_class,
            self.box_step,
            self.mask_step,
        )

    def examples(self) -> dict[str, np.ndarray]:
        """The first lesion images with their maps, GT masks and GT boxes (standard mode, one row per box,
        ``[image_index, *lo, *hi]``)."""
        n = len(self._images)
        rows = [
            np.c_[np.full(len(b.coords), i), b.to_standard().coords] for i, b in enumerate(self._boxes[:n])
        ]
        out = {
            "images": torch.stack(self._images).numpy() if n else np.zeros((0,)),
            "cams": torch.stack([c[0] for c in self._cams[:n]]).numpy() if n else np.zeros((0,)),
            "gt_boxes": np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 5), dtype=np.int64),
        }
        if self._masks:
            out["gt_masks"] = torch.stack([m[0] for m in self._masks[:n]]).numpy()
        return out

    def complete(self, engine: Engine | None = None) -> None:
        self.curves = self.compute()
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_curves(self.curves, self.output_dir / f"{self.stem}.npz")
            if self.num_examples:
                with atomic_path(self.output_dir / f"{self.stem}_examples.npz", suffix=".npz") as tmp:
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, **self.examples())
        logger.info(
            "%s: %s",
            self.stem,
            ", ".join(f"{k} {v:.4g}" for k, v in self.curves.scalars.items()),
        )
