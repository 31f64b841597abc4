"""Dictionary versions of the CAM -> location transforms (MONAI ``MapTransform``: ``keys``,
``allow_missing_keys``).

Output keys (``mask_keys``, ``box_key``, ...) accept one name or one name per key; ``None`` skips that output.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from .array import (
    BinarizeCAM,
    CAMToLocation,
    KeepRegions,
    MaskToBoxes,
    NormalizeCAM,
    UpsampleCAM,
    resolve_affine,
)
from .functional import boxes_to_world

__all__ = [
    "NormalizeCAMd",
    "UpsampleCAMd",
    "BinarizeCAMd",
    "KeepRegionsd",
    "MaskToBoxesd",
    "CAMToLocationd",
    "NormalizeCAMD",
    "NormalizeCAMDict",
    "UpsampleCAMD",
    "UpsampleCAMDict",
    "BinarizeCAMD",
    "BinarizeCAMDict",
    "KeepRegionsD",
    "KeepRegionsDict",
    "MaskToBoxesD",
    "MaskToBoxesDict",
    "CAMToLocationD",
    "CAMToLocationDict",
]


def _out_keys(name: str, value: str | Sequence[str] | None, keys: tuple) -> tuple:
    """One output key per input key: a single name serves a single key; ``None`` means "do not write"."""
    if value is None:
        return (None,) * len(keys)
    out = ensure_tuple(value)
    if len(out) != len(keys):
        raise ValueError(
            f"{name} must give one output key per key ({len(keys)} keys: {list(keys)}), got {value!r}."
        )
    return out


def _lookup(d: Mapping, key: Hashable | None, name: str) -> object:
    """``d[key]`` for an optional auxiliary key (``None`` -> ``None``), with an error naming the argument."""
    if key is None:
        return None
    if key not in d:
        raise KeyError(f"{name} {key!r} is not in the data (keys: {list(d)}).")
    return d[key]


def _affine_from(d: Mapping, affine_key: str | None, *sources: object) -> object:
    """The affine named by ``affine_key``, else the first MetaTensor source's.

    ``affine_key`` may name a matrix, a MetaTensor or a meta dict.
    """
    return resolve_affine(_lookup(d, affine_key, "affine_key"), *sources)


class _EachKeyd(MapTransform):
    """Apply ``self.transform`` (an array transform) to every key.

    The result is written back under the same key.
    """

    transform: Callable[[object], object]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class NormalizeCAMd(_EachKeyd):
    """Dictionary :class:`~monai_wsol.transforms.array.NormalizeCAM`.

    Min-max normalise each channel of ``keys``.
    """

    backend = NormalizeCAM.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = NormalizeCAM()


class UpsampleCAMd(MapTransform):
    """Dictionary :class:`~monai_wsol.transforms.array.UpsampleCAM`.

    Args:
        keys: CAM keys, channel-first.
        spatial_size: target size, used when ``ref_key`` is None.
        ref_key: key of a reference image; the CAMs are resized to its grid and take its meta (affine) when it
            is a MetaTensor.
        mode, align_corners: see ``UpsampleCAM``.
    """

    backend = UpsampleCAM.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | None = None,
        ref_key: str | None = None,
        mode: str = "linear",
        align_corners: bool | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_size is None and ref_key is None:
            raise ValueError("UpsampleCAMd needs spatial_size or ref_key.")
        self.ref_key = ref_key
        self.upsampler = UpsampleCAM(spatial_size, mode, align_corners)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        ref = _lookup(d, self.ref_key, "ref_key")
        for key in self.key_iterator(d):
            d[key] = self.upsampler(d[key], ref=ref)
        return d


class BinarizeCAMd(MapTransform):
    """Dictionary :class:`~monai_wsol.transforms.array.BinarizeCAM` (``cam >= tau``).

    Args:
        keys: CAM keys.
        tau: threshold in [0, 1].
        mask_keys: where to write the masks (one per key); ``None`` overwrites the CAM keys.
    """

    backend = BinarizeCAM.backend

    def __init__(
        self,
        keys: KeysCollection,
        tau: float,
        mask_keys: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarizer = BinarizeCAM(tau)
        self.mask_keys = self.keys if mask_keys is None else _out_keys("mask_keys", mask_keys, self.keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, mask_key in self.key_iterator(d, self.mask_keys):
            d[mask_key] = self.binarizer(d[key])
        return d


class KeepRegionsd(_EachKeyd):
    """Dictionary :class:`~monai_wsol.transforms.array.KeepRegions`: replace each mask of ``keys`` by the mask
    of
    its largest region / all regions of at least ``min_size`` voxels (per channel)."""

    backend = KeepRegions.backend

    def __init__(
        self,
        keys: KeysCollection,
        connectivity: int | None = None,
        mode: str = "largest",
        min_size: float = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = KeepRegions(connectivity, mode, min_size)


class MaskToBoxesd(MapTransform):
    """Dictionary :class:`~monai_wsol.transforms.array.MaskToBoxes`: boxes of the regions of the masks in
    ``keys``.

    Args:
        keys: channel-first mask keys.
        box_key: where to write the voxel boxes ``(N, 2 * spatial_dims)`` (StandardMode, exclusive max corner:
            the ``"standard"`` convention of :mod:`monai_wsol.boxes`).
        label_key: where to write the channel index of each box; ``None`` skips.
        world_box_key: where to write the world boxes; ``None`` skips. The affine comes from ``affine_key`` if
            given (an affine matrix, a MetaTensor image, or a meta dict such as ``"image_meta_dict"``), else
            from the mask's MetaTensor; a plain-array mask without ``affine_key`` raises ``ValueError``.
        cam_key: key of the CAM (same shape as the mask) whose ``reduction`` in each region is its score.
        score_key: where to write the scores (only with ``cam_key``).
        connectivity, mode, min_size, reduction, voxel_edges: see ``MaskToBoxes``.
    """

    backend = MaskToBoxes.backend

    def __init__(
        self,
        keys: KeysCollection,
        box_key: str | Sequence[str] = "pred_boxes",
        label_key: str | Sequence[str] | None = "pred_labels",
        world_box_key: str | Sequence[str] | None = "pred_boxes_world",
        cam_key: str | Sequence[str] | None = None,
        score_key: str | Sequence[str] | None = "pred_scores",
        affine_key: str | None = None,
        connectivity: int | None = None,
        mode: str = "largest",
        min_size: float = 0,
        reduction: str = "max",
        voxel_edges: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = _out_keys("box_key", box_key, self.keys)
        self.label_keys = _out_keys("label_key", label_key, self.keys)
        self.world_box_keys = _out_keys("world_box_key", world_box_key, self.keys)
        self.cam_keys = _out_keys("cam_key", cam_key, self.keys)
        self.score_keys = _out_keys("score_key", score_key, self.keys)
        self.affine_key = affine_key
        self.boxer = MaskToBoxes(connectivity, mode, min_size, world=False, reduction=reduction)
        self.voxel_edges = voxel_edges

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, box_key, label_key, world_key, cam_key, score_key in self.key_iterator(
            d, self.box_keys, self.label_keys, self.world_box_keys, self.cam_keys, self.score_keys
        ):
            boxes, labels, scores = self.boxer(d[key], _lookup(d, cam_key, "cam_key"))
            d[box_key] = boxes
            if label_key is not None:
                d[label_key] = labels
            if scores is not None and score_key is not None:
                d[score_key] = scores
            if world_key is not None:
                aff = _affine_from(d, self.affine_key, d[key])
                if aff is None:
                    raise ValueError(
                        f"world_box_key={world_key!r} needs an affine: {key!r} is not a MetaTensor and no "
                        "affine_key was given (pass affine_key, or world_box_key=None)."
                    )
                d[world_key] = boxes_to_world(boxes, aff, self.voxel_edges)
        return d


class CAMToLocationd(MapTransform):
    """Dictionary :class:`~monai_wsol.transforms.array.CAMToLocation`: CAM -> mask, boxes, labels, scores,
    world boxes in one step.

    Args:
        keys: CAM keys, channel-first ``(K, *spatial)``.
        tau: threshold in [0, 1].
        ref_key: image key whose grid the CAM is resized to, and whose MetaTensor affine gives world boxes.
        affine_key: explicit affine source (matrix, MetaTensor or meta dict); wins over ``ref_key``.
        mask_key, box_key, label_key, score_key, world_box_key: output keys (``None`` skips).
            ``world_box_key`` raises ``ValueError`` when no affine is known (no ``affine_key``, no MetaTensor
            ref or CAM).
        cam_out_key: if given, where to write the normalised, resized CAM (e.g. to save it as NIfTI).
        connectivity, mode, min_size, spatial_size, upsample_mode, align_corners, normalize, reduction,
        voxel_edges: see ``CAMToLocation``.
    """

    backend = CAMToLocation.backend

    def __init__(
        self,
        keys: KeysCollection,
        tau: float,
        ref_key: str | None = None,
        affine_key: str | None = None,
        mask_key: str | Sequence[str] | None = "pred_mask",
        box_key: str | Sequence[str] | None = "pred_boxes",
        label_key: str | Sequence[str] | None = "pred_labels",
        score_key: str | Sequence[str] | None = "pred_scores",
        world_box_key: str | Sequence[str] | None = "pred_boxes_world",
        cam_out_key: str | Sequence[str] | None = None,
        connectivity: int | None = None,
        mode: str = "largest",
        min_size: float = 0,
        spatial_size: Sequence[int] | None = None,
        upsample_mode: str = "linear",
        align_corners: bool | None = None,
        normalize: bool = True,
        reduction: str = "max",
        voxel_edges: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.affine_key = affine_key
        self.out_keys = {
            "mask": _out_keys("mask_key", mask_key, self.keys),
            "boxes": _out_keys("box_key", box_key, self.keys),
            "labels": _out_keys("label_key", label_key, self.keys),
            "scores": _out_keys("score_key", score_key, self.keys),
            "boxes_world": _out_keys("world_box_key", world_box_key, self.keys),
            "cam": _out_keys("cam_out_key", cam_out_key, self.keys),
        }
        self.locator = CAMToLocation(
            tau,
            connectivity,
            mode,
            min_size,
            spatial_size,
            upsample_mode,
            align_corners,
            normalize,
            reduction,
            voxel_edges,
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        ref = _lookup(d, self.ref_key, "ref_key")
        names = list(self.out_keys)
        for key, *outs in self.key_iterator(d, *self.out_keys.values()):
            affine = _affine_from(d, self.affine_key)
            result = self.locator(d[key], ref=ref, affine=affine)
            for name, out_key in zip(names, outs, strict=True):
                if out_key is None:
                    continue
                if name == "boxes_world" and result[name] is None:
                    raise ValueError(
                        f"world_box_key={out_key!r} needs an affine: neither affine_key, "
                        f"a MetaTensor ref_key nor a MetaTensor {key!r} gives one "
                        "(pass affine_key, or world_box_key=None)."
                    )
                d[out_key] = result[name]
        return d


NormalizeCAMD = NormalizeCAMDict = NormalizeCAMd
UpsampleCAMD = UpsampleCAMDict = UpsampleCAMd
BinarizeCAMD = BinarizeCAMDict = BinarizeCAMd
KeepRegionsD = KeepRegionsDict = KeepRegionsd
MaskToBoxesD = MaskToBoxesDict = MaskToBoxesd
CAMToLocationD = CAMToLocationDict = CAMToLocationd
