"""CAM -> normalised map -> mask -> regions -> boxes (voxel and world), as MONAI array and dictionary
transforms.

See ``docs/transforms.md`` for the conventions (box format, exclusive max corner, world frame). Voxel boxes
are the ``"standard"`` convention of :mod:`monai_wsol.boxes` (MONAI StandardMode).
"""

from .array import (
    BinarizeCAM,
    CAMToLocation,
    KeepRegions,
    MaskToBoxes,
    NormalizeCAM,
    UpsampleCAM,
    resolve_affine,
)
from .dictionary import (
    BinarizeCAMD,
    BinarizeCAMd,
    BinarizeCAMDict,
    CAMToLocationD,
    CAMToLocationd,
    CAMToLocationDict,
    KeepRegionsD,
    KeepRegionsd,
    KeepRegionsDict,
    MaskToBoxesD,
    MaskToBoxesd,
    MaskToBoxesDict,
    NormalizeCAMD,
    NormalizeCAMd,
    NormalizeCAMDict,
    UpsampleCAMD,
    UpsampleCAMd,
    UpsampleCAMDict,
)
from .functional import (
    binarize_cam,
    boxes_to_world,
    keep_regions,
    label_regions,
    locate_regions,
    mask_to_boxes,
    normalize_cam,
    upsample_cam,
)
from .hide_and_seek import RandHideAndSeek, RandHideAndSeekD, RandHideAndSeekd, RandHideAndSeekDict

__all__ = [
    # pure functions
    "normalize_cam",
    "upsample_cam",
    "binarize_cam",
    "label_regions",
    "keep_regions",
    "mask_to_boxes",
    "locate_regions",
    "boxes_to_world",
    "resolve_affine",
    # array transforms
    "RandHideAndSeek",
    "RandHideAndSeekd",
    "RandHideAndSeekD",
    "RandHideAndSeekDict",
    "NormalizeCAM",
    "UpsampleCAM",
    "BinarizeCAM",
    "KeepRegions",
    "MaskToBoxes",
    "CAMToLocation",
    # dictionary transforms (and MONAI's D / Dict aliases)
    "NormalizeCAMd",
    "NormalizeCAMD",
    "NormalizeCAMDict",
    "UpsampleCAMd",
    "UpsampleCAMD",
    "UpsampleCAMDict",
    "BinarizeCAMd",
    "BinarizeCAMD",
    "BinarizeCAMDict",
    "KeepRegionsd",
    "KeepRegionsD",
    "KeepRegionsDict",
    "MaskToBoxesd",
    "MaskToBoxesD",
    "MaskToBoxesDict",
    "CAMToLocationd",
    "CAMToLocationD",
    "CAMToLocationDict",
]
