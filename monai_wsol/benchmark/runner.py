"""The WSOL benchmark: methods x seeds x settings under one budget, choices made on validation only.

One :class:`Benchmark` trains every method of :mod:`monai_wsol.methods` on the same data, network, optimiser,
epochs and batch size, for each seed and each data setting (e.g. the embedded default with and without a
co-occurring distractor), then evaluates it with :mod:`monai_wsol.metrics`:

1. **Hyperparameters** (``search``): each candidate option set of a method is trained with the first seed and
   scored by its *validation* MaxBoxAccV2; the best candidate is the method's choice and its first-seed run is
   reused as that seed's result. The test split is evaluated for every run but never read for a choice.
2. **CAM threshold**: every "@val_tau" figure reads the test curve at the tau that maximises the same curve
   on validation (:func:`monai_wsol.metrics.select_threshold`); the protocol's MaxBoxAcc / MaxBoxAccV2 and the
   best-tau Dice are oracle-on-test by definition and are labelled so in ``results.md``.
3. **Post-hoc maps** (``gradcam``, ``gradcampp``) reuse the trained ``cam`` network of the same seed: no
   training of their own.

Layout of ``bench_dir`` (one folder per run; a run with ``result.json`` is finished and skipped on restart,
an interrupted run continues from its last finished epoch)::

    runs/<setting>/<method>/seed<k>/{result.json, curves.npz, examples.npz, model.pt, log.txt}
    search/<setting>/<method>/cand<i>/seed<k>/...     # hyperparameter candidates (first seed)
    choices_<setting>.json                           # the options chosen per method for that setting
    results.csv, results.md, curves_<setting>.png, examples_<setting>.png

Training is a plain loop over in-memory tensors (the data set is small; MONAI transforms do the deterministic
preprocessing once): each epoch is seeded from ``(seed, epoch)``, so a run resumed at epoch ``e`` draws the same
batches, flips, hidden patches and CutMix boxes as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from monai.transforms import Compose, Resized, ScaleIntensityRangePercentilesd
from scipy import ndimage

from monai_wsol.boxes import Boxes
from monai_wsol.data import load_datalist, make_load_transforms
from monai_wsol.data.synthetic import generate
from monai_wsol.io_utils import atomic_path, atomic_torch_save, atomic_write_json, to_jsonable
from monai_wsol.methods import METHODS, MethodSpec, build_method
from monai_wsol.metrics import MaxBoxAccMetric, MaxBoxAccV2Metric, PxAPMetric, boxes_from_scoremap
from monai_wsol.metrics.localization import LocalizationAccuracyMetric
from monai_wsol.metrics.mask_overlap import MaskOverlapMetric
from monai_wsol.metrics.threshold import select_threshold

__all__ = [
    "SplitData",
    "load_split",
    "TrainConfig",
    "tensor_batches",
    "train_run",
    "evaluate_run",
    "Benchmark",
    "POSTHOC",
    "setup_logging",
]

logger = logging.getLogger("monai_wsol.benchmark")

#: methods that reuse another method's trained network (their maps are computed post hoc)
POSTHOC: dict[str, str] = {"gradcam": "cam", "gradcampp": "cam"}
_LESION = 1  # the class whose CAM localizes (binary lesion / no lesion)


def setup_logging(log_dir: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log the benchmark's progress to stdout and, with ``log_dir``, to ``<log_dir>/benchmark.log`` (once)."""
    logger.setLevel(level)
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        for h in logger.handlers
    ):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    if log_dir is not None:
        path = Path(log_dir) / "benchmark.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not any(
            isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
            for h in logger.handlers
        ):
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(handler)
    logger.propagate = False
    return logger


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SplitData:
    """One split in memory, preprocessed once.

    Attributes:
        images: (N, 1, S, S) float32 in [0, 1] (percentile-scaled, resized to S).
        labels: (N,) int64 class indices.
        masks: (N, 1, S, S) bool GT lesion masks (all False for negatives).
        boxes: per image a (k, 4) int64 array ``[x0, y0, x1, y1]`` in the WSOL protocol's convention
            (``monai_wsol.boxes``: x = column (array axis 1), y = row (axis 0), ends at start + extent, IoU
            pixel-inclusive), one box per 8-connected mask region; (0, 4) for negatives.
        ids: image file names (for the figures).
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    boxes: list[np.ndarray]
    ids: list[str]

    @property
    def positives(self) -> np.ndarray:
        """Indices of the images with a lesion (the ones localization is measured on)."""
        return np.flatnonzero(self.labels.numpy() == _LESION)


def protocol_boxes(mask: np.ndarray) -> np.ndarray:
    """Protocol-convention ``[x0, y0, x1, y1]`` boxes (x = column) of a 2D mask's 8-connected regions, (k, 4)."""
    labelled, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    standard = [[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in ndimage.find_objects(labelled)]
    return Boxes.standard(np.asarray(standard, dtype=np.int64).reshape(-1, 4), 2).to_protocol().coords


def load_split(datalist: str | Path, split: str, image_size: int) -> SplitData:
    """Load a 2D split of a Decathlon-style datalist (image, label, mask) into memory at ``image_size``^2."""
    items = load_datalist(datalist, split, base_dir=Path(datalist).parent)
    preprocess = Compose(
        [
            make_load_transforms(keys=["image", "mask"], spatial_dims=2, mask_keys=["mask"]),
            ScaleIntensityRangePercentilesd(
                "image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
            ),
            Resized(["image", "mask"], spatial_size=(image_size, image_size), mode=["bilinear", "nearest"]),
        ]
    )
    images, masks, labels, boxes, ids = [], [], [], [], []
    for item in items:
        out = preprocess({"image": item["image"], "mask": item["mask"]})
        image = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).float()
        mask = torch.as_tensor(out["mask"]).as_subclass(torch.Tensor) > 0.5
        if image.shape[0] != 1:
            raise ValueError(
                f"{item['image']}: expected a one-channel 2D image, got shape {tuple(image.shape)}."
            )
        images.append(image)
        masks.append(mask)
        labels.append(int(item["label"]))
        boxes.append(protocol_boxes(mask[0].numpy()))
        ids.append(Path(str(item["image"])).name)
    return SplitData(torch.stack(images), torch.tensor(labels), torch.stack(masks), boxes, ids)


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """The budget every method gets (identical across methods).

    ``optimizer`` ``"adam"`` or ``"sgd"`` (momentum ``momentum``); ``schedule`` ``"cosine"`` (to 0 over
    ``epochs``) or ``"step"`` (x ``lr_decay`` every ``lr_step`` epochs, the WSOL protocol's); parameters of
    the classifier and of plug-ins learn at ``new_layer_lr_ratio`` x ``lr`` (the protocol's 10 when the backbone
    is pretrained; 1 from scratch).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    flip: bool = True  # random flip along array axis 0 (left-right for the axial slices of the default data)
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "cosine"
    lr_step: int = 15
    lr_decay: float = 0.1
    new_layer_lr_ratio: float = 1.0

    def make_optimizer(
        self, net: torch.nn.Module
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimiser (two parameter groups: backbone, new layers) and its per-epoch LR schedule."""
        new = [p for n, p in net.named_parameters() if n.startswith("classifier") or "plugin" in n]
        new_ids = {id(p) for p in new}
        old = [p for p in net.parameters() if id(p) not in new_ids]
        groups = [{"params": old, "lr": self.lr}, {"params": new, "lr": self.lr * self.new_layer_lr_ratio}]
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"TrainConfig.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}.")
        if self.schedule == "cosine":
            sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, self.epochs)
            )
        elif self.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.lr_step, gamma=self.lr_decay)
        else:
            raise ValueError(f"TrainConfig.schedule must be 'cosine' or 'step', got {self.schedule!r}.")
        return opt, sched


#: ``batches(epoch, rng)`` -> the epoch's (images, labels) batches; ``rng`` is seeded from (seed, epoch)
BatchesFn = Callable[[int, np.random.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31 - 1)


def _seed_epoch(spec: MethodSpec, seed: int, epoch: int) -> np.random.Generator:
    """Seed every random source a training epoch uses from (seed, epoch) alone (exact resume)."""
    s = _epoch_seed(seed, epoch)
    torch.manual_seed(s)
    for t in spec.train_transforms:
        if hasattr(t, "set_random_state"):
            t.set_random_state(seed=s)
    if spec.batch_fn is not None and hasattr(spec.batch_fn, "set_random_state"):
        spec.batch_fn.set_random_state(seed=s)
    return np.random.default_rng(s)


def tensor_batches(spec: MethodSpec, data: SplitData, batch_size: int, flip: bool = True) -> BatchesFn:
    """Shuffled batches of an in-memory split with a random flip and the method's per-sample transforms."""

    def batches(epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.from_numpy(rng.permutation(data.images.shape[0]))
        for i in range(0, order.numel(), batch_size):
            idx = order[i : i + batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            images = []
            for image in data.images[idx]:
                if flip and rng.random() < 0.5:
                    image = torch.flip(image, dims=(1,))
                for t in spec.train_transforms:
                    image = torch.as_tensor(t({"image": image})["image"]).as_subclass(torch.Tensor)
                images.append(image)
            yield torch.stack(images), data.labels[idx]

    return batches


def train_run(
    spec: MethodSpec,
    batches: BatchesFn,
    config: TrainConfig,
    seed: int,
    run_dir: str | Path,
    device: torch.device | str = "cpu",
) -> float:
    """Train ``spec.net``; checkpoint each epoch (atomic) and resume from the last one.

    Every epoch is seeded from ``(seed, epoch)`` (torch, the method's transforms and batch augmentation, and the
    ``rng`` handed to ``batches``), so a resumed run continues as the uninterrupted one would.

    Returns:
        the seconds spent training in this call (0 when the run was already trained).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    net = spec.net.to(device)
    optimizer, scheduler = config.make_optimizer(net)
    start = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["epoch"]) + 1
        logger.info("%s: resumed after epoch %d", run_dir, start)
    t0 = time.perf_counter()
    for epoch in range(start, config.epochs):
        net.train()
        rng = _seed_epoch(spec, seed, epoch)
        total, count = 0.0, 0
        for step, (images, labels) in enumerate(batches(epoch, rng)):
            loss = spec.training_loss(images.to(device), labels.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{run_dir}: non-finite loss at epoch {epoch}, step {step}.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        scheduler.step()
        atomic_torch_save(
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
            },
            ckpt_path,
        )
        logger.info("%s epoch %d/%d loss %.4f", run_dir, epoch + 1, config.epochs, total / max(count, 1))
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------
def _predict(spec: MethodSpec, data: SplitData, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every image (N, K) and lesion-class maps of the positives (P, 1, S, S) in [0, 1]."""
    net = spec.net
    net.eval()
    with torch.no_grad():
        logits = torch.cat(
            [net(data.images[i : i + batch_size]) for i in range(0, len(data.ids), batch_size)]
        )
    pos = data.positives
    cams = [
        spec.extractor(net, data.images[pos[i : i + batch_size]], _LESION)[1]
        for i in range(0, pos.size, batch_size)
    ]
    return logits.float(), torch.cat(cams).float().clamp(0, 1)


@dataclass
class SplitCurves:
    """Per-threshold figures of one split (percent unless said), what tau choice and the report need."""

    thresholds: np.ndarray  # box taus (step ``box_step``)
    boxacc_v2: np.ndarray  # (3, T) at IoU 0.3 / 0.5 / 0.7, all contours
    boxacc_v1: np.ndarray  # (2, T) at IoU 0.5 / 0.7, largest contour
    top1_loc: np.ndarray  # (T,)
    gt_known_loc: np.ndarray  # (T,)
    mask_thresholds: np.ndarray  # (M,) (step ``mask_step``)
    dice: np.ndarray  # (M,) dataset-level Dice over positives, fraction
    iou: np.ndarray  # (M,)
    scalars: dict[str, float] = field(default_factory=dict)


def split_curves(
    spec: MethodSpec, data: SplitData, box_step: float = 0.001, mask_step: float = 0.01
) -> tuple[SplitCurves, torch.Tensor]:
    """Every curve and threshold-free figure of one split; also returns the positives' maps."""
    logits, cams = _predict(spec, data)
    pos = data.positives
    taus = np.arange(0, 1, box_step)
    boxes = [data.boxes[i] for i in pos]
    v2, v1 = MaxBoxAccV2Metric(thresholds=taus), MaxBoxAccMetric(thresholds=taus, iou_thresholds=(50, 70))
    v2(y_pred=cams, y=boxes)
    r2 = v2.aggregate()
    loc = LocalizationAccuracyMetric(num_classes=logits.shape[1], thresholds=taus)
    # the GT class's largest-contour best-IoU curves are MaxBoxAcc's: extract the boxes once, feed them to both
    v1.add_curves(loc(y_pred=logits[pos], y=data.labels[pos], cam=cams, gt_boxes=boxes))
    r1 = v1.aggregate()
    rl = loc.aggregate()
    mask_taus = np.arange(0, 1, mask_step)
    overlap = MaskOverlapMetric(thresholds=mask_taus, spatial_dims=2)
    overlap(y_pred=cams, y=data.masks[pos])
    ro = overlap.aggregate()
    pxap = PxAPMetric(threshold_step=mask_step)
    pxap(y_pred=cams, y=data.masks[pos])
    probs = torch.softmax(logits, dim=1)
    labels = data.labels
    scalars = {
        "MaxBoxAccV2": float(r2["MaxBoxAccV2"]),
        "MaxBoxAcc": float(r1["MaxBoxAcc"]),
        "MaxBoxAcc@70": float(r1["BoxAcc@70"]),
        "BoxAcc@30": float(r2["BoxAcc@30"]),
        "BoxAcc@50": float(r2["BoxAcc@50"]),
        "BoxAcc@70": float(r2["BoxAcc@70"]),
        "Dice": float(ro["dice"]),
        "IoU": float(ro["iou"]),
        "PxAP": float(pxap.aggregate()["PxAP"]),
        "accuracy": 100.0 * float((probs.argmax(1) == labels).float().mean()),
        "AUC": float(compute_roc_auc(probs[:, _LESION], (labels == _LESION).float())),
    }
    curves = SplitCurves(
        thresholds=taus,
        boxacc_v2=np.asarray(r2["box_acc"], dtype=np.float64),
        boxacc_v1=np.asarray(r1["box_acc"], dtype=np.float64),
        top1_loc=np.asarray(rl["top1_loc_curve"], dtype=np.float64),
        gt_known_loc=np.asarray(rl["gt_known_loc_curve"], dtype=np.float64),
        mask_thresholds=mask_taus,
        dice=np.asarray(ro["dice_curve"], dtype=np.float64),
        iou=np.asarray(ro["iou_curve"], dtype=np.float64),
        scalars=scalars,
    )
    return curves, cams


def honest_figures(val: SplitCurves, test: SplitCurves) -> tuple[dict[str, float], dict[str, float]]:
    """Test figures at the taus chosen on validation; returns ``(figures, chosen taus)``."""
    box = select_threshold(val.boxacc_v2, test.boxacc_v2, val.thresholds, "BoxAccV2")
    top1 = select_threshold(val.top1_loc, test.top1_loc, val.thresholds, "Top-1 Loc")
    known = select_threshold(val.gt_known_loc, test.gt_known_loc, val.thresholds, "GT-known Loc")
    dice = select_threshold(val.dice, test.dice, val.mask_thresholds, "Dice")
    figures = {
        "BoxAccV2@val_tau": float(np.mean(box.test_value)),
        "Top-1 Loc": float(top1.test_value),
        "GT-known Loc": float(known.test_value),
        "Dice@val_tau": float(dice.test_value),
    }
    taus = {
        "BoxAccV2@50": float(np.asarray(box.validation_threshold)[1]),
        "Top-1 Loc": float(top1.validation_threshold),
        "GT-known Loc": float(known.validation_threshold),
        "Dice": float(dice.validation_threshold),
    }
    return figures, taus


def _examples(data: SplitData, cams: torch.Tensor, tau: float, count: int) -> dict[str, Any]:
    """The first ``count`` test positives with their maps, GT and predicted boxes (all contours at ``tau``)."""
    pos = data.positives[:count]
    maps = cams[: pos.size, 0].numpy()
    pred = [np.asarray(boxes_from_scoremap(maps[j], [tau], multi_contour=True)[0]) for j in range(pos.size)]
    gt = [data.boxes[i] for i in pos]
    return {
        "images": data.images[pos, 0].numpy(),
        "cams": maps,
        "gt_masks": data.masks[pos, 0].numpy(),
        "gt_boxes": _flat_boxes(gt),
        "pred_boxes": _flat_boxes(pred),
        "tau": float(tau),
        "image_ids": np.asarray([data.ids[i] for i in pos]),
    }


def _flat_boxes(per_image: Sequence[np.ndarray]) -> np.ndarray:
    """Boxes of several images as one pickle-free (M, 5) int64 array of rows ``[image_index, x0, y0, x1, y1]``."""
    rows = [np.c_[np.full(len(b), i), np.asarray(b).reshape(-1, 4)] for i, b in enumerate(per_image)]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 5), dtype=np.int64)


def _atomic_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def evaluate_run(
    spec: MethodSpec, val: SplitData, test: SplitData, box_step: float = 0.001, num_examples: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
    """Evaluate a trained method: ``(result part, curves.npz arrays, examples.npz arrays or None)``."""
    val_curves, _ = split_curves(spec, val, box_step)
    test_curves, test_cams = split_curves(spec, test, box_step)
    honest, taus = honest_figures(val_curves, test_curves)
    result = {
        "val": {**val_curves.scalars, "tau": taus["BoxAccV2@50"]},
        "test": {**test_curves.scalars, **honest},
        "val_tau": taus,
    }
    arrays = {
        "thresholds": test_curves.thresholds,
        "boxacc": test_curves.boxacc_v2,
        "boxacc_v1": test_curves.boxacc_v1,
        "val_boxacc": val_curves.boxacc_v2,
        "mask_thresholds": test_curves.mask_thresholds,
        "dice": test_curves.dice,
    }
    examples = _examples(test, test_cams, taus["BoxAccV2@50"], num_examples) if num_examples else None
    return result, arrays, examples


# ----------------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------------
class Benchmark:
    """Methods x seeds x settings with identical budgets; see the module docstring.

    Args:
        bench_dir: output folder (created; reused on restart).
        settings: name -> keyword arguments of :func:`monai_wsol.data.synthetic.generate` (e.g.
            ``{"default": {}, "distractor": {"distractor": True}}``), or name -> ``{"datalist": path}`` for
            existing data.
        methods: the method names to compare (:data:`monai_wsol.methods.METHODS`) or names of ``variants``, in
            report order; post-hoc methods (:data:`POSTHOC`) need their base method in the list.
        seeds: the seeds (>= 3 for the paired statistics to mean anything).
        data_root: where generated settings are written (``<data_root>/<setting>``; existing data is reused).
        image_size: the side the images are resized to.
        backbone: ``"densenet121"`` or ``"vgg16"``; ``net_kwargs``: its extra arguments (e.g. a compact
            ``block_config``, ``low_stride``).
        method_options: method -> options applied to every run of it (e.g. ``{"sfs2": {"init": "random"}}``).
        search: method -> list of candidate option sets, chosen on validation MaxBoxAccV2 with the first seed.
        train: :class:`TrainConfig` or its keyword arguments.
        box_step: tau step of the box curves (0.001, the protocol's).
        num_examples: test images stored per first-seed run for the example grid.
        reference: the method(s) the paired tests compare against every other (default ``"sfs2"``).
        search_in: the setting whose validation split makes the ``search`` choices for every setting (saves
            the candidates' runs elsewhere); None: each setting chooses on its own validation split. It may be
            a setting another process runs on the same ``bench_dir``: its choices are then read from
            ``choices_<search_in>.json``, waiting up to ``wait_for_choices`` seconds for them to appear.
        wait_for_choices: see ``search_in`` (0: a missing choice is an error at once).
        variants: name -> ``{"method": <method name>, **options}``: a method under another name with fixed
            options (ablations, e.g. ``{"sfs2_t0.6": {"method": "sfs2", "t": 0.6}}``); ``"backbone"`` and
            ``"net_kwargs"`` entries replace the benchmark's for that variant.
        report: write ``results.csv`` / ``results.md`` and the figures at the end.
    """

    def __init__(
        self,
        bench_dir: str | Path,
        settings: Mapping[str, Mapping[str, Any]],
        methods: Sequence[str],
        seeds: Sequence[int] = (0, 1, 2),
        data_root: str | Path = "data/benchmark",
        image_size: int = 96,
        backbone: str = "densenet121",
        net_kwargs: Mapping[str, Any] | None = None,
        method_options: Mapping[str, Mapping[str, Any]] | None = None,
        search: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
        box_step: float = 0.001,
        num_examples: int = 6,
        reference: str | Sequence[str] = "sfs2",
        search_in: str | None = None,
        wait_for_choices: float = 0.0,
        variants: Mapping[str, Mapping[str, Any]] | None = None,
        report: bool = True,
    ) -> None:
        self.bench_dir = Path(bench_dir)
        self.settings = {str(k): dict(v) for k, v in settings.items()}
        self.methods = [str(m) for m in methods]
        self.variants = {str(k): dict(v) for k, v in (variants or {}).items()}
        for name, variant in self.variants.items():
            if variant.get("method") not in METHODS:
                raise ValueError(
                    f"Benchmark: variants[{name!r}] needs 'method', one of {', '.join(METHODS)}; got {variant}."
                )
        for m in self.methods:
            if m not in METHODS and m not in self.variants:
                raise ValueError(
                    f"Benchmark: unknown method {m!r}; valid: {', '.join(METHODS)} or a name of `variants`."
                )
            base = self.base_method(m)
            if base in POSTHOC and POSTHOC[base] not in self.methods:
                raise ValueError(
                    f"Benchmark: method {m!r} is computed on {POSTHOC[base]!r}'s network: list it too."
                )
        self.seeds = [int(s) for s in seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Benchmark: seeds must be distinct and non-empty, got {list(seeds)}.")
        self.data_root = Path(data_root)
        self.image_size = int(image_size)
        self.backbone = backbone
        self.net_kwargs = dict(net_kwargs or {})
        self.method_options = {k: dict(v) for k, v in (method_options or {}).items()}
        self.search = {k: [dict(c) for c in v] for k, v in (search or {}).items()}
        for m, cands in self.search.items():
            if m not in self.methods or self.base_method(m) in POSTHOC or not cands:
                raise ValueError(
                    f"Benchmark: search[{m!r}] must be a non-empty list for a trained, listed method."
                )
        self.search_in = search_in
        self.wait_for_choices = float(wait_for_choices)
        self.train = train if isinstance(train, TrainConfig) else TrainConfig(**dict(train or {}))
        self.box_step = float(box_step)
        self.num_examples = int(num_examples)
        self.reference = reference
        self.report = report

    def base_method(self, name: str) -> str:
        """The :data:`~monai_wsol.methods.METHODS` name behind a method or variant name."""
        return str(self.variants[name]["method"]) if name in self.variants else name

    # -- paths ---------------------------------------------------------------------------------------------------
    def run_dir(self, setting: str, method: str, seed: int, candidate: int | None = None) -> Path:
        if candidate is None:
            return self.bench_dir / "runs" / setting / method / f"seed{seed}"
        return self.bench_dir / "search" / setting / method / f"cand{candidate}" / f"seed{seed}"

    def datalist(self, setting: str) -> Path:
        opts = self.settings[setting]
        if "datalist" in opts:
            return Path(opts["datalist"])
        out = self.data_root / setting
        path = out / "datalist.json"
        if not path.exists():
            logger.info("generating the %r data set in %s", setting, out)
            generate(out, **opts)
        return path

    # -- one run ---------------------------------------------------------------------------------------------------
    def network(self, name: str) -> tuple[str, dict[str, Any]]:
        """``(backbone, net_kwargs)`` of a method or variant (a variant may name its own)."""
        variant = self.variants.get(name, {})
        return str(variant.get("backbone", self.backbone)), dict(variant.get("net_kwargs", self.net_kwargs))

    def _spec(self, method: str, options: Mapping[str, Any]) -> MethodSpec:
        backbone, net_kwargs = self.network(method)
        return build_method(
            self.base_method(method), 2, 1, 2, backbone=backbone, net_kwargs=net_kwargs, **dict(options)
        )

    def run_one(
        self,
        setting: str,
        method: str,
        seed: int,
        options: Mapping[str, Any],
        data: Mapping[str, SplitData],
        candidate: int | None = None,
    ) -> dict[str, Any]:
        """Train (or load) and evaluate one run; returns its result (read back when already finished)."""
        run_dir = self.run_dir(setting, method, seed, candidate)
        result_path = run_dir / "result.json"
        if result_path.exists():
            return json.loads(result_path.read_text())
        run_dir.mkdir(parents=True, exist_ok=True)
        train_options = dict(options)
        base_method = self.base_method(method)
        if base_method == "cutmix":
            train_options.setdefault("seed", seed)
        torch.manual_seed(seed)  # network initialisation
        spec = self._spec(method, train_options)
        seconds = 0.0
        if base_method in POSTHOC:
            base = self.run_dir(setting, POSTHOC[base_method], seed) / "model.pt"
            if not base.exists():
                raise FileNotFoundError(
                    f"{method}: the {POSTHOC[base_method]!r} run of seed {seed} has no {base}."
                )
            spec.net.load_state_dict(torch.load(base, map_location="cpu", weights_only=True))
        else:
            batches = tensor_batches(spec, data["training"], self.train.batch_size, self.train.flip)
            seconds = train_run(spec, batches, self.train, seed, run_dir)
            atomic_torch_save(spec.net.state_dict(), run_dir / "model.pt")
        examples_count = self.num_examples if seed == self.seeds[0] else 0
        part, arrays, examples = evaluate_run(
            spec, data["validation"], data["test"], self.box_step, examples_count
        )
        result = {
            "setting": setting,
            "method": method,
            "seed": seed,
            "hyperparameters": {
                "options": to_jsonable(options),
                "backbone": self.network(method)[0],
                "net_kwargs": to_jsonable(self.network(method)[1]),
                "image_size": self.image_size,
                "train": to_jsonable(vars(self.train)),
            },
            **to_jsonable(part),
            "train_seconds": seconds,
        }
        _atomic_npz(run_dir / "curves.npz", arrays)
        if examples is not None:
            _atomic_npz(run_dir / "examples.npz", examples)
        atomic_write_json(result_path, result)  # last: its presence marks the run finished
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        test = result["test"]
        logger.info(
            "%s/%s seed %d: MaxBoxAccV2 %.1f, BoxAccV2@val_tau %.1f, Dice %.3f, acc %.1f, AUC %.3f (%.0f s)",
            setting,
            method,
            seed,
            test["MaxBoxAccV2"],
            test["BoxAccV2@val_tau"],
            test["Dice"],
            test["accuracy"],
            test["AUC"],
            seconds,
        )
        return result

    # -- choices ----------------------------------------------------------------------------------------------------
    def choose(
        self, setting: str, method: str, data: Mapping[str, SplitData]
    ) -> tuple[dict[str, Any], int | None]:
        """The method's options for ``setting``: the candidate with the best validation MaxBoxAccV2."""
        variant = {
            k: v
            for k, v in self.variants.get(method, {}).items()
            if k not in ("method", "backbone", "net_kwargs")
        }
        base = {**variant, **self.method_options.get(method, {})}
        if self.base_method(method) in POSTHOC:
            return self.choose(setting, POSTHOC[self.base_method(method)], data)[0], None
        candidates = self.search.get(method)
        if not candidates:
            return base, None
        scores = []
        for i, cand in enumerate(candidates):
            result = self.run_one(setting, method, self.seeds[0], {**base, **cand}, data, candidate=i)
            scores.append(result["val"]["MaxBoxAccV2"])
        best = int(np.argmax(scores))  # first best on ties
        logger.info(
            "%s/%s: validation MaxBoxAccV2 of candidates %s -> %s", setting, method, scores, candidates[best]
        )
        return {**base, **candidates[best]}, best

    # -- everything -----------------------------------------------------------------------------------------------
    def _choices_path(self, setting: str) -> Path:
        return self.bench_dir / f"choices_{setting}.json"

    def _shared_choice(self, method: str) -> dict[str, Any]:
        """``method``'s options as chosen on ``search_in``'s validation split (maybe by another process)."""
        path = self._choices_path(str(self.search_in))
        deadline = time.monotonic() + self.wait_for_choices
        while True:
            chosen = json.loads(path.read_text()) if path.exists() else {}
            if method in chosen:
                return dict(chosen[method]["options"])
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{path}: no choice for {method!r} yet; run the {self.search_in!r} setting first (or give "
                    "wait_for_choices when another process runs it)."
                )
            time.sleep(min(10.0, max(0.1, deadline - time.monotonic())))

    def run(self) -> list[dict[str, Any]]:
        """Run (or finish) every setting x method x seed; write the report. Returns the finished results."""
        torch.set_num_threads(self.train.threads or torch.get_num_threads())
        self.bench_dir.mkdir(parents=True, exist_ok=True)
        results: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        total = len(self.settings) * len(self.methods) * len(self.seeds)
        done = 0
        # the setting that makes the search choices goes first
        for setting in sorted(self.settings, key=lambda name: name != self.search_in):
            datalist = self.datalist(setting)
            data = {s: load_split(datalist, s, self.image_size) for s in ("training", "validation", "test")}
            choices_path = self._choices_path(setting)
            for method in self.methods:
                chosen_on = setting
                if self.search_in not in (None, setting) and method in self.search:
                    options, candidate = self._shared_choice(method), None
                    chosen_on = str(self.search_in)
                else:
                    options, candidate = self.choose(setting, method, data)
                # re-read first: another process may be running other methods of this setting
                choices = json.loads(choices_path.read_text()) if choices_path.exists() else {}
                choices[method] = {
                    "options": to_jsonable(options),
                    "candidate": candidate,
                    "chosen_on_validation_of": chosen_on,
                }
                atomic_write_json(choices_path, choices)
                for seed in self.seeds:
                    target = self.run_dir(setting, method, seed)
                    if (
                        candidate is not None
                        and seed == self.seeds[0]
                        and not (target / "result.json").exists()
                    ):
                        _copy_run(self.run_dir(setting, method, seed, candidate), target)
                    results.append(self.run_one(setting, method, seed, options, data))
                    done += 1
                    logger.info("progress %d/%d runs, %.1f min", done, total, (time.perf_counter() - t0) / 60)
        if self.report:
            self.write_report()
        return results

    def write_report(self) -> None:
        """``results.csv``, ``results.md`` and the figures from the finished runs."""
        from monai_wsol.benchmark.figures import plot_example_grid, plot_threshold_curves
        from monai_wsol.benchmark.report import write_results

        write_results(self.bench_dir, reference=self.reference)
        for setting in self.settings:
            plot_threshold_curves(self.bench_dir, setting, self.bench_dir / f"curves_{setting}.png")
            plot_example_grid(
                self.bench_dir, setting, self.bench_dir / f"examples_{setting}.png", seed=self.seeds[0]
            )


def _copy_run(src: Path, dst: Path) -> None:
    """Copy a finished run folder atomically (copy to a sibling temporary folder, then rename)."""
    if not (src / "result.json").exists():
        raise FileNotFoundError(f"{src} is not a finished run (no result.json).")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
