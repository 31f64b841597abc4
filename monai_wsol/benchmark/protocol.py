"""The disclosure's own experiment in the WSOL protocol's layout: VGG16, CAM vs one vs two blocks.

The disclosure reports, on CUB-200-2011 with VGG16, MaxBoxAcc at IoU 0.5 / 0.7 with tau stepped by 0.001:
CAM 61.11 / 12.06, one block 62.20 / 12.39, two blocks 64.62 / 19.24. :class:`ProtocolExperiment` trains the
three on a data set in the protocol's layout (``dataset_root/<DATASET>/...``,
``metadata_root/<DATASET>/<split>/``, read by :mod:`monai_wsol.data.wsol_protocol`), writes each method's test
score maps as ``<image_id>.npy`` (the reference's format, so its own ``evaluation.py`` can score them too),
and scores them with :func:`monai_wsol.evaluate.evaluate_wsol` (largest contour, IoU 0.5 and 0.7, step 0.001).

Training follows the protocol's VGG16 recipe (Choe et al., CVPR 2020; their public ``config.py`` and scripts):
ImageNet-pretrained VGG16 in the GAP form, SGD with momentum 0.9, weight decay 5e-4, batch 32, 50 epochs,
learning rate 1.268e-5 (their CAM/CUB value) with new layers (classifier, blocks) at 10x, divided by 10 every
15 epochs; training resize 256 + random 224 crop + horizontal flip, evaluation at 224x224, the last epoch's
weights.
Deviation: the CAM is upsampled bilinearly to 224x224 inside the network (``forward_cam(upsample=True)``),
    where
the reference resizes it with OpenCV's bicubic interpolation.

The config ``configs/disclosure_cub.json`` runs it with ``python -m monai.bundle run --config_file ...``; a
tiny fake data set in the layout (:func:`monai_wsol.data.wsol_protocol.make_fake_wsol_dataset`) makes a dry
run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_wsol.data.wsol_protocol import load_wsol_split, make_wsol_dataloader
from monai_wsol.engines.trainer import run_method_training
from monai_wsol.evaluate import evaluate_wsol
from monai_wsol.io_utils import atomic_path, atomic_write_json
from monai_wsol.methods import MethodSpec, build_method

__all__ = ["PROTOCOL_VGG16_TRAIN", "DISCLOSURE_RESULTS", "ProtocolExperiment"]

logger = logging.getLogger("monai_wsol.benchmark")

#: the protocol's VGG16 recipe (see the module docstring)
PROTOCOL_VGG16_TRAIN: dict[str, Any] = {
    "epochs": 50,
    "batch_size": 32,
    "lr": 1.268e-5,
    "weight_decay": 5e-4,
    "optimizer": "sgd",
    "momentum": 0.9,
    "schedule": "step",
    "lr_step": 15,
    "lr_decay": 0.1,
    "new_layer_lr_ratio": 10.0,
}
#: the disclosure's figures (MaxBoxAcc at IoU 0.5 / 0.7, VGG16, CUB-200-2011)
DISCLOSURE_RESULTS: dict[str, tuple[float, float]] = {
    "cam": (61.11, 12.06),
    "sfs1": (62.20, 12.39),
    "sfs2": (64.62, 19.24),
}


def protocol_optimizer(
    net: torch.nn.Module, recipe: Mapping[str, Any]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and per-epoch LR schedule of a training recipe (:data:`PROTOCOL_VGG16_TRAIN`'s keys).

    Two parameter groups: the backbone at ``lr`` and the new layers (the classifier and the plug-ins) at
    ``lr * new_layer_lr_ratio`` (the protocol's 10 for a pretrained backbone). ``optimizer`` ``"sgd"``
    (``momentum``) or ``"adam"``; ``schedule`` ``"step"`` (x ``lr_decay`` every ``lr_step`` epochs) or
    ``"cosine"`` (to 0 over ``epochs``).
    """
    new = [p for n, p in net.named_parameters() if n.startswith("classifier") or "plugin" in n]
    new_ids = {id(p) for p in new}
    old = [p for p in net.parameters() if id(p) not in new_ids]
    lr = float(recipe["lr"])
    groups = [
        {"params": old, "lr": lr},
        {"params": new, "lr": lr * float(recipe.get("new_layer_lr_ratio", 1.0))},
    ]
    wd = float(recipe.get("weight_decay", 0.0))
    if recipe.get("optimizer", "sgd") == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=lr, momentum=float(recipe.get("momentum", 0.9)), weight_decay=wd
        )
    elif recipe["optimizer"] == "adam":
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {recipe['optimizer']!r}.")
    schedule = recipe.get("schedule", "step")
    if schedule == "step":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(
            opt, step_size=int(recipe.get("lr_step", 15)), gamma=float(recipe.get("lr_decay", 0.1))
        )
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(recipe["epochs"])))
    else:
        raise ValueError(f"schedule must be 'step' or 'cosine', got {schedule!r}.")
    return opt, sched


class ProtocolExperiment:
    """Train and score methods on a data set in the WSOL protocol's layout.

    Args:
        dataset_root: the reference's ``--data_root``.
        metadata_root: the reference's ``--metadata_root``.
        dataset_name: ``CUB`` (or ``ILSVRC``, or a folder in the same layout).
        out_dir: run folders ``<out_dir>/<method>/`` (``model.pt``, ``scoremaps/``, ``result.json``) and
            ``<out_dir>/results.json``; finished methods are skipped, interrupted ones resume.
        methods: method names (default CAM, one block, two blocks).
        backbone: ``vgg16`` (the disclosure's) or ``densenet121``.
        pretrained: ImageNet weights (downloads them once; ``False`` for dry runs).
        train: the training recipe, keys of :data:`PROTOCOL_VGG16_TRAIN` (its values are the default).
        method_options: method -> options (e.g. ``{"sfs2": {"cr": 0.8, "t": 0.4}}``).
        seed: the run's seed.
        crop_size, resize_size: the protocol's 224 and 256.
        num_workers: data-loading processes.
        eval_split: the split scored (``test``); ``val`` is the one to tune on.
        cam_curve_interval: tau step (0.001 as the disclosure).
        iou_threshold_list: IoU thresholds in percent (50 and 70 as the disclosure).
        device: ``"cuda"`` when available by default.
    """

    def __init__(
        self,
        dataset_root: str | os.PathLike,
        metadata_root: str | os.PathLike,
        dataset_name: str,
        out_dir: str | os.PathLike,
        methods: Sequence[str] = ("cam", "sfs1", "sfs2"),
        backbone: str = "vgg16",
        pretrained: bool = True,
        train: Mapping[str, Any] | None = None,
        method_options: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        crop_size: int = 224,
        resize_size: int = 256,
        num_workers: int = 4,
        eval_split: str = "test",
        cam_curve_interval: float = 0.001,
        iou_threshold_list: Sequence[int] = (50, 70),
        device: str | torch.device | None = None,
    ) -> None:
        self.dataset_root, self.metadata_root = os.fspath(dataset_root), os.fspath(metadata_root)
        self.dataset_name = dataset_name
        self.out_dir = Path(out_dir)
        self.methods = list(methods)
        self.backbone = backbone
        self.pretrained = bool(pretrained)
        self.train = {**PROTOCOL_VGG16_TRAIN, **dict(train or {})}
        self.method_options = {k: dict(v) for k, v in (method_options or {}).items()}
        self.seed = int(seed)
        self.crop_size, self.resize_size = int(crop_size), int(resize_size)
        self.num_workers = int(num_workers)
        self.eval_split = eval_split
        self.cam_curve_interval = float(cam_curve_interval)
        self.iou_threshold_list = [int(d) for d in iou_threshold_list]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def _items(self, split: str) -> list[dict[str, Any]]:
        return load_wsol_split(self.dataset_root, self.metadata_root, self.dataset_name, split)

    def build(self, method: str, num_classes: int) -> MethodSpec:
        """The method's network (3-channel input, ``num_classes`` outputs)."""
        return build_method(
            method,
            2,
            3,
            num_classes,
            backbone=self.backbone,
            net_kwargs={"pretrained": self.pretrained},
            **self.method_options.get(method, {}),
        )

    def write_scoremaps(self, spec: MethodSpec, items: list[dict[str, Any]], root: Path) -> None:
        """The GT class's CAM of every image, as ``<image_id>.npy``.

        Each map is min-max normalised, at ``crop_size``^2.
        """
        loader = make_wsol_dataloader(
            items, train=False, batch_size=int(self.train["batch_size"]), num_workers=self.num_workers,
            crop_size=self.crop_size,
        )  # fmt: skip
        for batch in loader:
            images = torch.as_tensor(batch["image"]).as_subclass(torch.Tensor).to(self.device)
            labels = torch.as_tensor(batch["label"]).reshape(-1).to(self.device)
            cams = spec.extractor(spec.net, images, labels)[1][:, 0].float().cpu().numpy()
            for image_id, cam in zip(batch["image_id"], cams, strict=True):
                path = root / f"{image_id}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path, suffix=".npy") as tmp:
                    np.save(tmp, cam.astype(np.float32))

    def run_method(self, method: str) -> dict[str, Any]:
        """Train (or resume) one method, write its score maps and score them; returns its ``result.json``."""
        run_dir = self.out_dir / method
        result_path = run_dir / "result.json"
        if result_path.exists():
            return json.loads(result_path.read_text())
        train_items = self._items("train")
        num_classes = max(int(i["label"]) for i in train_items) + 1
        torch.manual_seed(self.seed)
        spec = self.build(method, max(2, num_classes))
        loader = make_wsol_dataloader(
            train_items,
            train=True,
            batch_size=int(self.train["batch_size"]),
            num_workers=self.num_workers,
            resize_size=self.resize_size,
            crop_size=self.crop_size,
        )
        optimizer, scheduler = protocol_optimizer(spec.net, self.train)
        t0 = time.perf_counter()
        # the loader's shuffle comes from torch's RNG, reseeded each epoch; its transform is reseeded too
        run_method_training(
            spec,
            loader,
            optimizer,
            scheduler,
            int(self.train["epochs"]),
            run_dir / "checkpoints",
            device=self.device,
            seed=self.seed,
            randomizables=[loader.dataset.transform],
        )
        seconds = time.perf_counter() - t0
        scoremap_root = run_dir / "scoremaps"
        self.write_scoremaps(spec, self._items(self.eval_split), scoremap_root)
        metrics = evaluate_wsol(
            str(scoremap_root),
            self.metadata_root,
            "",
            self.dataset_name,
            self.eval_split,
            multi_contour_eval=False,
            iou_threshold_list=self.iou_threshold_list,
            cam_curve_interval=self.cam_curve_interval,
        )
        result = {
            "method": method,
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "seed": self.seed,
            "train": dict(self.train),
            "split": self.eval_split,
            "metrics": {k: v for k, v in metrics.items() if k.startswith(("MaxBoxAcc", "BoxAcc"))},
            "disclosure": DISCLOSURE_RESULTS.get(method),
            "train_seconds": seconds,
        }
        atomic_write_json(result_path, result)
        logger.info("%s: %s", method, result["metrics"])
        return result

    def run(self) -> dict[str, Any]:
        """Every method; writes ``<out_dir>/results.json`` (ours next to the disclosure's) and returns it."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        results = {m: self.run_method(m) for m in self.methods}
        atomic_write_json(self.out_dir / "results.json", results)
        for m, r in results.items():
            ours = [r["metrics"].get(f"BoxAcc@{d}") for d in self.iou_threshold_list]
            logger.info(
                "%s: MaxBoxAcc@%s = %s (disclosure: %s)", m, self.iou_threshold_list, ours, r["disclosure"]
            )
        return results
