"""The one preprocessing of the bundle's training, validation, inference and evaluation (and so the
benchmark's).

Every stage loads with :func:`~monai_wsol.data.readers.make_load_transforms` (optional orientation / spacing),
scales intensities by percentiles per channel (robust to 16-bit and signed HU data: no fixed window is
assumed), and, where a fixed network input size is asked for, resizes. Masks are resampled with
nearest-neighbour interpolation, so they stay binary.

Stages (``stage`` argument of :func:`make_preprocessing`):

- ``"train"``: ``image`` (+ ``label``): resize, random flip, then the method's own per-sample transforms
  (e.g. Hide-and-Seek), last. With ``mask`` too when the method trains on it (its transforms act on the
  ``"mask"`` key, as the ``supervised`` and ``prior`` bounds' do, or ``with_mask=True``): the mask is resized
  with nearest-neighbour interpolation and flipped with the image, and a negative item (label 0) without a
  mask gets an all-zero one. With ``patch_size`` (volumes larger than the network's input), no resize:
  ``patch_samples`` random patches of ``patch_size`` per image on its own grid (MONAI's
  ``RandSpatialCropSamplesd``, after padding an image smaller than a patch), each carrying the image's
  label: a bag, whose label is the image's (:class:`~monai_wsol.engines.MethodTrainer` gives the bag the
  logits of its most positive patch, as sliding-window inference gives a volume its most positive window's);
- ``"validate"``: ``image``, ``mask`` (+ ``label``): resize both, no randomness (with ``patch_size``: on the
  image's own grid, as the network then sees patches of it at full resolution);
- ``"evaluate"``: ``image``, ``mask`` (+ ``label``, ``boxes``) on the image's own grid (the CAM is upsampled
  to it, so GT masks and boxes are compared where they were drawn);
- ``"infer"``: ``image`` only, on its own grid.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambda,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandSpatialCropSamplesd,
    Resized,
    ScaleIntensityRangePercentilesd,
    SelectItemsd,
    SpatialPadd,
)
from monai.utils import ensure_tuple

from monai_wsol.data.readers import make_load_transforms

__all__ = [
    "AUGMENTATIONS",
    "STAGES",
    "NegativeMaskd",
    "augmentation_transforms",
    "make_preprocessing",
    "intensity_transform",
    "transforms_use_key",
]

STAGES: tuple[str, ...] = ("train", "validate", "evaluate", "infer")
#: named training augmentations of :func:`augmentation_transforms`
AUGMENTATIONS: tuple[str, ...] = ("none", "affine")


def augmentation_transforms(
    augmentation: str | Sequence[Callable] | None, keys: Sequence[str], spatial_dims: int
) -> list[Callable]:
    """The training augmentation: a name of :data:`AUGMENTATIONS` or a list of dictionary transforms.

    - ``"none"`` (or ``None``): nothing beyond the random flip;
    - ``"affine"``: MONAI's ``RandAffined`` (probability 0.5: in-plane rotation up to 15 degrees -- about
      the last axis in 3D --, scaling by up to 10 %; no translation, which a convolutional classifier with
      global pooling does not need; bilinear for the image, nearest for the mask, zeros outside) and
      ``RandScaleIntensityd`` (probability 0.5, factor up to 10 %) on the image;
    - a list: used as given (dictionary transforms; a method that trains on masks needs them applied to
      ``"mask"`` too).

    Args:
        augmentation: see above.
        keys: the image key, then the mask key when the training items carry one.
        spatial_dims: 2 or 3.
    """
    if augmentation is None or (isinstance(augmentation, str) and augmentation == "none"):
        return []
    if isinstance(augmentation, str):
        if augmentation != "affine":
            raise ValueError(
                f"unknown augmentation {augmentation!r}; valid names: {', '.join(AUGMENTATIONS)} "
                "(or a list of dictionary transforms)."
            )
        angle = float(np.deg2rad(15.0))
        rotate = (angle,) if spatial_dims == 2 else (0.0, 0.0, angle)
        modes = ["bilinear", "nearest"][: len(keys)]
        return [
            RandAffined(
                list(keys),
                prob=0.5,
                rotate_range=rotate,
                scale_range=(0.1,) * spatial_dims,
                mode=modes,
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys[0], factors=0.1, prob=0.5),
        ]
    return list(augmentation)


def intensity_transform(
    keys: str | Sequence[str] = "image", lower: float = 0.5, upper: float = 99.5, clip: bool = True
) -> ScaleIntensityRangePercentilesd:
    """Per-channel percentile scaling of ``keys``: the ``lower`` / ``upper`` percentiles map to 0 / 1,
    linearly; ``clip`` clips the result to [0, 1]."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(
            f"intensity percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}."
        )
    return ScaleIntensityRangePercentilesd(
        keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=bool(clip), channel_wise=True
    )


def transforms_use_key(transforms: Sequence[Callable], key: Hashable) -> bool:
    """Whether a dictionary transform of ``transforms`` (nested ``Compose`` included) acts on ``key``."""
    for t in transforms:
        if key in ensure_tuple(getattr(t, "keys", ())):
            return True
        if isinstance(t, Compose) and transforms_use_key(t.transforms, key):
            return True
    return False


def _drop_missing_mask(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not (k == "mask" and v is None)}


class NegativeMaskd(MapTransform):
    """Give an item without a GT mask an all-zero one (the image's first channel's grid) when it is negative.

    An item of another class without a mask raises: a method that trains on masks cannot use it.

    Args:
        keys: the mask key.
        image_key: the image whose grid (and metadata) the zero mask takes.
        label_key: the class (an index, or one-hot / scores whose argmax is the class).
        negative_class: the class whose images hold no lesion.
    """

    def __init__(
        self,
        keys: Hashable = "mask",
        image_key: Hashable = "image",
        label_key: Hashable = "label",
        negative_class: int = 0,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.label_key, self.negative_class = image_key, label_key, int(negative_class)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if d.get(key) is not None:
                continue
            label = d.get(self.label_key)
            values = None if label is None else np.asarray(torch.as_tensor(label).cpu()).reshape(-1)
            cls = None if values is None else int(values.argmax() if values.size > 1 else values[0])
            if cls != self.negative_class:
                image = d.get(self.image_key)
                source = getattr(image, "meta", {}).get("filename_or_obj", "an item")
                raise ValueError(
                    f"{source} (class {cls}) has no '{key}': training on GT masks needs one for every image "
                    f"of a lesion class (an image of class {self.negative_class} without one gets zeros)."
                )
            d[key] = torch.zeros_like(d[self.image_key][:1])
        return d


def make_preprocessing(
    stage: str,
    spatial_dims: int,
    spatial_size: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    orientation: str | None = None,
    intensity_percentiles: Sequence[float] = (0.5, 99.5),
    intensity_clip: bool = True,
    flip_prob: float = 0.5,
    flip_axis: int | Sequence[int] | None = 0,
    method_transforms: Sequence[Callable] = (),
    with_mask: bool | None = None,
    augmentation: str | Sequence[Callable] | None = None,
    patch_size: Sequence[int] | None = None,
    patch_samples: int = 1,
) -> Compose:
    """The preprocessing ``Compose`` of one stage (see the module docstring).

    Args:
        stage: one of :data:`STAGES`.
        spatial_dims: 2 or 3.
        spatial_size: the network's input size for ``"train"`` / ``"validate"`` (``None``: keep each image's
            grid; images of one batch must then share it).
        spacing, orientation: resampling and reorientation at load time (``None``: the file's own).
        intensity_percentiles: ``(lower, upper)`` percentiles mapped to 0 and 1.
        intensity_clip: clip the scaled intensities to [0, 1]. With an upper percentile that a lesion can
            reach (a bright lesion covers a few percent of an image), clipping and scaling by it make the
            whole image's intensities depend on the lesion: a classifier can then detect the lesion from the
            darkened rest of the image and its CAM points away from it. The bundle scales by a percentile
            that normal tissue sets (``[0.5, 90]``) without clipping (docs/method.md, "Preprocessing").
        flip_prob, flip_axis: random flip of training images (``flip_prob=0`` disables it). Axis 0 is
            left-right for axial slices in RAS-like storage.
        method_transforms: the method's per-sample training transforms (``MethodSpec.train_transforms``).
        augmentation: the ``"train"`` stage's augmentation after the flip, before the method's transforms:
            a name (``"none"``, ``"affine"``) or a list of dictionary transforms
            (:func:`augmentation_transforms`).
        patch_size: ``"train"``: train on ``patch_samples`` random patches of this size per image, on the
            image's own grid, instead of the image resized to ``spatial_size``; ``"validate"``: keep the
            image's grid (``spatial_size`` is then not used by these two stages). ``None``: whole images.
        patch_samples: patches per image (a bag; ``"train"`` with a ``patch_size`` only, ignored without).
        with_mask: load the GT ``mask`` for the ``"train"`` stage (a method that trains on it);
            ``None`` (default): when a method transform acts on the ``"mask"`` key. The other stages are fixed
            (``"validate"`` / ``"evaluate"`` load it, ``"infer"`` does not).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}.")
    if stage == "train":
        with_mask = transforms_use_key(method_transforms, "mask") if with_mask is None else bool(with_mask)
    elif with_mask is not None and bool(with_mask) != (stage in ("validate", "evaluate")):
        raise ValueError(f"with_mask applies to the 'train' stage only; stage {stage!r} fixes it.")
    else:
        with_mask = stage in ("validate", "evaluate")
    keys = ["image", "mask"] if with_mask else ["image"]
    # training on masks: negatives may come without one (they get zeros after loading)
    negatives_without_mask = with_mask and stage == "train"
    xforms: list[Callable] = [Lambda(_drop_missing_mask)] if negatives_without_mask else []
    xforms += [
        # flattened: a nested Compose counts as random for CacheDataset, which would then cache nothing
        *make_load_transforms(
            keys=keys,
            spatial_dims=spatial_dims,
            spacing=spacing,
            orientation=orientation,
            mask_keys=["mask"] if with_mask else [],
            allow_missing_keys=negatives_without_mask,
        ).transforms,
    ]
    if negatives_without_mask:
        xforms.append(NegativeMaskd("mask"))
    xforms.append(intensity_transform("image", *intensity_percentiles, clip=intensity_clip))
    if patch_size is not None:
        patch = [int(v) for v in ensure_tuple(patch_size)]
        if len(patch) != spatial_dims or min(patch) < 1 or int(patch_samples) < 1:
            raise ValueError(
                f"patch_size {patch_size} must have {spatial_dims} positive sizes and patch_samples "
                f"{patch_samples} must be >= 1."
            )
        if stage == "train":
            xforms.append(SpatialPadd(keys, spatial_size=patch))
            xforms.append(
                RandSpatialCropSamplesd(
                    keys, roi_size=patch, num_samples=int(patch_samples), random_size=False
                )
            )
        spatial_size = None  # patches (train) or the whole grid (validate) at the image's own resolution
    if spatial_size is not None and stage in ("train", "validate"):
        modes = ["bilinear", "nearest"] if with_mask else ["bilinear"]
        if spatial_dims == 3:
            modes = ["trilinear" if m == "bilinear" else m for m in modes]
        xforms.append(Resized(keys, spatial_size=list(spatial_size), mode=modes))
    augment = augmentation_transforms(augmentation, keys, spatial_dims)
    if stage == "train":
        if flip_prob > 0 and flip_axis is not None:
            xforms.append(RandFlipd(keys, prob=flip_prob, spatial_axis=flip_axis))
        xforms.extend(augment)
        xforms.extend(method_transforms)
    elif method_transforms or augment:
        raise ValueError("method_transforms and augmentation apply to the 'train' stage only.")
    if stage == "infer":
        xforms.append(EnsureTyped("image", dtype=torch.float32))
        return Compose(xforms)
    xforms.append(EnsureTyped("label", dtype=torch.long, allow_missing_keys=True))
    selected = {"train": keys[:1] + ["label"] + keys[1:], "validate": ["image", "label", "mask"]}.get(stage)
    if selected is not None:
        xforms.append(SelectItemsd(selected, allow_missing_keys=True))
    return Compose(xforms)
