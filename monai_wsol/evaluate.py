"""``python -m monai_wsol.evaluate``: drop-in for the WSOL protocol's reference ``evaluation.py``.

Same flags (``--scoremap_root``, ``--metadata_root``, ``--mask_root``, ``--dataset_name``, ``--split``,
``--cam_curve_interval``, ``--multi_contour_eval``, ``--multi_iou_eval``, ``--iou_threshold_list``), same
metadata layout (``metadata_root/dataset_name/split/{image_ids,class_labels,image_sizes,localization}.txt``),
score maps ``<scoremap_root>/<image_id>.npy``, and the same numbers, computed by the exact fast path of
:mod:`monai_wsol.metrics`.  Additions: ``--output FILE.json`` (written atomically), ``--num_workers``, a
printed table, and strict input checks (every error names the file and line; nothing is written on error).

Box datasets (``localization.txt`` lines ``id,x0,y0,x1,y1``, boxes in the protocol's convention of
:mod:`monai_wsol.boxes`: x along the image width, ends at start + extent as the reference's ``x + w``) give
MaxBoxAcc (largest contour, IoU 0.5), MaxBoxAccV2 (all contours, mean over the IoU list) and ``BoxAcc@d``
(best tau per IoU d, in the contour mode chosen by ``--multi_contour_eval``); mask datasets (lines
``id,mask_png,ignore_png``) give PxAP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from monai_wsol.data.wsol_metadata import EvaluationError, Metadata, parse_ints, read_lines, read_metadata
from monai_wsol.metrics import (
    BoxAccuracyMetric,
    PxAPMetric,
    as_gt_boxes,
    best_iou_curve,
)
from monai_wsol.metrics._quantize import as_score_array
from monai_wsol.metrics.contours import distinct_level_boxes_modes

__all__ = [
    "EvaluationError",
    "Metadata",
    "read_lines",
    "parse_ints",
    "read_metadata",
    "resize_box",
    "evaluate_wsol",
    "main",
]


def str2bool(value: str | bool) -> bool:
    """The reference's boolean flag parser (``--flag``, ``--flag true``, ``--flag 0`` ...)."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}.")


def resize_box(
    box: Sequence[int], image_size: Sequence[int], map_size: Sequence[int]
) -> tuple[int, int, int, int]:
    """Rescale a protocol-convention box from the original (w, h) to the score map's (w, h), truncating as the
    reference."""
    x0, y0, x1, y1 = map(float, box)
    w, h = map(float, image_size)
    new_w, new_h = map(float, map_size)
    return int(x0 * new_w / w), int(y0 * new_h / h), int(x1 * new_w / w), int(y1 * new_h / h)


def _scoremap_path(scoremap_root: str, image_id: str) -> str:
    return os.path.join(scoremap_root, image_id + ".npy")


def _check_scoremap_files(scoremap_root: str, image_ids: Sequence[str]) -> None:
    """Every id has a map and no map is left unused (a sign of evaluating the wrong folder)."""
    if not os.path.isdir(scoremap_root):
        raise EvaluationError(f"{scoremap_root}: score-map folder not found.")
    missing = [i for i in image_ids if not os.path.isfile(_scoremap_path(scoremap_root, i))]
    if missing:
        raise EvaluationError(
            f"{_scoremap_path(scoremap_root, missing[0])}: score map not found ({len(missing)} missing)."
        )
    expected = {os.path.normpath(i + ".npy") for i in image_ids}
    extra = []
    for folder, _, files in os.walk(scoremap_root):
        for name in files:
            rel = os.path.normpath(os.path.relpath(os.path.join(folder, name), scoremap_root))
            if rel.endswith(".npy") and rel not in expected:
                extra.append(rel)
    if extra:
        raise EvaluationError(
            f"{os.path.join(scoremap_root, sorted(extra)[0])}: score map of no listed image "
            f"({len(extra)} extra file(s)); evaluate the matching split or remove them."
        )


def _load_scoremap(scoremap_root: str, image_id: str) -> np.ndarray:
    path = _scoremap_path(scoremap_root, image_id)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{path}: cannot read a NumPy array ({e}).") from None
    try:
        return as_score_array(arr, "score map", ndim=2)
    except ValueError as e:
        raise EvaluationError(f"{path}: {e}") from None


def _box_curves(job: tuple[str, str, list, tuple[int, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Best-IoU curves of one image, largest-contour and all-contour modes (runs in worker processes)."""
    scoremap_root, image_id, boxes, image_size, taus = job
    smap = _load_scoremap(scoremap_root, image_id)
    height, width = smap.shape
    gt = as_gt_boxes(
        [resize_box(b, image_size, (width, height)) for b in boxes],
        smap.shape,
        name=f"GT boxes of {image_id!r}",
        convention="protocol",
    )
    (v1, v2), inverse = distinct_level_boxes_modes(smap, taus, (False, True))
    return best_iou_curve(v1, gt, inverse), best_iou_curve(v2, gt, inverse)


def _load_mask(mask_root: str, dataset_name: str, rel: str, size: tuple[int, int], where: str) -> np.ndarray:
    import cv2

    path = os.path.join(mask_root, rel)
    if not os.path.isfile(path) and os.path.isfile(os.path.join(mask_root, dataset_name, rel)):
        path = os.path.join(mask_root, dataset_name, rel)  # the reference's layout: mask_root/OpenImages/...
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE) if os.path.isfile(path) else None
    if image is None:
        raise EvaluationError(f"{where}: mask {path} not found or not an image.")
    resized = cv2.resize(np.float32(image), size, interpolation=cv2.INTER_NEAREST)
    return resized > 0.5


def evaluate_wsol(
    scoremap_root: str,
    metadata_root: str,
    mask_root: str,
    dataset_name: str,
    split: str,
    multi_contour_eval: bool = False,
    multi_iou_eval: bool = False,
    iou_threshold_list: Sequence[int] = (30, 50, 70),
    cam_curve_interval: float = 0.001,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate a folder of score maps; returns the JSON-ready results (see module docstring).

    ``performance`` is the reference's single figure: PxAP for masks; otherwise BoxAcc at IoU 50 or, with
    ``multi_iou_eval``, the mean over ``iou_threshold_list``, in the ``multi_contour_eval`` mode.
    """
    meta_dir = os.path.join(metadata_root, dataset_name, split)
    meta = read_metadata(meta_dir)
    _check_scoremap_files(scoremap_root, meta.image_ids)
    ious = [int(d) for d in iou_threshold_list]
    if not multi_iou_eval and not meta.has_masks and 50 not in ious:
        raise EvaluationError("--iou_threshold_list must contain 50 unless --multi_iou_eval is set.")
    result: dict[str, Any] = {
        "dataset_name": dataset_name,
        "split": split,
        "num_images": len(meta.image_ids),
        "cam_curve_interval": cam_curve_interval,
    }
    if meta.has_masks:
        metric = PxAPMetric(threshold_step=cam_curve_interval)
        loc_path = os.path.join(meta_dir, "localization.txt")
        for image_id in meta.image_ids:
            smap = _load_scoremap(scoremap_root, image_id)
            size = (smap.shape[1], smap.shape[0])
            where = f"{loc_path} ({image_id})"
            fg = np.stack(
                [_load_mask(mask_root, dataset_name, m, size, where) for m in meta.masks[image_id]]
            ).any(0)
            ignore_rel = meta.ignores[image_id]
            ignore = _load_mask(mask_root, dataset_name, ignore_rel, size, where) if ignore_rel else None
            metric(smap[None], fg[None], None if ignore is None else ignore[None])
        result["PxAP"] = result["performance"] = metric.aggregate()["PxAP"]
        return result

    v1 = BoxAccuracyMetric(cam_curve_interval=cam_curve_interval, iou_thresholds=sorted(set(ious) | {50}))
    v2 = BoxAccuracyMetric(cam_curve_interval=cam_curve_interval, iou_thresholds=ious, multi_contour=True)
    jobs = [(scoremap_root, i, meta.boxes[i], meta.image_sizes[i], v1.thresholds) for i in meta.image_ids]
    if num_workers > 0:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            curves = list(pool.map(_box_curves, jobs, chunksize=max(1, len(jobs) // (8 * num_workers))))
    else:
        curves = [_box_curves(job) for job in jobs]
    v1.add_curves(np.stack([c[0] for c in curves]))
    v2.add_curves(np.stack([c[1] for c in curves]))
    r1, r2 = v1.aggregate(), v2.aggregate()
    chosen = r2 if multi_contour_eval else r1
    result["MaxBoxAcc"] = r1["MaxBoxAcc"]
    result["MaxBoxAccV2"] = r2["MaxBoxAccV2"]
    for d in ious:
        result[f"BoxAcc@{d}"] = chosen[f"BoxAcc@{d}"]
        result[f"tau@{d}"] = chosen[f"tau@{d}"]
    result["performance"] = (
        float(np.average([chosen[f"BoxAcc@{d}"] for d in ious])) if multi_iou_eval else chosen["BoxAcc@50"]
    )
    result["multi_contour_eval"] = bool(multi_contour_eval)
    result["multi_iou_eval"] = bool(multi_iou_eval)
    result["iou_threshold_list"] = ious
    return result


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _table(result: dict[str, Any]) -> str:
    keys = [
        k
        for k in result
        if k in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "performance") or k.startswith("BoxAcc@")
    ]
    width = max(len(k) for k in keys)
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    rows += [f"{k:<{width}}  {result[k]:.4f}" for k in keys]
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_wsol.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scoremap_root", type=str, default="train_log/scoremaps/")
    parser.add_argument("--metadata_root", type=str, default="metadata/")
    parser.add_argument("--mask_root", type=str, default="dataset/")
    parser.add_argument("--dataset_name", type=str, required=True, help="e.g. CUB, ILSVRC, OpenImages.")
    parser.add_argument("--split", type=str, required=True, help="e.g. val or test.")
    parser.add_argument("--cam_curve_interval", type=float, default=0.01)
    parser.add_argument("--multi_contour_eval", type=str2bool, nargs="?", const=True, default=False)
    parser.add_argument("--multi_iou_eval", type=str2bool, nargs="?", const=True, default=False)
    parser.add_argument("--iou_threshold_list", nargs="+", type=int, default=[30, 50, 70])
    parser.add_argument("--output", type=str, default=None, help="write the results to this JSON file.")
    parser.add_argument("--num_workers", type=int, default=0, help="processes for box extraction (0: none).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns 0 on success, 2 on bad input (message on stderr)."""
    args = build_parser().parse_args(argv)
    if not 0.0 < args.cam_curve_interval < 1.0:
        print(
            f"error: --cam_curve_interval must be in (0, 1), got {args.cam_curve_interval}.", file=sys.stderr
        )
        return 2
    try:
        result = evaluate_wsol(
            scoremap_root=args.scoremap_root,
            metadata_root=args.metadata_root,
            mask_root=args.mask_root,
            dataset_name=args.dataset_name,
            split=args.split,
            multi_contour_eval=args.multi_contour_eval,
            multi_iou_eval=args.multi_iou_eval,
            iou_threshold_list=args.iou_threshold_list,
            cam_curve_interval=args.cam_curve_interval,
            num_workers=args.num_workers,
        )
    except ValueError as e:  # EvaluationError and the metrics' own input errors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_table(result))
    if args.output:
        write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
