"""The inference step: class probabilities and a class activation map per image, inside MONAI's evaluator.

- :class:`CAMInferer`: a MONAI :class:`~monai.inferers.Inferer` running a CAM extractor
  (:mod:`monai_wsol.extractors`, default the network's ``forward_cam``); returns ``(logits, maps)``.
- :class:`CAMEvaluator`: a :class:`~monai.engines.SupervisedEvaluator` whose output carries ``pred`` (logits,
  ``(B, K)``) and ``cam`` (``(B, 1, *spatial)``, min-max normalised to [0, 1], upsampled to the input grid and
  carrying the input's metadata, so the input's affine applies to it unchanged). Used for validation during
  training, for ``inference`` and for ``evaluate``.
- :class:`LocalizationWriter`: an ignite handler writing, for each image, the CAM and the mask as NIfTI (input
  affine), a DICOM-SEG referencing the source series when the input is DICOM, and a JSON with the class
  probabilities and the boxes in voxel and world coordinates; plus a ``predictions.json``/``.csv`` summary.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.utils import CommonKeys

from monai_wsol.engines.handlers import is_main_process, write_rows
from monai_wsol.extractors import CAMExtractor, ClassSelection, get_extractor

__all__ = [
    "CAMInferer",
    "CAMEvaluator",
    "LocalizationWriter",
    "unwrap_network",
    "image_stem",
    "inference_items",
]

#: file endings read as one image each by :func:`inference_items`
IMAGE_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".dcm",
    ".nrrd",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
)

logger = logging.getLogger(__name__)


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (``forward_cam`` lives there)."""
    return (
        network.module
        if isinstance(network, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel)
        else network
    )


class CAMInferer(Inferer):
    """A CAM extractor as a MONAI :class:`~monai.inferers.Inferer`: ``(logits (B, K), maps (B, 1,
    *spatial))``.

    The maps are those of :mod:`monai_wsol.extractors` (eval mode, upsampled to the input grid, min-max
    normalised to [0, 1], the input's metadata when it is a ``MetaTensor``); the network may be wrapped in
    ``DistributedDataParallel`` / ``DataParallel``.

    Args:
        class_idx: the class whose map is computed: ``None`` (each sample's predicted class), an ``int``, or
            per-sample indices (see :func:`~monai_wsol.extractors.resolve_class_selection`).
        extractor: a :class:`~monai_wsol.extractors.CAMExtractor` or its name (``"cam"``, ``"gradcam"``,
            ``"gradcampp"``); default ``"cam"`` (:class:`~monai_wsol.extractors.ForwardCAM`).
    """

    def __init__(self, class_idx: ClassSelection = None, extractor: CAMExtractor | str | None = None) -> None:
        super().__init__()
        self.class_idx = class_idx
        self.extractor = get_extractor("cam" if extractor is None else extractor)

    def __call__(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        *args: Any,
        labels: ClassSelection = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs`` (B, C, *spatial) -> ``(logits, maps)``; ``labels`` (per-sample classes), when given,
        replace ``class_idx`` for this call. Other arguments (a ``prepare_batch``'s network arguments) are
        ignored."""
        class_idx = self.class_idx if labels is None else labels
        return self.extractor(unwrap_network(network), inputs, class_idx)


class CAMEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that also outputs the normalised CAM of one class per sample under ``cam_key``.

    Logits and maps come from one call of a CAM extractor (:mod:`monai_wsol.extractors`), i.e. one forward
    pass for the in-graph CAM.

    Args:
        cam_class: which class's map: an ``int`` (e.g. ``1``, the lesion class of a present/absent classifier:
            the map then answers "where is the lesion" for every image, whatever the prediction), ``"pred"``
            (each sample's predicted class) or ``"label"`` (its ground-truth class, the WSOL evaluation
            protocol;
            needs labels in the batch: indices (B,) / (B, 1) or one-hot / soft (B, K)).
        cam_key: output key of the map.
        batch_keys: keys of the input batch copied into the output as they are (e.g. the GT ``"mask"`` the
            localization metrics compare the map with; MONAI's evaluator keeps only image, label and pred).
        extractor: a :class:`~monai_wsol.extractors.CAMExtractor` or its name (``"cam"``, ``"gradcam"``,
            ``"gradcampp"``); default ``"cam"`` (the network's ``forward_cam``).
        args, kwargs: those of :class:`~monai.engines.SupervisedEvaluator`; ``inferer`` is replaced by a
            :class:`CAMInferer`.

    Output (before decollation): ``pred`` ``(B, K)`` logits, ``cam`` ``(B, 1, *spatial)`` float in [0, 1], a
    ``MetaTensor`` with the input batch's metadata (the CAM is upsampled to the input grid, so the affine
    holds).
    """

    def __init__(
        self,
        *args: Any,
        cam_class: int | str = 1,
        cam_key: str = "cam",
        batch_keys: Sequence[str] = (),
        extractor: CAMExtractor | str | None = None,
        **kwargs: Any,
    ) -> None:
        if not (isinstance(cam_class, int) or cam_class in ("pred", "label")) or isinstance(cam_class, bool):
            raise ValueError(f"cam_class must be an int class index, 'pred' or 'label'; got {cam_class!r}.")
        kwargs.pop("inferer", None)
        class_idx = int(cam_class) if isinstance(cam_class, int) else None
        super().__init__(*args, inferer=CAMInferer(class_idx, extractor), **kwargs)
        if cam_class == "label":
            # the inferer only sees what prepare_batch returns: pass the labels on as its per-call classes
            self.prepare_batch = _LabelsToInferer(self.prepare_batch)
        self.cam_class = cam_class
        self.cam_key = cam_key
        self.batch_keys = tuple(batch_keys)
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._split_pred)

    def _split_pred(self, engine: CAMEvaluator) -> None:
        # runs on FORWARD_COMPLETED, i.e. before MONAI decollates and post-processes the output at
        # MODEL_COMPLETED
        output = engine.state.output
        logits, maps = output[CommonKeys.PRED]
        output[CommonKeys.PRED] = _plain(logits)
        output[engine.cam_key] = maps
        for key in engine.batch_keys:
            if key not in engine.state.batch:
                raise KeyError(
                    f"CAMEvaluator: batch_keys names '{key}', "
                    f"absent from the batch ({sorted(engine.state.batch)})."
                )
            output[key] = engine.state.batch[key]


class _LabelsToInferer:
    """Wrap a ``prepare_batch``: its targets also go to the inferer as ``labels`` (``cam_class="label"``)."""

    def __init__(self, prepare_batch: Callable) -> None:
        self.prepare_batch = prepare_batch

    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        batch = self.prepare_batch(*args, **kwargs)
        inputs, targets, net_args, net_kwargs = (*batch, (), {}) if len(batch) == 2 else batch
        if targets is None:
            raise ValueError("CAMEvaluator(cam_class='label') needs a 'label' in every batch.")
        return inputs, targets, tuple(net_args), {**dict(net_kwargs), "labels": targets}


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def image_stem(path: str | os.PathLike) -> str:
    """File stem of an input (``a/b/ct.nii.gz`` -> ``ct``; a DICOM series folder -> the folder name)."""
    name = Path(str(path).rstrip("/\\")).name
    for ext in IMAGE_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _dicom_source(path: str) -> str | None:
    """The DICOM file or series folder an image was read from, or ``None`` when it is not DICOM."""
    from pydicom.misc import is_dicom

    p = Path(path)
    if p.is_dir():
        return str(p) if any(is_dicom(str(f)) for f in sorted(p.iterdir()) if f.is_file()) else None
    return str(p) if p.is_file() and is_dicom(str(p)) else None


def inference_items(
    input_dir: str | os.PathLike | None,
    datalist: str | os.PathLike | None = None,
    split: str = "test",
    base_dir: str | os.PathLike | None = None,
    spatial_dims: int = 2,
) -> list[dict]:
    """The items ``[{"image": ...}, ...]`` the inference workflow runs on.

    Args:
        input_dir: a user's folder (wins over ``datalist`` when given). Each file with a known image ending
            (:data:`IMAGE_SUFFIXES`) is one image, and each sub-folder holding DICOM files is one series.
            DICOM files directly in ``input_dir`` are one series when ``spatial_dims`` is 3, one image each
            when it is 2.
        datalist: a Decathlon-style datalist, read with ``monai_wsol.data.load_datalist``.
        split: the datalist split.
        base_dir: folder the datalist's relative paths are relative to (default: the datalist's folder).
        spatial_dims: the network's spatial dims.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist or holds no image.
        ValueError: neither ``input_dir`` nor ``datalist`` was given.
    """
    if input_dir:
        from pydicom.misc import is_dicom

        root = Path(input_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"input_dir '{root}' is not a folder.")
        items: list[dict] = []
        loose_dicom = []
        for p in sorted(root.iterdir()):
            if p.is_dir():
                if _dicom_source(str(p)) is not None:
                    items.append({"image": str(p)})
            elif p.name.lower().endswith(IMAGE_SUFFIXES) or is_dicom(str(p)):
                if p.name.lower().endswith(".dcm") or is_dicom(str(p)):
                    loose_dicom.append(str(p))
                else:
                    items.append({"image": str(p)})
        if loose_dicom:
            items += [{"image": str(root)}] if spatial_dims == 3 else [{"image": f} for f in loose_dicom]
        if not items:
            raise FileNotFoundError(
                f"input_dir '{root}' holds no image ({', '.join(IMAGE_SUFFIXES)}) or DICOM series."
            )
        return items
    if datalist is None:
        raise ValueError("inference needs input_dir (a folder of images) or datalist (a datalist JSON).")
    from monai_wsol.data import load_datalist

    items = load_datalist(datalist, split, base_dir=base_dir, require_label=False)
    # the datalist's boxes/labels are lists of varying length: keep only what inference reads
    return [{"image": item["image"]} for item in items]


class LocalizationWriter:
    """Write each image's localization (attach to the inference/evaluation evaluator,
    ``ITERATION_COMPLETED``).

    Per image, under ``output_dir`` (``<stem>`` is the input's file stem, de-duplicated with a counter):

    - ``<stem>_cam.nii.gz``, ``<stem>_mask.nii.gz``: the CAM (float32, [0, 1]) and the binary mask (uint8), on
      the input's grid with the input's affine (:func:`monai_wsol.writers.write_nifti`);
    - ``<stem>_seg.dcm``: a DICOM-SEG of the mask referencing the source series/instance, when the input was
      DICOM and ``write_dicom_seg`` is on;
    - ``<stem>_localization.json``: class probabilities, predicted class, boxes (MONAI ``StandardMode``, voxel
      and world coordinates; see :func:`monai_wsol.writers.write_boxes_json`).

    At ``COMPLETED``: ``predictions.json`` and ``predictions.csv`` with one row per image.

    Args:
        output_dir: output folder.
        class_names: optional names of the classes, in logit order.
        write_dicom_seg: write a DICOM-SEG for DICOM inputs.
        image_key, pred_key, cam_key, mask_key, box_key, world_box_key, score_key: keys of the decollated
            evaluator output (``pred`` holds probabilities when the postprocessing applied a softmax; logits
            are converted with a softmax otherwise, see ``pred_is_prob``).
        pred_is_prob: ``True`` when ``pred`` already holds probabilities.
        extra: more keys for every JSON (e.g. ``{"tau": 0.5}``, the threshold that made the mask).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        write_dicom_seg: bool = True,
        image_key: str = CommonKeys.IMAGE,
        pred_key: str = CommonKeys.PRED,
        cam_key: str = "cam",
        mask_key: str = "pred_mask",
        box_key: str = "pred_boxes",
        world_box_key: str = "pred_boxes_world",
        score_key: str | None = None,
        pred_is_prob: bool = True,
        extra: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.write_dicom_seg = bool(write_dicom_seg)
        self.image_key, self.pred_key, self.cam_key, self.mask_key = image_key, pred_key, cam_key, mask_key
        self.box_key, self.world_box_key, self.score_key = box_key, world_box_key, score_key
        self.pred_is_prob = bool(pred_is_prob)
        self.extra = dict(extra or {})
        self.rows: list[dict] = []
        self._stems: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.write_summary)

    def _reset(self, engine: Engine) -> None:
        self.rows, self._stems = [], set()

    def _unique_stem(self, stem: str) -> str:
        out, i = stem, 1
        while out in self._stems:
            out, i = f"{stem}_{i}", i + 1
        self._stems.add(out)
        return out

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            self.rows.append(self.write_item(item))

    def write_item(self, item: dict) -> dict:
        """Write one decollated item's files; returns its summary row."""
        from monai_wsol.writers import write_boxes_json, write_nifti

        image = item[self.image_key]
        meta = image.meta if isinstance(image, MetaTensor) else {}
        source = str(meta.get("filename_or_obj", "image"))
        stem = self._unique_stem(image_stem(source))
        affine = np.asarray(
            _plain(image.affine) if isinstance(image, MetaTensor) else np.eye(4), dtype=np.float64
        )

        pred = _plain(item[self.pred_key]).detach().float().reshape(-1)
        probs = pred if self.pred_is_prob else torch.softmax(pred, dim=0)
        probs_list = [float(p) for p in probs.cpu()]
        names = self._names(len(probs_list))

        # the maps are on the input grid (CAMEvaluator upsamples to it), so the input's affine is theirs;
        # nibabel directly rather than MONAI's SaveImage, which fails on 2D arrays with MONAI's 4x4 affine
        # (MONAI 1.6.1)
        cam = _plain(item[self.cam_key]).detach().cpu().float().numpy()[0]
        mask = _plain(item[self.mask_key]).detach().cpu().numpy()[0] > 0
        files = {
            "cam": str(write_nifti(cam.astype(np.float32), affine, self.output_dir / f"{stem}_cam.nii.gz")),
            "mask": str(write_nifti(mask.astype(np.uint8), affine, self.output_dir / f"{stem}_mask.nii.gz")),
        }
        dicom = _dicom_source(source) if self.write_dicom_seg else None
        if dicom is not None:
            from monai_wsol.writers import write_dicom_seg

            files["dicom_seg"] = str(write_dicom_seg(mask, dicom, self.output_dir / f"{stem}_seg.dcm"))
        spatial_dims = cam.ndim
        boxes = item.get(self.box_key)
        boxes = (
            np.zeros((0, 2 * spatial_dims)) if boxes is None else _plain(torch.as_tensor(boxes)).cpu().numpy()
        )
        world = item.get(self.world_box_key)
        scores = item.get(self.score_key) if self.score_key else None
        files["json"] = str(
            write_boxes_json(
                self.output_dir / f"{stem}_localization.json",
                boxes_voxel=boxes,
                affine=affine,
                boxes_world=None if world is None else _plain(torch.as_tensor(world)).cpu().numpy(),
                scores=None if scores is None else _plain(torch.as_tensor(scores)).cpu().numpy(),
                image_path=source,
                class_probabilities=probs_list,
                class_names=names,
                spatial_dims=spatial_dims,
                extra={"cam_file": files["cam"], "mask_file": files["mask"], **self.extra},
            )
        )
        return {
            "image": source,
            "stem": stem,
            "predicted_class": names[int(np.argmax(probs_list))],
            **{f"p_{n}": p for n, p in zip(names, probs_list, strict=True)},
            "n_boxes": int(len(boxes)),
            "files": files,
        }

    def _names(self, k: int) -> list[str]:
        if self.class_names is not None and len(self.class_names) != k:
            raise ValueError(
                f"LocalizationWriter: {len(self.class_names)} class_names for {k} network outputs."
            )
        return self.class_names if self.class_names is not None else [str(i) for i in range(k)]

    def write_summary(self, engine: Engine) -> None:
        """``predictions.json`` (full rows) and ``predictions.csv`` (flat columns) in ``output_dir``."""
        if not is_main_process():
            return
        flat = [
            {k: v for k, v in r.items() if k != "files"} | {f"file_{k}": v for k, v in r["files"].items()}
            for r in self.rows
        ]
        write_rows(self.output_dir, "predictions", self.rows, csv_rows=flat)
        logger.info(f"Wrote {len(self.rows)} localizations to {self.output_dir}")
