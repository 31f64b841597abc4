"""Predicted boxes as JSON, in voxel and world coordinates.

Schema (``"schema": "monai_wsol.boxes/1"``)::

    {
      "schema": "monai_wsol.boxes/1",
      "image": "<input path>",                 # or null
      "spatial_dims": 2 | 3,
      "box_mode": "xyxy" | "xyzxyz",           # MONAI StandardMode
      "box_convention": "standard",            # monai_wsol.boxes convention of the voxel boxes
      "voxel_convention": "...",               # array axes as loaded by MONAI, max corner = last index + 1
      "world_convention": "...",               # RAS mm, axis-aligned box around the voxel box's edges
      "affine": [[...], ...],                  # voxel -> world, (spatial_dims + 1)^2 or 4 x 4
      "predicted_class": int | null,
      "class_probabilities": [p0, p1, ...] | null,
      "class_names": [...] | null,
      "boxes": [{"voxel": [...], "world": [...], "label": int | str | null, "score": float | null}, ...],
      ...extra keys
    }

Voxel boxes follow MONAI's ``StandardMode`` with ``TO_REMOVE = 0`` (the ``"standard"`` convention of
:mod:`monai_wsol.boxes`, named in ``"box_convention"``): ``[x0, y0, x1, y1]`` covers voxels ``x0 .. x1 - 1``
along the array axes in order. Voxel ``i`` spans ``[i - 0.5, i + 0.5]`` around its centre, so the box's
continuous extent is ``[x0 - 0.5, x1 - 0.5]``; its world box is the axis-aligned bounding box of that extent's
corners mapped through the affine (exact for axis-aligned images, enclosing for oblique ones).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_wsol.boxes import Boxes
from monai_wsol.io_utils import atomic_write_json
from monai_wsol.transforms.functional import boxes_to_world

__all__ = ["write_boxes_json", "BOXES_SCHEMA"]

BOXES_SCHEMA = "monai_wsol.boxes/1"


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _jsonable(x: Any) -> Any:
    if x is None:
        return None
    arr = _as_numpy(x)
    return arr.tolist()


def write_boxes_json(
    path: str | os.PathLike,
    boxes_voxel: Boxes | np.ndarray | torch.Tensor | Sequence,
    affine: np.ndarray | torch.Tensor,
    boxes_world: np.ndarray | torch.Tensor | Sequence | None = None,
    labels: Sequence[int | str] | np.ndarray | torch.Tensor | None = None,
    scores: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    image_path: str | os.PathLike | None = None,
    class_probabilities: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    spatial_dims: int | None = None,
    predicted_class: int | None = None,
) -> Path:
    """Write one image's boxes (and class probabilities) atomically; schema in the module docstring.

    Args:
        path: output ``.json``.
        boxes_voxel: (N, 4) or (N, 6) voxel boxes: a :class:`~monai_wsol.boxes.Boxes` of either convention
            (written in StandardMode), or a bare array in StandardMode (max corner exclusive).
        affine: voxel-to-world matrix of the image (MONAI ``meta["affine"]``, RAS mm).
        boxes_world: (N, 2 * D) world boxes; computed with
            :func:`monai_wsol.transforms.functional.boxes_to_world` (voxel edges) when ``None``.
        labels, scores: one per box (optional).
        image_path: the input image, recorded as given.
        class_probabilities: (num_classes,) probabilities; ``predicted_class`` is their argmax unless given.
        class_names: names of the classes.
        extra: further JSON-serialisable keys (e.g. the threshold used).
        spatial_dims: 2 or 3; needed only when there are no boxes and the affine is 4 x 4 for a 2D image
            (MONAI gives 2D NIfTI a 4 x 4 affine); default: from the boxes, else from the affine.
        predicted_class: the class the caller decided (e.g. with a decision threshold,
            :func:`monai_wsol.metrics.threshold.predicted_class`); default: the probabilities' argmax.

    Returns:
        ``Path(path)``.
    """
    if isinstance(boxes_voxel, Boxes):
        boxes_voxel = boxes_voxel.to_standard().coords
    voxel = _as_numpy(boxes_voxel).astype(float)
    if voxel.size == 0:
        dims = spatial_dims if spatial_dims is not None else _as_numpy(affine).shape[0] - 1
        voxel = voxel.reshape(0, 2 * dims)
    if voxel.ndim != 2 or voxel.shape[1] not in (4, 6):
        raise ValueError(f"boxes_voxel must be (N, 4) or (N, 6), got shape {voxel.shape}")
    d = voxel.shape[1] // 2
    if spatial_dims is not None and spatial_dims != d:
        raise ValueError(f"spatial_dims={spatial_dims} but boxes_voxel has {voxel.shape[1]} columns")
    world = (
        np.asarray(boxes_to_world(voxel, affine))
        if boxes_world is None
        else _as_numpy(boxes_world).astype(float)
    )
    if world.shape != voxel.shape:
        raise ValueError(f"boxes_world shape {world.shape} differs from boxes_voxel shape {voxel.shape}")
    n = len(voxel)
    per_box = {"labels": labels, "scores": scores}
    for name, values in per_box.items():
        if values is not None and len(_as_numpy(values)) != n:
            raise ValueError(f"{name} has {len(_as_numpy(values))} entries for {n} boxes")
    label_list = (
        [None] * n if labels is None else [v if isinstance(v, str) else int(v) for v in _jsonable(labels)]
    )
    score_list = [None] * n if scores is None else [float(s) for s in _jsonable(scores)]
    probs = None if class_probabilities is None else [float(p) for p in _jsonable(class_probabilities)]
    doc: dict[str, Any] = {
        "schema": BOXES_SCHEMA,
        "image": None if image_path is None else str(image_path),
        "spatial_dims": d,
        "box_mode": "xyxy" if d == 2 else "xyzxyz",
        "box_convention": "standard",
        "voxel_convention": (
            "MONAI StandardMode along array axes as loaded by MONAI; max corner = last index + 1"
        ),
        "world_convention": "RAS mm; axis-aligned bounds of the voxel box edges (index - 0.5 .. max - 0.5)",
        "affine": _as_numpy(affine).astype(float).tolist(),
        "predicted_class": (
            int(predicted_class)
            if predicted_class is not None
            else (None if probs is None else int(np.argmax(probs)))
        ),
        "class_probabilities": probs,
        "class_names": None if class_names is None else list(class_names),
        "boxes": [
            {"voxel": v.tolist(), "world": w.tolist(), "label": lab, "score": s}
            for v, w, lab, s in zip(voxel, world, label_list, score_list, strict=True)
        ],
    }
    if extra:
        clash = set(extra) & set(doc)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} would overwrite schema keys")
        doc.update(extra)
    return atomic_write_json(path, doc)
