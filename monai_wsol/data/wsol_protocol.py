"""Natural-image data in the WSOL protocol's layout (Choe et al., CVPR 2020; reference:
clovaai/wsolevaluation).

Layout, exactly as the reference's ``data_loaders.py`` and ``evaluation.py`` read it::

    dataset_root/<DATASET>/<image id>                  e.g. CUB/001.Black_footed_Albatross/..._796111.jpg
    metadata_root/<DATASET>/<split>/image_ids.txt      one image id (a path under dataset_root/<DATASET>) a
    line
                                   class_labels.txt    id,label           (label: int, 0-based)
                                   image_sizes.txt     id,width,height    (box datasets)
                                   localization.txt    id,x0,y0,x1,y1     (boxes; one line per box)
                                                    or id,mask_png,ignore_png (masks; OpenImages)
                                   image_ids_proxy.txt (optional) the reference's proxy training subset

Splits are the metadata folder names ``train``, ``val`` and ``test``; the paper calls them train-weaksup,
train-fullsup and test, and those names are accepted as aliases (:data:`SPLIT_ALIASES`). Comma-separated,
no spaces. ``train`` may lack ``image_sizes.txt`` and ``localization.txt`` (OpenImages' does); items then
carry no ``boxes`` / ``image_size``.

Axis convention (read this before drawing a box on a tensor): MONAI's ``PILReader`` returns arrays indexed
(x, y) by default; here it is built with ``reverse_indexing=False`` so that images come out **(C, H, W)**,
row = y, column = x, exactly the tensor ``torchvision.transforms.ToTensor`` gives and an ImageNet-pretrained
network expects. A class activation map computed on it is (h, w) and can be saved as the reference's score
map (``np.save(<image_id>.npy, cam)``) without transposing. Boxes are ``[x0, y0, x1, y1]`` in the
**original** image's pixels (inclusive, as the metadata) and are not moved by the transforms: the metric
rescales them to each score map's size (:func:`monai_wsol.evaluate.resize_box`), and training never uses
them.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import DataLoader, Dataset, PILReader, list_data_collate
from monai.transforms import (
    Compose,
    MapTransform,
    NormalizeIntensityd,
    RandFlipd,
    RandSpatialCropd,
    Transform,
)
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple_rep

from monai_wsol.data.readers import LoadImageCheckedd
from monai_wsol.data.wsol_metadata import EvaluationError, parse_ints, read_lines, read_metadata
from monai_wsol.io_utils import atomic_path, atomic_write_text

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLIT_ALIASES",
    "WSOLDataError",
    "load_wsol_split",
    "ResizeAntialias",
    "ResizeAntialiasd",
    "make_wsol_transforms",
    "wsol_collate",
    "make_wsol_dataloader",
    "make_fake_wsol_dataset",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_ALIASES = {"train-weaksup": "train", "train-fullsup": "val"}
# keys whose per-image values differ in length (boxes) or are not numbers: kept as lists by wsol_collate
_LIST_KEYS = ("image_id", "boxes", "image_size", "mask_paths", "ignore_path", "image_path")


class WSOLDataError(EvaluationError):
    """Bad WSOL-protocol data; the message names the file (and the metadata line)."""


# ---------------------------------------------------------------------------------------------------------
# reading a split
# ---------------------------------------------------------------------------------------------------------


def _read_id_table(path: str, fields: Sequence[str]) -> dict[str, tuple[list[int], int]]:
    """``id,int[,int...]`` lines -> {id: (ints, line number)}; errors name ``path:line``."""
    table: dict[str, tuple[list[int], int]] = {}
    expected = "id," + ",".join(fields)
    for n, line in read_lines(path):
        parts = line.split(",")
        if len(parts) != len(fields) + 1 or not parts[0]:
            raise WSOLDataError(f"{path}:{n}: expected {expected!r}, got {line!r}.")
        if parts[0] in table:
            raise WSOLDataError(f"{path}:{n}: duplicate image id {parts[0]!r}.")
        table[parts[0]] = (parse_ints(path, n, parts[1:], " and ".join(fields)), n)
    return table


def load_wsol_split(
    dataset_root: str | os.PathLike,
    metadata_root: str | os.PathLike,
    dataset_name: str,
    split: str,
    proxy: bool = False,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read one split of the WSOL protocol as a MONAI datalist.

    Args:
        dataset_root: folder holding ``<dataset_name>/<image id>`` (the reference's ``--data_root``).
        metadata_root: folder holding ``<dataset_name>/<split>/*.txt`` (the reference's ``--metadata_root``).
        dataset_name: ``CUB``, ``ILSVRC``, ``OpenImages`` or any folder name in that layout.
        split: ``train``, ``val``, ``test`` (or the paper's ``train-weaksup``, ``train-fullsup``).
        proxy: read ``image_ids_proxy.txt`` instead of ``image_ids.txt`` (the reference's proxy training set).
        check_files: check that every image exists (one ``stat`` per image; turn off for a trusted ImageNet).

    Returns:
        One dict per image, in ``image_ids.txt`` order: ``image`` (absolute path), ``label`` (int),
        ``image_id`` (str); with box metadata also ``boxes`` (float32 (k, 4) ``[x0, y0, x1, y1]`` in original
        pixels) and ``image_size`` (``(width, height)``); with mask metadata ``mask_paths`` (list) and
        ``ignore_path`` (str, may be empty), relative to the mask root as written in ``localization.txt``.

    Raises:
        WSOLDataError: missing folder, file or image; malformed, duplicate or unannotated line; box outside
            its image. Messages name the file and line.
    """
    split = SPLIT_ALIASES.get(split, split)
    meta_dir = os.path.join(os.fspath(metadata_root), dataset_name, split)
    if not os.path.isdir(meta_dir):
        raise WSOLDataError(
            f"{meta_dir}: metadata folder not found (expected <metadata_root>/<dataset_name>/<split>, split "
            f"one of train, val, test or {sorted(SPLIT_ALIASES)})."
        )
    image_dir = os.path.abspath(os.path.join(os.fspath(dataset_root), dataset_name))
    ids_path = os.path.join(meta_dir, "image_ids_proxy.txt" if proxy else "image_ids.txt")
    labels_path = os.path.join(meta_dir, "class_labels.txt")
    sizes_path = os.path.join(meta_dir, "image_sizes.txt")
    try:
        ids = read_lines(ids_path)
        labels = _read_id_table(labels_path, ("label",))
        sizes = _read_id_table(sizes_path, ("width", "height")) if os.path.isfile(sizes_path) else {}
        # read_metadata checks boxes against image sizes, multi-line annotations and masks (file and line)
        has_loc = os.path.isfile(os.path.join(meta_dir, "localization.txt"))
        meta = read_metadata(meta_dir) if has_loc else None
    except WSOLDataError:
        raise
    except EvaluationError as e:  # the shared parsers' errors, under this module's error type
        raise WSOLDataError(str(e)) from None
    if not ids:
        raise WSOLDataError(f"{ids_path}: no image id.")

    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, image_id in ids:
        where = f"listed at {ids_path}:{n}"
        if image_id in seen:
            raise WSOLDataError(f"{ids_path}:{n}: duplicate image id {image_id!r}.")
        seen.add(image_id)
        if image_id not in labels:
            raise WSOLDataError(f"{labels_path}: no class label for {image_id!r} ({where}).")
        (label,), label_line = labels[image_id]
        if label < 0:
            raise WSOLDataError(f"{labels_path}:{label_line}: class label must be >= 0, got {label}.")
        path = os.path.join(image_dir, image_id)
        if check_files and not os.path.isfile(path):
            raise WSOLDataError(f"{path}: image not found ({where}).")
        item: dict[str, Any] = {"image": path, "label": label, "image_id": image_id}
        if image_id in sizes:
            item["image_size"] = tuple(sizes[image_id][0])
        if meta is not None and image_id in meta.boxes:
            item["boxes"] = np.asarray(meta.boxes[image_id], dtype=np.float32).reshape(-1, 4)
        elif meta is not None and image_id in meta.masks:
            item["mask_paths"] = list(meta.masks[image_id])
            item["ignore_path"] = meta.ignores[image_id]
        elif meta is not None:
            raise WSOLDataError(f"{meta_dir}/localization.txt: no annotation for {image_id!r} ({where}).")
        items.append(item)
    return items


# ---------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------


def _to_rgb(image: Any) -> Any:
    """PIL converter: grey, palette, CMYK and RGBA images become RGB, as the reference's ``convert('RGB')``.
    A module-level function (not a lambda) so that DataLoader workers can pickle the reader."""
    return image.convert("RGB")


class ResizeAntialias(Transform):
    """Resize a (C, H, W) image with bilinear interpolation and antialiasing, as ``torchvision``'s ``Resize``.

    ``torch.nn.functional.interpolate(antialias=True)`` reproduces PIL's bilinear filter (the reference
    resizes PIL images) to within uint8 rounding; MONAI's ``Resize(anti_aliasing=True)`` smooths with a
    Gaussian instead, which measured about 1 grey level mean difference from PIL on natural photographs.

    Args:
        spatial_size: output (H, W), or one int for a square.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: Sequence[int] | int) -> None:
        size = ensure_tuple_rep(spatial_size, 2)
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise ValueError(f"spatial_size={spatial_size} must be one or two positive ints (H, W).")
        self.spatial_size = (int(size[0]), int(size[1]))

    def __call__(self, img: Any) -> torch.Tensor:
        """(C, H, W) array or tensor -> float32 (C, *spatial_size) tensor (metadata dropped)."""
        x = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        if x.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {tuple(x.shape)}.")
        out = F.interpolate(
            x[None], size=self.spatial_size, mode="bilinear", align_corners=False, antialias=True
        )
        return out[0]


class ResizeAntialiasd(MapTransform):
    """Dictionary wrapper of :class:`ResizeAntialias`."""

    backend = ResizeAntialias.backend

    def __init__(
        self, keys: KeysCollection, spatial_size: Sequence[int] | int, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeAntialias(spatial_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d


def make_wsol_transforms(
    train: bool, resize_size: int = 256, crop_size: int = 224, image_key: str = "image"
) -> Compose:
    """The reference's preprocessing as MONAI dictionary transforms.

    - train: resize to ``resize_size`` x ``resize_size``, random ``crop_size`` crop, random horizontal flip
      (along x, p = 0.5);
    - eval (val/test): resize to ``crop_size`` x ``crop_size``;
    - both: load RGB, scale to [0, 1] and normalise with the ImageNet mean and std.

    Args:
        train: training (random) or evaluation (deterministic) pipeline.
        resize_size: the reference's ``--resize_size`` (training only).
        crop_size: the reference's ``--crop_size``; the evaluation size.
        image_key: key of the image path in the items.

    Returns:
        ``Compose`` mapping an item of :func:`load_wsol_split` to the same item with ``image`` a float32
        (3, crop_size, crop_size) tensor in (C, H, W) order (see the module docstring); other keys untouched.
    """
    if min(resize_size, crop_size) < 1:
        raise ValueError(f"resize_size={resize_size} and crop_size={crop_size} must be positive.")
    if train and crop_size > resize_size:
        raise ValueError(f"crop_size={crop_size} must be <= resize_size={resize_size} for training.")
    reader = PILReader(converter=_to_rgb, reverse_indexing=False)  # (H, W, 3): see the module docstring
    xforms: list = [
        LoadImageCheckedd(image_key, reader=reader, image_only=True, ensure_channel_first=True),
    ]
    if train:
        xforms += [
            ResizeAntialiasd(image_key, resize_size),
            RandSpatialCropd(image_key, roi_size=(crop_size, crop_size), random_size=False),
            RandFlipd(image_key, prob=0.5, spatial_axis=1),  # spatial axes are (H, W): axis 1 is x
        ]
    else:
        xforms.append(ResizeAntialiasd(image_key, crop_size))
    # ToTensor's /255 folded into the normalisation: (v / 255 - mean) / std = (v - 255 mean) / (255 std)
    xforms.append(
        NormalizeIntensityd(
            image_key,
            subtrahend=[255.0 * m for m in IMAGENET_MEAN],
            divisor=[255.0 * s for s in IMAGENET_STD],
            channel_wise=True,
        )
    )
    return Compose(xforms)


def wsol_collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate items of :func:`load_wsol_split` after the transforms: ``image`` (B, 3, H, W) and ``label``
    (B,) are stacked by MONAI's ``list_data_collate``; ``image_id``, ``boxes`` (ragged), ``image_size``, mask
    paths
    stay per-image lists."""
    kept = [{k: v for k, v in item.items() if k not in _LIST_KEYS} for item in batch]
    out = dict(list_data_collate(kept))
    for key in _LIST_KEYS:
        if key in batch[0]:
            out[key] = [item[key] for item in batch]
    return out


def make_wsol_dataloader(
    items: Sequence[Mapping[str, Any]],
    train: bool,
    batch_size: int,
    num_workers: int = 0,
    resize_size: int = 256,
    crop_size: int = 224,
) -> DataLoader:
    """A MONAI ``DataLoader`` over items of :func:`load_wsol_split`, as the reference's ``get_data_loader``:
    training transforms and shuffling when ``train``, evaluation transforms and metadata order otherwise.

    Batches are dicts (see :func:`wsol_collate`): ``image`` (B, 3, crop_size, crop_size), ``label`` (B,),
    ``image_id`` list, and where the split has them ``boxes`` / ``image_size`` lists. MONAI's ``DataLoader``
    seeds each worker's random transforms.
    """
    dataset = Dataset(list(items), make_wsol_transforms(train, resize_size=resize_size, crop_size=crop_size))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers, collate_fn=wsol_collate
    )


# ---------------------------------------------------------------------------------------------------------
# a tiny fake dataset in the same layout
# ---------------------------------------------------------------------------------------------------------

_SPLITS = ("train", "val", "test")


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[int(v)] for v in rng.integers(0, 16, size=n))


def _fake_image_id(
    dataset_name: str, split: str, c: int, i: int, serial: int, rng: np.random.Generator
) -> str:
    """Image ids shaped like the reference's metadata of each dataset."""
    if dataset_name == "ILSVRC":
        if split == "train":
            return f"train/n{c:08d}/n{c:08d}_{i}.JPEG"
        if split == "val":  # ImageNetV2 images, one folder per class index
            return f"val2/{c}/{_hex(rng, 40)}.jpeg"
        return f"val/ILSVRC2012_val_{serial:08d}.JPEG"
    if dataset_name == "OpenImages":
        return f"{split}/0fake{c:02d}/{_hex(rng, 16)}.jpg"
    folder = f"{c + 1:03d}.Fake_class_{c}"
    if split == "val":  # CUBV2 images sit in the same class folders under Flickr-style numeric names
        return f"{folder}/{int(rng.integers(10**9, 10**11))}.jpg"
    return f"{folder}/Fake_Class_{c}_{split}_{i:04d}.jpg"


def _class_colour(c: int, num_classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(c / num_classes, 0.85, 0.9)
    return np.array([r, g, b]) * 255.0


def _ellipse(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A filled ellipse (bool (h, w)) with semi-axes 15-35 % of the image, wholly inside it."""
    a = rng.uniform(0.15, 0.35) * w
    b = rng.uniform(0.15, 0.35) * h
    cx = rng.uniform(a, w - 1 - a)
    cy = rng.uniform(b, h - 1 - b)
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _draw_objects(rng: np.random.Generator, w: int, h: int, max_objects: int) -> list[np.ndarray]:
    """1..max_objects non-overlapping ellipses (with a 2-pixel gap, so their boxes' masks stay apart)."""
    masks = [_ellipse(rng, w, h)]
    for _ in range(int(rng.integers(1, max_objects + 1)) - 1):
        for _attempt in range(20):
            m = _ellipse(rng, w, h)
            occupied = np.zeros_like(m)
            for other in masks:
                x0, y0, x1, y1 = _bbox(other)
                occupied[max(y0 - 2, 0) : y1 + 3, max(x0 - 2, 0) : x1 + 3] = True
            if not (m & occupied).any():
                masks.append(m)
                break
    return masks


def _save_image(path: Path, array: np.ndarray, fmt: str) -> None:
    from PIL import Image

    with atomic_path(path, fsync=False) as tmp:
        Image.fromarray(array).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def make_fake_wsol_dataset(
    out_dir: str | os.PathLike,
    dataset_name: str = "CUB",
    num_classes: int = 3,
    images_per_class: Sequence[int] | int = (4, 2, 2),
    seed: int = 0,
    size_range: tuple[int, int] = (40, 90),
) -> tuple[Path, Path]:
    """Write a tiny dataset in the WSOL protocol's layout, for dry runs and tests.

    Each image (RGB JPEG, width and height drawn from ``size_range``) shows grey low-saturation noise and one
    filled ellipse (ILSVRC and OpenImages: one or two) in its class's saturated colour (hue ``c /
    num_classes``); ``localization.txt`` holds each ellipse's exact pixel-inclusive bounding box. The metadata
    follow the reference's files per dataset: CUB has all four files in every split; ILSVRC and OpenImages
    ``train`` only ``image_ids.txt`` and ``class_labels.txt``; OpenImages ``val``/``test`` give masks
    (``id,mask_png,ignore_png``; PNGs under ``dataset_root/OpenImages/``, the ignore mask a 2-pixel band on
    each object's border) instead of boxes and no ``image_sizes.txt``.

    Args:
        out_dir: created if needed; receives ``dataset/`` and ``metadata/``.
        dataset_name: ``CUB``, ``ILSVRC`` or ``OpenImages`` (image-id and metadata style).
        num_classes: number of classes (labels 0..num_classes-1).
        images_per_class: per split (train, val, test), or one int for all three.
        seed: the same seed gives byte-identical files.
        size_range: inclusive range of image widths and heights in pixels.

    Returns:
        ``(dataset_root, metadata_root)`` to pass to :func:`load_wsol_split` and to
        ``python -m monai_wsol.evaluate --metadata_root`` (``--mask_root dataset_root`` for OpenImages).
    """
    if dataset_name not in ("CUB", "ILSVRC", "OpenImages"):
        raise ValueError(f"dataset_name={dataset_name!r} must be one of 'CUB', 'ILSVRC', 'OpenImages'.")
    counts = ensure_tuple_rep(images_per_class, 3)
    if len(counts) != 3 or min(counts) < 1 or num_classes < 1:
        raise ValueError(
            f"images_per_class={images_per_class} needs 3 positive counts (train, val, test) and "
            f"num_classes={num_classes} must be positive."
        )
    lo, hi = int(size_range[0]), int(size_range[1])
    if not 16 <= lo <= hi:
        raise ValueError(f"size_range={size_range} must satisfy 16 <= low <= high.")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    dataset_root, metadata_root = out / "dataset", out / "metadata"
    image_dir = dataset_root / dataset_name
    max_objects = 1 if dataset_name == "CUB" else 2
    serial = 0
    for split, count in zip(_SPLITS, counts, strict=True):
        ids, labels, sizes, loc = [], [], [], []
        for c in range(num_classes):
            colour = _class_colour(c, num_classes)
            for i in range(int(count)):
                serial += 1
                image_id = _fake_image_id(dataset_name, split, c, i, serial, rng)
                w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
                grey = rng.uniform(70, 170) + rng.normal(0, 10, size=(h, w, 1))
                image = grey + rng.normal(0, 4, size=(h, w, 3))  # low chroma: far from every class colour
                masks = _draw_objects(rng, w, h, max_objects)
                for m in masks:
                    image[m] = colour + rng.normal(0, 6, size=(int(m.sum()), 3))
                _save_image(image_dir / image_id, np.clip(np.rint(image), 0, 255).astype(np.uint8), "JPEG")
                ids.append(image_id)
                labels.append(f"{image_id},{c}")
                sizes.append(f"{image_id},{w},{h}")
                if dataset_name == "OpenImages":
                    loc += _write_fake_masks(image_dir, image_id, c, masks, rng)
                else:
                    loc += [f"{image_id},{','.join(map(str, _bbox(m)))}" for m in masks]
        meta_dir = metadata_root / dataset_name / split
        files = {"image_ids.txt": ids, "class_labels.txt": labels}
        if dataset_name == "CUB" or split != "train":
            files["localization.txt"] = loc
            if dataset_name != "OpenImages":
                files["image_sizes.txt"] = sizes
        for name, lines in files.items():
            atomic_write_text(meta_dir / name, "".join(f"{line}\n" for line in lines))
    return dataset_root, metadata_root


def _write_fake_masks(
    image_dir: Path, image_id: str, c: int, masks: Sequence[np.ndarray], rng: np.random.Generator
) -> list[str]:
    """OpenImages-style instance masks and one ignore mask; returns the ``localization.txt`` lines."""
    from scipy import ndimage

    stem = image_id.rsplit(".", 1)[0]
    ignore = np.zeros_like(masks[0])
    rels = []
    for m in masks:
        rels.append(f"{stem}_m0fake{c:02d}_{_hex(rng, 8)}.png")
        _save_image(image_dir / rels[-1], (m * 255).astype(np.uint8), "PNG")
        ignore |= ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m)
    ignore_rel = f"{stem}_ignore.png"
    _save_image(image_dir / ignore_rel, (ignore * 255).astype(np.uint8), "PNG")
    # only an image's first line names its ignore mask, as in the reference's OpenImages metadata
    return [f"{image_id},{rel},{ignore_rel if k == 0 else ''}" for k, rel in enumerate(rels)]
