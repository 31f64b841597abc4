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

Batch runs over uncurated folders (one bad input skipped, the others done) are described in
:mod:`monai_wsol.engines.batch`: ``CAMEvaluator(isolate_failures=True)`` and the writer record a failing input
there instead of stopping the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
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

from monai_wsol.data.readers import short_error
from monai_wsol.engines.batch import (
    INDEX_META,
    OUTPUT_FILE_KEYS,
    PROBLEM_KEY,
    RECORD_KEY,
    STEM_META,
    InputRecord,
    OutputWriteError,
    add_records,
    image_stem,
    list_inputs,
    localization_path,
    record_from_exception,
)
from monai_wsol.engines.handlers import is_main_process, write_rows
from monai_wsol.extractors import CAMExtractor, ClassSelection, SliceBySliceExtractor, get_extractor
from monai_wsol.metrics.threshold import as_decision_threshold, predicted_class

#: evaluator output key of the per-slice logits ``(S, K)`` of a volume run slice by slice through a 2D model
SLICE_PRED_KEY = "slice_pred"

__all__ = [
    "SLICE_PRED_KEY",
    "CAMInferer",
    "CAMEvaluator",
    "LocalizationWriter",
    "unwrap_network",
    "image_stem",
    "inference_items",
    "prediction_row",
]

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
    ) -> tuple[torch.Tensor, ...]:
        """``inputs`` (B, C, *spatial) -> ``(logits, maps)``, plus the per-slice logits ``(B, S, K)`` of
        volumes run slice by slice (:class:`~monai_wsol.extractors.SliceBySliceExtractor`); ``labels``
        (per-sample classes), when given, replace ``class_idx`` for this call. Other arguments (a
        ``prepare_batch``'s network arguments) are ignored."""
        class_idx = self.class_idx if labels is None else labels
        if isinstance(self.extractor, SliceBySliceExtractor):
            logits, maps, slice_logits = self.extractor.extract(unwrap_network(network), inputs, class_idx)
            # a volume run slice by slice: its slices' logits too (PART_KEY of the evaluator's output)
            return (logits, maps) if slice_logits is None else (logits, maps, slice_logits)
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
        isolate_failures: batch semantics (:mod:`monai_wsol.engines.batch`): an iteration whose inference
            (forward pass, CAM, postprocessing) raises records a failed
            :class:`~monai_wsol.engines.batch.InputRecord` for each of its inputs in
            ``engine.state.input_records`` and outputs ``[]`` instead of stopping the run; each input
            inferred records a ``done``. Off (the default, e.g. validation during training), errors raise.
            The records of items a :class:`~monai_wsol.engines.batch.GuardedDataset` did not load are
            passed on in both cases (a failed one raises when off).
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
        isolate_failures: bool = False,
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
        self.isolate_failures = bool(isolate_failures)
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._split_pred)

    def _iteration(self, engine: CAMEvaluator, batchdata: dict[str, torch.Tensor]) -> dict | list:
        records = batchdata.pop(RECORD_KEY, []) if isinstance(batchdata, dict) else []
        if records:
            failed = [r for r in records if r.status == "failed"]
            if failed and not self.isolate_failures:
                raise RuntimeError(f"CAMEvaluator: {failed[0].line()}")
            add_records(engine, records)
        if isinstance(batchdata, dict) and CommonKeys.IMAGE not in batchdata:
            return []  # every item of this batch was a record
        if not self.isolate_failures:
            return super()._iteration(engine, batchdata)
        image = batchdata[CommonKeys.IMAGE]
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as e:
            failed = [record_from_exception(i, s, "inference", e) for i, s in _batch_inputs(image)]
            add_records(engine, failed)
            return []
        items = output if isinstance(output, list) else [output]
        add_records(
            engine,
            [InputRecord(i, s, "done", "inference") for i, s in _batch_inputs(image)][: len(items)],
        )
        return output

    def _split_pred(self, engine: CAMEvaluator) -> None:
        # runs on FORWARD_COMPLETED, i.e. before MONAI decollates and post-processes the output at
        # MODEL_COMPLETED
        output = engine.state.output
        logits, maps, *parts = output[CommonKeys.PRED]
        output[CommonKeys.PRED] = _plain(logits)
        output[engine.cam_key] = maps
        if parts:
            output[SLICE_PRED_KEY] = _plain(parts[0])
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


def _as_list(value: Any, n: int) -> list:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()] if value.numel() == n else [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n:
        return list(value)
    return [value] * n


def _batch_inputs(image: Any) -> list[tuple[int, str]]:
    """``(index, source)`` of each item of a collated image batch (from the meta a ``GuardedDataset`` set)."""
    n = int(image.shape[0]) if isinstance(image, torch.Tensor) and image.ndim > 0 else 1
    meta = image.meta if isinstance(image, MetaTensor) else {}
    indices = _as_list(meta.get(INDEX_META, -1), n)
    sources = _as_list(meta.get("filename_or_obj", "<unknown input>"), n)
    return [
        (int(i) if isinstance(i, (int, float, torch.Tensor)) else -1, str(s))
        for i, s in zip(indices, sources, strict=True)
    ]


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
    slice_axis: int | None = None,
) -> list[dict]:
    """The images of a folder or datalist, as :func:`~monai_wsol.engines.batch.list_inputs` lists them, but
    strict: the first input that cannot be run raises (for callers that want all or nothing; the bundle's
    inference runs on ``list_inputs`` itself, so one bad input does not stop the others).

    Raises:
        FileNotFoundError: naming the input and what is wrong with it.
        ValueError: neither ``input_dir`` nor ``datalist`` was given.
    """
    if not input_dir and datalist is None:
        raise ValueError("inference needs input_dir (a folder of images) or datalist (a datalist JSON).")
    items = list_inputs(
        input_dir, datalist, split, base_dir=base_dir, spatial_dims=spatial_dims, slice_axis=slice_axis
    )
    for item in items:
        problem = item.get(PROBLEM_KEY)
        if problem is not None and problem.get("status") != "skipped":
            raise FileNotFoundError(f"{item.get('image', input_dir)}: {problem.get('reason')}")
    return [{"image": item["image"]} for item in items if PROBLEM_KEY not in item]


class LocalizationWriter:
    """Write each image's localization (attach to the inference/evaluation evaluator,
    ``ITERATION_COMPLETED``).

    Per image, under ``output_dir`` (``<stem>`` is the input's file stem, de-duplicated with a counter in
    input order; a :class:`~monai_wsol.engines.batch.GuardedDataset` fixes it before the run):

    - ``<stem>_cam.nii.gz``, ``<stem>_mask.nii.gz``: the CAM (float32, [0, 1]) and the binary mask (uint8), on
      the input's grid with the input's affine (:func:`monai_wsol.writers.write_nifti`);
    - ``<stem>_seg.dcm``: a DICOM-SEG of the mask referencing the source series/instance, when the input was
      DICOM and ``write_dicom_seg`` is on (referencing the instances actually used when a corrupt one was left
      out, see :class:`~monai_wsol.data.readers.DicomSeriesReader`);
    - ``<stem>_overlay.png``: when ``write_overlay`` is on, the image with the mask contour and the boxes
      beside the CAM blended on it (3D: the axial slice where the CAM peaks;
      :func:`monai_wsol.writers.write_overlay_png`), titled with the predicted class and its probability;
    - ``<stem>_pm.dcm``: the CAM as a DICOM Parametric Map on the source instances, when the input was DICOM
      and ``write_dicom_parametric_map`` is on (:mod:`monai_wsol.writers.dicom_pm`);
    - ``<stem>_sr.dcm``: the boxes as a DICOM Structured Report (TID 1500 measurements, a rectangle on each
      instance a box spans), when the input was DICOM, ``write_dicom_sr`` is on and there is a box
      (:mod:`monai_wsol.writers.dicom_sr`);
    - ``<stem>_overlay_sc.dcm``: when ``write_dicom_overlay`` is on and the input is DICOM, the same view
      as a DICOM Secondary Capture in the source's study (:mod:`monai_wsol.writers.dicom_sc`), for viewers
      that cannot show a DICOM-SEG: the CAM blended on the image, the mask outline and the boxes, on the
      slice where the CAM peaks, referencing that slice's instance;
    - ``<stem>_localization.json``: class probabilities, predicted class (the argmax, or with a
      ``decision_threshold`` "lesion" when the lesion classes' summed probability reaches it, recorded beside
      it; :func:`monai_wsol.metrics.threshold.predicted_class`), boxes (MONAI ``StandardMode``, voxel
      and world coordinates; see :func:`monai_wsol.writers.write_boxes_json`) and the other files' paths; for
      a volume run slice by slice, ``slice_probabilities``: each slice's probability of the lesion class
      (``extra["cam_class"]`` when an int, else class 1), in array order along the slice axis.

    Every file is written to a temporary name and renamed, and the JSON is written last: its presence marks
    the input complete (:func:`~monai_wsol.engines.batch.completed_output`), so a killed run leaves no input
    looking complete. With an evaluator whose ``isolate_failures`` is on, an input whose writing fails loses
    the files already written for it and is recorded as failed at ``write`` (the run goes on).

    At ``COMPLETED``: ``predictions.json`` and ``predictions.csv`` with one row per image, in input order,
    built from the JSON files, including the inputs whose outputs were already complete (a re-run).

    Args:
        output_dir: output folder.
        class_names: optional names of the classes, in logit order.
        write_dicom_seg: write a DICOM-SEG for DICOM inputs.
        write_overlay: write an overlay PNG per input (needs matplotlib, the ``viz`` extra).
        write_dicom_overlay: write the overlay as a DICOM Secondary Capture for DICOM inputs.
        write_dicom_parametric_map: write the CAM as a DICOM Parametric Map for DICOM inputs.
        write_dicom_sr: write the boxes as a DICOM Structured Report for DICOM inputs.
        image_key, pred_key, cam_key, mask_key, box_key, world_box_key, score_key: keys of the decollated
            evaluator output (``pred`` holds probabilities when the postprocessing applied a softmax; logits
            are converted with a softmax otherwise, see ``pred_is_prob``).
        pred_is_prob: ``True`` when ``pred`` already holds probabilities.
        extra: more keys for every JSON (e.g. ``{"tau": 0.5}``, the threshold that made the mask).
        decision_threshold: ``None`` (the predicted class is the argmax) or a lesion-probability threshold in
            [0, 1], e.g. the ``decision_threshold`` the bundle's ``evaluate`` reports for a validation split.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        write_dicom_seg: bool = True,
        write_overlay: bool = False,
        write_dicom_overlay: bool = False,
        write_dicom_parametric_map: bool = False,
        write_dicom_sr: bool = False,
        image_key: str = CommonKeys.IMAGE,
        pred_key: str = CommonKeys.PRED,
        cam_key: str = "cam",
        mask_key: str = "pred_mask",
        box_key: str = "pred_boxes",
        world_box_key: str = "pred_boxes_world",
        score_key: str | None = None,
        pred_is_prob: bool = True,
        extra: dict | None = None,
        decision_threshold: float | None = None,
    ) -> None:
        # checked here, before any input is read
        self.decision_threshold = as_decision_threshold(decision_threshold)
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.write_dicom_seg = bool(write_dicom_seg)
        self.write_overlay = bool(write_overlay)
        self.write_dicom_overlay = bool(write_dicom_overlay)
        self.write_dicom_parametric_map = bool(write_dicom_parametric_map)
        self.write_dicom_sr = bool(write_dicom_sr)
        self.image_key, self.pred_key, self.cam_key, self.mask_key = image_key, pred_key, cam_key, mask_key
        self.box_key, self.world_box_key, self.score_key = box_key, world_box_key, score_key
        self.pred_is_prob = bool(pred_is_prob)
        self.extra = dict(extra or {})
        self.rows: list[dict] = []
        self._keyed_rows: list[tuple[int, dict]] = []
        self._stems: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.write_summary)

    def _reset(self, engine: Engine) -> None:
        self.rows, self._keyed_rows, self._stems = [], [], set()

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
        isolate = bool(getattr(engine, "isolate_failures", False))
        for item in outputs if isinstance(outputs, list) else [outputs]:
            image = item[self.image_key]
            meta = image.meta if isinstance(image, MetaTensor) else {}
            index = int(meta.get(INDEX_META, len(self._keyed_rows)))
            if not isolate:
                self._keyed_rows.append((index, self.write_item(item)))
                continue
            source = str(meta.get("filename_or_obj", "image"))
            try:
                row = self.write_item(item)
            except Exception as e:
                add_records(engine, [record_from_exception(index, source, "write", e)])
                continue
            self._keyed_rows.append((index, row))
            add_records(engine, [InputRecord(index, source, "done", "write", output=row["files"]["json"])])

    def write_item(self, item: dict) -> dict:
        """Write one decollated item's files (the JSON last); returns its summary row. On an error the files
        already written for the item are removed."""
        written: list[Path] = []
        try:
            return self._write_item(item, written)
        except BaseException:
            for f in written:
                f.unlink(missing_ok=True)
            raise

    def _write_item(self, item: dict, written: list[Path]) -> dict:
        from monai_wsol.writers import write_boxes_json, write_nifti

        image = item[self.image_key]
        meta = image.meta if isinstance(image, MetaTensor) else {}
        source = str(meta.get("filename_or_obj", "image"))
        stem = str(meta[STEM_META]) if meta.get(STEM_META) else self._unique_stem(image_stem(source))
        affine = np.asarray(
            _plain(image.affine) if isinstance(image, MetaTensor) else np.eye(4), dtype=np.float64
        )

        pred = _plain(item[self.pred_key]).detach().float().reshape(-1)
        probs = pred if self.pred_is_prob else torch.softmax(pred, dim=0)
        probs_list = [float(p) for p in probs.cpu()]
        names = self._names(len(probs_list))
        decided = predicted_class(probs_list, self.decision_threshold)

        # the maps are on the input grid (CAMEvaluator upsamples to it), so the input's affine is theirs;
        # nibabel directly rather than MONAI's SaveImage, which fails on 2D arrays with MONAI's 4x4 affine
        # (MONAI 1.6.1)
        cam = _plain(item[self.cam_key]).detach().cpu().float().numpy()[0]
        mask = _plain(item[self.mask_key]).detach().cpu().numpy()[0] > 0
        files: dict[str, str] = {}
        for name, array in (("cam", cam.astype(np.float32)), ("mask", mask.astype(np.uint8))):
            target = self.output_dir / f"{stem}_{name}.nii.gz"
            written.append(write_nifti(array, affine, target))
            files[name] = str(target)
        any_dicom = (
            self.write_dicom_seg
            or self.write_dicom_overlay
            or self.write_dicom_parametric_map
            or self.write_dicom_sr
        )
        dicom = _dicom_source(source) if any_dicom else None
        used = str(meta.get("dicom_source_files") or "")
        reference: Any = used.splitlines() if used else dicom
        spatial_dims = cam.ndim
        boxes = item.get(self.box_key)
        boxes = (
            np.zeros((0, 2 * spatial_dims)) if boxes is None else _plain(torch.as_tensor(boxes)).cpu().numpy()
        )
        read: list = []

        def instances() -> list:
            """The source instances, read once for all the objects of this input (parsing a series' headers
            costs about as much as writing one object), within the first object's error context."""
            from monai_wsol.writers import source_instances

            if not read:
                read.extend(source_instances(reference))
            return read

        if dicom is not None:
            from monai_wsol.writers import write_dicom_parametric_map, write_dicom_seg, write_dicom_sr

            objects = (
                (
                    "dicom_seg",
                    "seg",
                    "DICOM-SEG",
                    "write_dicom_seg",
                    lambda t: write_dicom_seg(mask, instances(), t),
                ),
                (
                    "dicom_parametric_map",
                    "pm",
                    "DICOM Parametric Map",
                    "write_dicom_parametric_map",
                    lambda t: write_dicom_parametric_map(cam, instances(), t),
                ),
                (
                    "dicom_sr",
                    "sr",
                    "DICOM Structured Report",
                    "write_dicom_sr",
                    lambda t: write_dicom_sr(boxes, instances(), t, spatial_dims),
                ),
            )
            for key, suffix, what, flag, write in objects:
                if getattr(self, flag) and not (
                    key == "dicom_sr" and len(boxes) == 0
                ):  # no finding, no report
                    target = self.output_dir / f"{stem}_{suffix}.dcm"
                    with _dicom_write(source, what, flag):
                        written.append(write(target))
                    files[key] = str(target)
        if self.write_overlay or (dicom is not None and self.write_dicom_overlay):
            # one view for both pictures: the slice where the CAM peaks (the image itself in 2D)
            image2d, cam2d, mask2d, boxes2d, index = self._overlay_view(item, cam, mask, boxes)
            caption = self._caption(probs_list, decided, index)
            if self.write_overlay:
                from monai_wsol.writers import write_overlay_png

                target = self.output_dir / f"{stem}_overlay.png"
                written.append(write_overlay_png(target, image2d, cam2d, mask2d, boxes2d, title=caption))
                files["overlay"] = str(target)
            if dicom is not None and self.write_dicom_overlay:
                from monai_wsol.writers import overlay_rgb, write_overlay_sc

                target = self.output_dir / f"{stem}_overlay_sc.dcm"
                with _dicom_write(source, "DICOM overlay (Secondary Capture)", "write_dicom_overlay"):
                    # the instances in MONAI's z order (the SEG writer's mapping): the shown slice's own
                    instance = instances()[0 if index is None else index]
                    picture = overlay_rgb(image2d, cam2d, mask2d, boxes2d)
                    written.append(write_overlay_sc(picture, instance.filename, target, caption=caption))
                files["dicom_overlay"] = str(target)
        world = item.get(self.world_box_key)
        scores = item.get(self.score_key) if self.score_key else None
        extra = {"cam_file": files["cam"], "mask_file": files["mask"]}
        if self.decision_threshold is not None:
            extra["decision_threshold"] = self.decision_threshold
        if item.get(SLICE_PRED_KEY) is not None:
            # a volume run slice by slice: each slice's lesion probability (as the MONAI Label answer gives)
            lesion = self.extra.get("cam_class")
            lesion = lesion if isinstance(lesion, int) and not isinstance(lesion, bool) else 1
            slice_probs = torch.softmax(_plain(torch.as_tensor(item[SLICE_PRED_KEY])).float(), dim=-1)
            extra["slice_probabilities"] = [round(float(p), 6) for p in slice_probs[:, lesion].cpu()]
        for key, doc_key in OUTPUT_FILE_KEYS:
            if key in files:
                extra[doc_key] = files[key]
        json_path = localization_path(self.output_dir, stem)
        written.append(
            write_boxes_json(
                json_path,
                boxes_voxel=boxes,
                affine=affine,
                boxes_world=None if world is None else _plain(torch.as_tensor(world)).cpu().numpy(),
                scores=None if scores is None else _plain(torch.as_tensor(scores)).cpu().numpy(),
                image_path=source,
                class_probabilities=probs_list,
                class_names=names,
                spatial_dims=spatial_dims,
                extra={**extra, **self.extra},
                predicted_class=decided,
            )
        )
        return prediction_row(json_path)

    def _overlay_view(
        self, item: dict, cam: np.ndarray, mask: np.ndarray, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int | None]:
        """The shown slice (the CAM's peak slice of a volume): image, CAM, mask, 2D boxes, slice index."""
        from monai_wsol.writers import overlay_slice

        image = _plain(item[self.image_key]).detach().cpu().float().numpy()[0]
        image2d, cam2d, mask2d, index = overlay_slice(image, cam, mask, axis=-1)
        if index is None:
            boxes2d = boxes[:, :4] if boxes.size else np.zeros((0, 4))
        else:  # the 3D boxes that cross the shown slice, as 2D boxes of its first two axes
            crossing = (boxes[:, 2] <= index) & (index < boxes[:, 5]) if boxes.size else np.zeros(0, bool)
            boxes2d = boxes[crossing][:, [0, 1, 3, 4]] if boxes.size else np.zeros((0, 4))
        return image2d, cam2d, mask2d, boxes2d, index

    def _caption(self, probs: list[float], decided: int, index: int | None) -> str:
        names = self._names(len(probs))
        return f"{names[decided]} (p = {probs[decided]:.2f})" + (
            f", slice {index}" if index is not None else ""
        )

    def _names(self, k: int) -> list[str]:
        if self.class_names is not None and len(self.class_names) != k:
            raise ValueError(
                f"LocalizationWriter: {len(self.class_names)} class_names for {k} network outputs."
            )
        return self.class_names if self.class_names is not None else [str(i) for i in range(k)]

    def write_summary(self, engine: Engine) -> None:
        """``predictions.json`` (full rows) and ``predictions.csv`` (flat columns) in ``output_dir``, one row
        per written input and per input whose outputs were already complete, in input order."""
        if not is_main_process():
            return
        keyed = list(self._keyed_rows)
        for r in getattr(engine.state, "input_records", None) or []:
            if r.status == "skipped" and r.stage == "resume" and r.output:
                keyed.append((r.index, prediction_row(r.output)))
        keyed.sort(key=lambda kr: kr[0])
        self.rows = [row for _, row in keyed]
        flat = [
            {k: v for k, v in r.items() if k != "files"} | {f"file_{k}": v for k, v in r["files"].items()}
            for r in self.rows
        ]
        write_rows(self.output_dir, "predictions", self.rows, csv_rows=flat)
        logger.info(f"Wrote {len(self.rows)} localizations to {self.output_dir}")


@contextlib.contextmanager
def _dicom_write(source: str, what: str, flag: str) -> Iterator[None]:
    """Re-raise an error of writing a DICOM object derived from ``source`` as an :class:`OutputWriteError`
    that names the input and the flag that skips the object (highdicom raises many types for headers it
    cannot derive from)."""
    try:
        yield
    except Exception as e:
        raise OutputWriteError(
            f"{source}: cannot write its {what} ({short_error(e)}); its DICOM header lacks what that object "
            f"references ({flag}=false skips it)"
        ) from e


def prediction_row(json_path: str | os.PathLike) -> dict:
    """The ``predictions.json`` row of one input, read from its per-input JSON (written by
    :class:`LocalizationWriter`): image, stem, predicted class, one ``p_<class>`` per class, the number of
    boxes, and the files."""
    import json

    path = Path(json_path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    probs = [float(p) for p in doc["class_probabilities"]]
    names = doc.get("class_names") or [str(i) for i in range(len(probs))]
    files = {"cam": doc["cam_file"], "mask": doc["mask_file"]}
    files.update({key: doc[doc_key] for key, doc_key in OUTPUT_FILE_KEYS if doc.get(doc_key)})
    files["json"] = str(path)
    return {
        "image": doc["image"],
        "stem": path.name[: -len("_localization.json")],
        # the writer's decision (a decision threshold may overrule the argmax)
        "predicted_class": names[int(doc.get("predicted_class", int(np.argmax(probs))))],
        **{f"p_{n}": p for n, p in zip(names, probs, strict=True)},
        "n_boxes": len(doc["boxes"]),
        "files": files,
    }
