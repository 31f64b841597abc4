"""Post-transforms that turn the localization into what MONAI Label sends back: a label image and JSON params.

MONAI Label's writer saves ``data["pred"]`` as the label file and returns ``data["result"]`` as the response's
JSON parameters. :class:`LocalizationResultd` puts the lesion mask (or the CAM) under the label key, without a
channel axis (MONAI Label's ``Restored`` and writer expect ``(*spatial)``), and the class probabilities and
boxes under the result key, in the schema of :func:`monai_wsol.writers.write_boxes_json`
(``monai_wsol.boxes/1``), so a client reads the same document as the bundle's ``<stem>_localization.json``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_wsol.metrics.threshold import as_decision_threshold, predicted_class
from monai_wsol.writers import write_boxes_json

__all__ = ["LocalizationResultd", "UnpackDictd", "LABEL_OUTPUTS"]

#: what the returned label holds: the binary lesion mask (uint8) or the normalised CAM (float32 in [0, 1])
LABEL_OUTPUTS = ("mask", "cam")


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class UnpackDictd(MapTransform):
    """Move the entries of a dictionary held under ``keys`` to the top level of the data (the key is removed).

    MONAI Label stores a dictionary-valued inferer output (``{"pred": logits, "cam": map}``, from
    :class:`~monai_wsol.monailabel.LocalizationInferer`) under its single output key ``pred``; this spreads it
    back so that the bundle's own post-processing finds ``pred`` and ``cam`` as separate keys.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d.pop(key)
            if not isinstance(value, Mapping):
                raise TypeError(f"UnpackDictd: data[{key!r}] must be a dict, got {type(value).__name__}.")
            d.update(value)
        return d


class LocalizationResultd(MapTransform):
    """Gather one image's localization for MONAI Label: label image under ``label_key``, JSON under
    ``result_key``.

    Args:
        keys: the binary mask key, ``(1, *spatial)`` (from :class:`~monai_wsol.transforms.CAMToLocationd`).
        prob_key: class probabilities ``(K,)``.
        cam_key: the normalised CAM ``(1, *spatial)``, returned as the label when ``output="cam"``.
        box_key, world_box_key, score_key: boxes ``(N, 2 * D)`` (voxel, world) and scores ``(N,)``.
        ref_key: the image (a ``MetaTensor``), whose affine goes into the JSON.
        slice_key: optional per-slice logits ``(Z, K)`` of a volume run slice by slice through a 2D network;
            reported as per-slice probabilities of the ``cam_class``.
        label_key, result_key: MONAI Label's label and JSON keys (``pred``, ``result``).
        class_names: names of the classes in logit order.
        cam_class: index of the lesion class (the class of the CAM).
        output: ``"mask"`` (default) or ``"cam"``: what the label image holds.
        extra: more JSON keys (e.g. ``{"tau": 0.5, "region_mode": "all"}``).
        decision_threshold: ``None`` (the predicted class is the argmax) or a lesion-probability threshold in
            [0, 1] chosen on validation (:func:`monai_wsol.metrics.threshold.predicted_class`), recorded in
            the JSON.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_mask",
        prob_key: str = "prob",
        cam_key: str = "cam",
        box_key: str = "pred_boxes",
        world_box_key: str | None = "pred_boxes_world",
        score_key: str | None = "pred_scores",
        ref_key: str = "image",
        slice_key: str | None = "slice_pred",
        label_key: str = "pred",
        result_key: str = "result",
        class_names: Sequence[str] | None = None,
        cam_class: int = 1,
        output: str = "mask",
        extra: Mapping[str, Any] | None = None,
        decision_threshold: float | None = None,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"LocalizationResultd takes one mask key, got {list(self.keys)}.")
        if output not in LABEL_OUTPUTS:
            raise ValueError(f"output must be one of {LABEL_OUTPUTS}, got {output!r}.")
        self.prob_key, self.cam_key, self.ref_key, self.slice_key = prob_key, cam_key, ref_key, slice_key
        self.box_key, self.world_box_key, self.score_key = box_key, world_box_key, score_key
        self.label_key, self.result_key = label_key, result_key
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.cam_class = int(cam_class)
        self.output = output
        self.extra = dict(extra or {})
        self.decision_threshold = as_decision_threshold(decision_threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask_key = self.keys[0]
        for key in (mask_key, self.prob_key, self.box_key, self.ref_key):
            if key not in d:
                raise KeyError(
                    f"LocalizationResultd: '{key}' is missing from the data ({sorted(map(str, d))})."
                )
        image = d[self.ref_key]
        affine = _numpy(image.affine) if isinstance(image, MetaTensor) else np.eye(4)
        mask = _numpy(d[mask_key])[0] > 0
        probs = _numpy(d[self.prob_key]).astype(float).reshape(-1)
        if self.class_names is not None and len(self.class_names) != len(probs):
            raise ValueError(f"{len(self.class_names)} class_names for {len(probs)} class probabilities.")
        extra: dict[str, Any] = {
            "cam_class": self.cam_class,
            "label_output": self.output,
            "label_shape": list(mask.shape),
            "lesion_voxels": int(mask.sum()),
            **self.extra,
        }
        if self.decision_threshold is not None:
            extra["decision_threshold"] = self.decision_threshold
        if self.slice_key is not None and d.get(self.slice_key) is not None:
            slice_probs = torch.softmax(torch.as_tensor(_numpy(d[self.slice_key])).float(), dim=-1)
            extra["slice_probabilities"] = [float(p) for p in slice_probs[:, self.cam_class]]
        d[self.result_key] = {**dict(d.get(self.result_key) or {}), **self._document(d, affine, probs, extra)}
        if self.output == "cam":
            d[self.label_key] = _numpy(d[self.cam_key])[0].astype(np.float32)
        else:
            d[self.label_key] = mask.astype(np.uint8)
        return d

    def _document(self, d: Mapping, affine: np.ndarray, probs: np.ndarray, extra: dict) -> dict:
        """The ``monai_wsol.boxes/1`` document, built by the bundle's own JSON writer so the schema has one
        source (it writes a file: a scratch one here, read back)."""
        with tempfile.TemporaryDirectory(prefix="monai_wsol_ml_") as tmp:
            path = write_boxes_json(
                Path(tmp) / "localization.json",
                boxes_voxel=_numpy(d[self.box_key]),
                affine=affine,
                boxes_world=None if self.world_box_key is None else d.get(self.world_box_key),
                scores=None if self.score_key is None else d.get(self.score_key),
                class_probabilities=probs,
                class_names=self.class_names,
                spatial_dims=_numpy(d[self.keys[0]]).ndim - 1,
                extra=extra,
                predicted_class=predicted_class(probs, self.decision_threshold),
            )
            doc = json.loads(path.read_text())
        names = self.class_names or [str(i) for i in range(len(probs))]
        # the names as well as the index: viewers show them as they are
        doc["predicted_class_name"] = names[int(doc["predicted_class"])]
        doc["probabilities"] = {n: float(p) for n, p in zip(names, probs, strict=True)}
        return doc
