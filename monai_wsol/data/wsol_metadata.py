"""The WSOL protocol's metadata of one split, read and checked (Choe et al., CVPR 2020;
clovaai/wsolevaluation).

Layout (``metadata_root/<dataset>/<split>/``): ``image_ids.txt`` (one id a line), ``image_sizes.txt``
(``id,width,height``, box datasets) and ``localization.txt`` (``id,x0,y0,x1,y1`` per box, or
``id,mask_png,ignore_png`` per mask).  Both the evaluation command line (:mod:`monai_wsol.evaluate`) and the
data loader (:mod:`monai_wsol.data.wsol_protocol`) read it through this module; every error names the file
and line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvaluationError", "Metadata", "parse_ints", "read_lines", "read_metadata"]


class EvaluationError(ValueError):
    """Bad evaluation input (metadata, score maps, masks); the message names the file (and line)."""


@dataclass
class Metadata:
    """The protocol's metadata of one split."""

    image_ids: list[str]
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (w, h)
    boxes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    masks: dict[str, list[str]] = field(default_factory=dict)
    ignores: dict[str, str] = field(default_factory=dict)

    @property
    def has_masks(self) -> bool:
        return bool(self.masks)


def read_lines(path: str) -> list[tuple[int, str]]:
    """The non-blank lines of a metadata file as ``(line number, text)``; a missing file raises naming it."""
    if not os.path.isfile(path):
        raise EvaluationError(f"{path}: file not found.")
    with open(path, encoding="utf-8") as f:
        return [(n, line.rstrip("\r\n")) for n, line in enumerate(f, start=1) if line.strip()]


def parse_ints(path: str, n: int, fields: Sequence[str], what: str) -> list[int]:
    """``fields`` as integers; otherwise an error naming ``path``, line ``n`` and ``what`` they are."""
    try:
        return [int(x) for x in fields]
    except ValueError:
        raise EvaluationError(f"{path}:{n}: {what} must be integers, got {list(fields)}.") from None


def read_metadata(meta_dir: str) -> Metadata:
    """Read and check ``image_ids.txt``, ``image_sizes.txt`` (boxes only) and ``localization.txt``.

    Raises:
        EvaluationError: missing file, malformed line, duplicate id, id without annotation, box outside its
            image or inverted, mixed box and mask lines.
    """
    ids_path = os.path.join(meta_dir, "image_ids.txt")
    image_ids: list[str] = []
    seen: set[str] = set()
    for n, line in read_lines(ids_path):
        if line in seen:
            raise EvaluationError(f"{ids_path}:{n}: duplicate image id {line!r}.")
        seen.add(line)
        image_ids.append(line)
    if not image_ids:
        raise EvaluationError(f"{ids_path}: no image id.")
    meta = Metadata(image_ids=image_ids)

    loc_path = os.path.join(meta_dir, "localization.txt")
    loc_lines = read_lines(loc_path)
    kinds = {len(line.split(",")) for _, line in loc_lines}
    if kinds == {3}:
        for n, line in loc_lines:
            image_id, mask_path, ignore_path = line.split(",")
            if not mask_path:
                raise EvaluationError(f"{loc_path}:{n}: empty mask path.")
            if image_id in meta.masks:
                if ignore_path:
                    raise EvaluationError(
                        f"{loc_path}:{n}: only the first line of {image_id!r} may name an ignore mask."
                    )
                meta.masks[image_id].append(mask_path)
            else:
                meta.masks[image_id] = [mask_path]
                meta.ignores[image_id] = ignore_path
        annotated: dict[str, Any] = meta.masks
    else:
        sizes_path = os.path.join(meta_dir, "image_sizes.txt")
        for n, line in read_lines(sizes_path):
            parts = line.split(",")
            if len(parts) != 3:
                raise EvaluationError(f"{sizes_path}:{n}: expected 'id,width,height', got {line!r}.")
            w, h = parse_ints(sizes_path, n, parts[1:], "width and height")
            if w <= 0 or h <= 0:
                raise EvaluationError(f"{sizes_path}:{n}: width and height must be positive, got {w}x{h}.")
            meta.image_sizes[parts[0]] = (w, h)
        for n, line in loc_lines:
            parts = line.split(",")
            if len(parts) != 5:
                raise EvaluationError(
                    f"{loc_path}:{n}: expected 'id,x0,y0,x1,y1' (boxes) or 'id,mask,ignore' (masks), "
                    f"got {line!r}."
                )
            image_id = parts[0]
            x0, y0, x1, y1 = parse_ints(loc_path, n, parts[1:], "box coordinates")
            if image_id not in meta.image_sizes:
                if image_id in seen:
                    raise EvaluationError(f"{loc_path}:{n}: {image_id!r} has no size in {sizes_path}.")
                continue  # annotations of other splits are ignored, as the reference does
            w, h = meta.image_sizes[image_id]
            if x1 < x0 or y1 < y0:
                raise EvaluationError(
                    f"{loc_path}:{n}: inverted box {[x0, y0, x1, y1]} (need x0 <= x1, y0 <= y1)."
                )
            if min(x0, y0) < 0 or x1 > w or y1 > h:
                raise EvaluationError(f"{loc_path}:{n}: box {[x0, y0, x1, y1]} is outside the {w}x{h} image.")
            meta.boxes.setdefault(image_id, []).append((x0, y0, x1, y1))
        annotated = meta.boxes
    missing = [i for i in image_ids if i not in annotated]
    if missing:
        raise EvaluationError(f"{loc_path}: no annotation for {len(missing)} image(s), e.g. {missing[:3]}.")
    return meta
