"""The 2D slices of a volume data set, with slice-level labels, masks and boxes.

A 2D model run on volumes slice by slice (:class:`monai_wsol.extractors.SliceBySliceExtractor`) is trained on
slices. :func:`slice_datalist` cuts every volume of a Decathlon-style datalist whose entries carry a ``mask``
into its slices along one array axis and writes a 2D datalist beside them:

- each slice is a 2D NIfTI file whose affine places it where it lies in the volume (the volume's affine,
  translated along the slice axis), so the slices keep the volume's spacing and world positions;
- a slice's ``label`` is its volume's ``label`` when the mask has a voxel in that slice, else 0
  (``labels="slice"``): a 2D model trained on them gets **slice-level** labels, one per slice, more
  supervision than the volume-level label a 3D model gets from the same data (say so wherever the two are
  compared); with ``labels="volume"`` every slice carries its volume's label, the supervision a 3D model has
  (slices of a lesion volume that miss the lesion are then labelled "lesion": the label noise of that
  setting);
- its ``boxes`` are the mask slice's connected regions (the transforms' StandardMode, max corner
  exclusive, as :func:`monai_wsol.data.synthetic.gt_boxes` writes them); ``source`` and ``slice_index`` name
  where it came from.

The index ``datalist.json`` is written last (atomically): an interrupted run leaves none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_wsol.data.synthetic import BOX_CONVENTION, gt_boxes
from monai_wsol.io_utils import atomic_write_json, atomic_write_nifti

__all__ = ["slice_datalist", "slice_affine"]


def slice_affine(affine: np.ndarray, slice_axis: int, index: int) -> np.ndarray:
    """The 4 x 4 affine of slice ``index`` along ``slice_axis`` of a volume with ``affine``: the in-plane
    axes keep their columns (in array order), the origin moves to the slice; the third column is the slice
    axis' step, so the slice's normal and thickness are kept."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"slice_affine: affine must be 4 x 4, got {affine.shape}.")
    in_plane = [a for a in range(3) if a != slice_axis]
    out = np.eye(4)
    out[:3, 0] = affine[:3, in_plane[0]]
    out[:3, 1] = affine[:3, in_plane[1]]
    out[:3, 2] = affine[:3, slice_axis]
    out[:3, 3] = affine[:3, 3] + index * affine[:3, slice_axis]
    return out


def _read(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj)
    except Exception as err:  # nibabel raises several types for unreadable files
        raise ValueError(f"slice_datalist: cannot read the {what} {path}: {err}") from err
    if array.ndim != 3:
        raise ValueError(f"slice_datalist: {path} is not a volume (shape {array.shape}); slices need 3D.")
    return array, np.asarray(img.affine)


def slice_datalist(
    datalist: str | Path,
    out_dir: str | Path,
    slice_axis: int = 2,
    splits: Sequence[str] = ("training", "validation", "test"),
    labels: str = "slice",
) -> Path:
    """Write the slices of every volume of ``splits`` under ``out_dir``; return the 2D ``datalist.json``.

    Args:
        datalist: a Decathlon-style datalist of 3D NIfTI volumes; entries need ``image``, ``label`` and
            ``mask`` (paths relative to the datalist's folder unless absolute).
        out_dir: output folder (``images/``, ``masks/``, ``datalist.json``); an existing datalist there is
            returned as it is when it was cut the same way (axis and labels; else an error), delete the folder
            to rebuild.
        slice_axis: the array axis the volumes are cut along (0, 1, 2; -1 is 2).
        splits: the splits to cut (each must be in the datalist).
        labels: ``"slice"`` (a slice is a lesion slice where the mask reaches it) or ``"volume"`` (every
            slice has its volume's label); see the module docstring.
    """
    if isinstance(slice_axis, bool) or slice_axis not in (-1, 0, 1, 2):
        raise ValueError(f"slice_datalist: slice_axis must be 0, 1, 2 or -1, got {slice_axis!r}.")
    if labels not in ("slice", "volume"):
        raise ValueError(f"slice_datalist: labels must be 'slice' or 'volume', got {labels!r}.")
    axis = int(slice_axis) % 3
    datalist = Path(datalist)
    out_dir = Path(out_dir)
    target = out_dir / "datalist.json"
    if target.exists():
        made = json.loads(target.read_text())
        if (made.get("slice_axis"), made.get("slice_labels", "slice")) != (axis, labels):
            raise ValueError(
                f"slice_datalist: {target} holds slices along axis {made.get('slice_axis')} with "
                f"{made.get('slice_labels', 'slice')} labels, not axis {axis} with {labels} labels; "
                "choose another out_dir or delete it."
            )
        return target
    data = json.loads(datalist.read_text())
    base = datalist.parent
    result: dict = {
        "name": f"slices of {data.get('name', datalist.name)}",
        "description": f"2D slices along array axis {axis} of {datalist}; slice-level labels from the masks",
        "spatial_dims": 2,
        "slice_axis": axis,
        "slice_labels": labels,
        "source_datalist": str(datalist.resolve()),
        "box_mode": "xyxy",
        "box_convention": BOX_CONVENTION,
        "labels": data.get("labels", {"0": "no lesion", "1": "lesion"}),
    }
    shapes: set[tuple[int, ...]] = set()
    for split in splits:
        if split not in data:
            raise ValueError(f"slice_datalist: {datalist} has no split {split!r}.")
        items = []
        for n, entry in enumerate(data[split]):
            if not isinstance(entry, dict) or not {"image", "label", "mask"} <= set(entry):
                raise ValueError(
                    f"slice_datalist: {datalist} {split}[{n}] needs 'image', 'label' and 'mask' to be cut "
                    "into labelled slices."
                )
            image, affine = _read(base / entry["image"], "image")
            mask, _ = _read(base / entry["mask"], "mask")
            if mask.shape != image.shape:
                raise ValueError(
                    f"slice_datalist: {datalist} {split}[{n}]: mask {entry['mask']} has shape {mask.shape}, "
                    f"image {entry['image']} {image.shape}."
                )
            stem = Path(entry["image"]).name.split(".")[0]
            for k in range(image.shape[axis]):
                image_slice = np.take(image, k, axis=axis)
                mask_slice = np.take(mask, k, axis=axis) > 0
                name = f"{stem}_s{k:03d}.nii.gz"
                slice_aff = slice_affine(affine, axis, k)
                atomic_write_nifti(image_slice, slice_aff, out_dir / "images" / name, fsync=False)
                mask_u8 = mask_slice.astype(np.uint8)
                atomic_write_nifti(mask_u8, slice_aff, out_dir / "masks" / name, fsync=False)
                items.append(
                    {
                        "image": f"images/{name}",
                        "label": int(entry["label"]) if labels == "volume" or mask_slice.any() else 0,
                        "mask": f"masks/{name}",
                        "boxes": gt_boxes(mask_slice),
                        "source": str(entry["image"]),
                        "slice_index": k,
                    }
                )
                shapes.add(image_slice.shape)
        result[split] = items
    if len(shapes) == 1:  # the slices' common size, as the generator declares its images'
        result["image_size"] = [int(v) for v in shapes.pop()]
    return atomic_write_json(target, result)
