"""The one preprocessing of the bundle's training, validation, inference and evaluation (and so the
benchmark's).

Every stage loads with :func:`~monai_wsol.data.readers.make_load_transforms` (optional orientation / spacing),
scales intensities by percentiles per channel (robust to 16-bit and signed HU data: no fixed window is
assumed), and, where a fixed network input size is asked for, resizes. Masks are resampled with
nearest-neighbour interpolation, so they stay binary.

Stages (``stage`` argument of :func:`make_preprocessing`):

- ``"train"``: ``image`` (+ ``label``): resize, random flip, then the method's own per-sample transforms
  (e.g. Hide-and-Seek), last;
- ``"validate"``: ``image``, ``mask`` (+ ``label``): resize both, no randomness;
- ``"evaluate"``: ``image``, ``mask`` (+ ``label``, ``boxes``) on the image's own grid (the CAM is upsampled
  to it, so GT masks and boxes are compared where they were drawn);
- ``"infer"``: ``image`` only, on its own grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandFlipd,
    Resized,
    ScaleIntensityRangePercentilesd,
    SelectItemsd,
)

from monai_wsol.data.readers import make_load_transforms

__all__ = ["STAGES", "make_preprocessing", "intensity_transform"]

STAGES: tuple[str, ...] = ("train", "validate", "evaluate", "infer")


def intensity_transform(
    keys: str | Sequence[str] = "image", lower: float = 0.5, upper: float = 99.5
) -> ScaleIntensityRangePercentilesd:
    """Per-channel percentile scaling of ``keys`` to [0, 1] (clipped)."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(
            f"intensity percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}."
        )
    return ScaleIntensityRangePercentilesd(
        keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
    )


def make_preprocessing(
    stage: str,
    spatial_dims: int,
    spatial_size: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    orientation: str | None = None,
    intensity_percentiles: Sequence[float] = (0.5, 99.5),
    flip_prob: float = 0.5,
    flip_axis: int | Sequence[int] | None = 0,
    method_transforms: Sequence[Callable] = (),
) -> Compose:
    """The preprocessing ``Compose`` of one stage (see the module docstring).

    Args:
        stage: one of :data:`STAGES`.
        spatial_dims: 2 or 3.
        spatial_size: the network's input size for ``"train"`` / ``"validate"`` (``None``: keep each image's
            grid; images of one batch must then share it).
        spacing, orientation: resampling and reorientation at load time (``None``: the file's own).
        intensity_percentiles: ``(lower, upper)`` percentiles mapped to 0 and 1.
        flip_prob, flip_axis: random flip of training images (``flip_prob=0`` disables it). Axis 0 is
            left-right for axial slices in RAS-like storage.
        method_transforms: the method's per-sample training transforms (``MethodSpec.train_transforms``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}.")
    with_mask = stage in ("validate", "evaluate")
    keys = ["image", "mask"] if with_mask else ["image"]
    xforms: list[Callable] = [
        make_load_transforms(
            keys=keys,
            spatial_dims=spatial_dims,
            spacing=spacing,
            orientation=orientation,
            mask_keys=["mask"] if with_mask else [],
        ),
        intensity_transform("image", *intensity_percentiles),
    ]
    if spatial_size is not None and stage in ("train", "validate"):
        modes = ["bilinear", "nearest"] if with_mask else ["bilinear"]
        if spatial_dims == 3:
            modes = ["trilinear" if m == "bilinear" else m for m in modes]
        xforms.append(Resized(keys, spatial_size=list(spatial_size), mode=modes))
    if stage == "train":
        if flip_prob > 0 and flip_axis is not None:
            xforms.append(RandFlipd("image", prob=flip_prob, spatial_axis=flip_axis))
        xforms.extend(method_transforms)
    elif method_transforms:
        raise ValueError("method_transforms apply to the 'train' stage only.")
    if stage == "infer":
        xforms.append(EnsureTyped("image", dtype=torch.float32))
        return Compose(xforms)
    xforms.append(EnsureTyped("label", dtype=torch.long, allow_missing_keys=True))
    selected = {"train": ["image", "label"], "validate": ["image", "label", "mask"]}.get(stage)
    if selected is not None:
        xforms.append(SelectItemsd(selected, allow_missing_keys=True))
    return Compose(xforms)
