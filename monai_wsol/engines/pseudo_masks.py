"""Pseudo-masks: the CAM-derived masks of the training images, for a segmenter to learn from.

Self-training on pseudo-masks is the standard second stage of weakly supervised segmentation (AffinityNet /
IRN, and most methods since): a classifier trained on image labels gives every training image a map, the map
thresholded gives a mask, and a segmenter trained on those masks generalises beyond what the maps show (it
sees every training image's mask at once and learns a shape prior the CAM does not have). Here the first stage
is the bundle's own ``inference`` on the datalist's ``training`` split (the mask at the CAM threshold ``tau``,
chosen on validation); :func:`pseudo_mask_datalist` turns its outputs into a datalist on which the bundle's
``supervised`` method (MONAI's UNet) trains as on ground-truth masks.

What the pseudo-mask datalist holds, per training item: the image, its class ``label`` (known: the weak
label) and ``mask`` = the inference's mask for a lesion image, an all-zero mask for an image labelled "no
lesion" (the label says there is nothing to segment). Ground-truth ``mask`` and ``boxes`` of the training
items are dropped, so nothing but image labels reaches the segmenter. The validation and test items are kept
as they are: like every method's, the segmenter's threshold is chosen on the validation split and it is
scored on the test split's ground truth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_wsol.engines.batch import assign_stems, completed_output, list_inputs
from monai_wsol.io_utils import atomic_write_json, atomic_write_nifti

__all__ = ["pseudo_mask_datalist", "pseudo_mask_agreement", "PSEUDO_MASK_KEYS"]

#: the keys a training item of the pseudo-mask datalist keeps from the original item (no GT mask or boxes)
PSEUDO_MASK_KEYS = ("image", "label")


def _relative(path: str | os.PathLike, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), start.resolve())


def pseudo_mask_datalist(
    datalist: str | os.PathLike,
    predictions_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "training",
    base_dir: str | os.PathLike | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<out_dir>/datalist.json``: ``datalist`` with its ``split`` items' masks replaced by the
    inference's masks in ``predictions_dir`` (see the module docstring); returns its path.

    Args:
        datalist: the Decathlon-style datalist the inference ran on.
        predictions_dir: the inference's ``output_dir`` on ``split`` (a ``<stem>.json`` per input naming its
            ``mask_file``, as :class:`~monai_wsol.engines.LocalizationWriter` writes them).
        out_dir: where the datalist (and the zero masks of the "no lesion" images, under ``masks/``) go; every
            path in it is relative to ``out_dir``.
        split: the split whose masks are replaced.
        base_dir: the folder the datalist's relative paths are resolved against (default: its folder), as
            the inference resolved them.
        provenance: recorded under ``"pseudo_masks"`` (e.g. the model and ``tau``).

    Raises:
        ValueError: an item of ``split`` has no integer ``label``, or no complete prediction (named with its
            image and the folder searched).
    """
    datalist, predictions_dir, out_dir = Path(datalist), Path(predictions_dir), Path(out_dir)
    data = json.loads(datalist.read_text(encoding="utf-8"))
    base = Path(base_dir) if base_dir is not None else datalist.parent
    entries = data.get(split)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"pseudo_mask_datalist: {datalist} has no items in split {split!r}.")
    # the inference's own list of inputs and stems: the same paths, the same output names
    sources = [item["image"] for item in list_inputs(None, datalist, split, base_dir=base)]
    stems = assign_stems(sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    pseudo: list[dict[str, Any]] = []
    missing: list[str] = []
    for i, (entry, source, stem) in enumerate(zip(entries, sources, stems, strict=True)):
        label = entry.get("label") if isinstance(entry, dict) else None
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(
                f"pseudo_mask_datalist: {datalist} {split}[{i}] ({source}) has no integer 'label' "
                f"(got {label!r}); the pseudo-mask of an image follows its class label."
            )
        doc_path = completed_output(predictions_dir, stem, source)
        if doc_path is None:
            missing.append(source)
            continue
        mask_file = Path(json.loads(doc_path.read_text(encoding="utf-8"))["mask_file"])
        if int(label) == 0:
            # the weak label says "no lesion": an empty mask on the prediction's grid
            mask_img = nib.load(str(mask_file))
            mask_file = atomic_write_nifti(
                np.zeros(mask_img.shape, np.uint8),
                mask_img.affine,
                out_dir / "masks" / f"{stem}_empty.nii.gz",
            )
        item = {k: entry[k] for k in PSEUDO_MASK_KEYS if k in entry}
        item["image"] = _relative(source, out_dir)
        item["mask"] = _relative(mask_file, out_dir)
        pseudo.append(item)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(
            f"pseudo_mask_datalist: {len(missing)} of {len(entries)} {split!r} images have no complete "
            f"prediction in {predictions_dir}: {shown}. Run the inference on that split there first."
        )
    result: dict[str, Any] = {}
    for key, value in data.items():
        if key == split:
            result[key] = pseudo
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            result[key] = [_rebased(v, base, out_dir) for v in value]
        else:
            result[key] = value
    result["pseudo_masks"] = {
        "split": split,
        "source_datalist": str(datalist.resolve()),
        "predictions_dir": str(predictions_dir.resolve()),
        **dict(provenance or {}),
    }
    return atomic_write_json(out_dir / "datalist.json", result)


def _rebased(item: Mapping[str, Any], base: Path, out_dir: Path) -> dict[str, Any]:
    """A datalist item with its relative ``image`` / ``mask`` paths made relative to ``out_dir``."""
    item = dict(item)
    for key in ("image", "mask"):
        value = item.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            item[key] = _relative(base / value, out_dir)
    return item


def pseudo_mask_agreement(
    pseudo_datalist: str | os.PathLike,
    datalist: str | os.PathLike,
    split: str = "training",
    base_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """How close the pseudo-masks of a :func:`pseudo_mask_datalist` are to the ground truth of the same
    images, which the segmenter never sees: a diagnostic of the first stage, read after the fact.

    Over the lesion images of ``split`` (label > 0 in ``datalist``, matched by image file): ``dice`` (mean
    Dice of the pseudo-mask against the GT mask), ``empty`` (the share of them whose pseudo-mask is empty),
    ``area_ratio`` (mean pseudo-mask area over GT area) and ``lesion_images``.
    """
    pseudo_datalist, datalist = Path(pseudo_datalist), Path(datalist)
    base = Path(base_dir) if base_dir is not None else datalist.parent
    truth = {
        (base / item["image"]).resolve(): (base / item["mask"]).resolve()
        for item in json.loads(datalist.read_text(encoding="utf-8")).get(split, [])
        if isinstance(item, dict) and int(item.get("label", 0)) > 0 and item.get("mask")
    }
    dice, empty, ratio = [], [], []
    for item in json.loads(pseudo_datalist.read_text(encoding="utf-8")).get(split, []):
        image = (pseudo_datalist.parent / item["image"]).resolve()
        if image not in truth:
            continue
        pseudo = np.asarray(nib.load(str(pseudo_datalist.parent / item["mask"])).dataobj) > 0
        gt = np.asarray(nib.load(str(truth[image])).dataobj) > 0
        if pseudo.shape != gt.shape:
            raise ValueError(f"pseudo_mask_agreement: {item['mask']} is {pseudo.shape}, its GT {gt.shape}.")
        total = int(pseudo.sum()) + int(gt.sum())
        dice.append(2.0 * int((pseudo & gt).sum()) / total if total else 1.0)
        empty.append(not pseudo.any())
        ratio.append(float(pseudo.sum()) / max(int(gt.sum()), 1))
    if not dice:
        raise ValueError(f"pseudo_mask_agreement: no lesion image of {split!r} in both datalists.")
    return {
        "lesion_images": float(len(dice)),
        "dice": float(np.mean(dice)),
        "empty": float(np.mean(empty)),
        "area_ratio": float(np.mean(ratio)),
    }
