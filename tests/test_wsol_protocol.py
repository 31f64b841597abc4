"""WSOL-protocol data: fake dataset round trip, loader errors, reference-equivalent transforms, and a dry run
of
``python -m monai_wsol.evaluate`` on score maps computed from the transformed images."""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_wsol.data.wsol_protocol import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResizeAntialias,
    WSOLDataError,
    load_wsol_split,
    make_fake_wsol_dataset,
    make_wsol_dataloader,
    make_wsol_transforms,
)
from monai_wsol.evaluate import main as evaluate_main

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]
# one uint8 grey level after normalisation: the tolerance for "same as PIL + torchvision" (PIL rounds to
# uint8)
ONE_LEVEL = 1.01 / 255 / min(IMAGENET_STD)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small images: one thread is faster, and on a busy 2-core machine two spinning OpenMP threads made each
    224 x 224 resize ~70x slower (measured 171 ms vs 2.4 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """One small fake dataset per layout: {name: (dataset_root, metadata_root)}."""
    base = tmp_path_factory.mktemp("wsol")
    return {
        name: make_fake_wsol_dataset(
            base / name, dataset_name=name, num_classes=3, images_per_class=(2, 2, 3)
        )
        for name in ("CUB", "ILSVRC", "OpenImages")
    }


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """max - min over the channel axis (last): high on the coloured objects, low on the grey background."""
    return rgb.max(-1).astype(np.float64) - rgb.min(-1)


# ---------------------------------------------------------------------------------------------------------
# the fake dataset
# ---------------------------------------------------------------------------------------------------------


def test_fake_cub_round_trip(fakes):
    root, meta = fakes["CUB"]
    for split, count in (("train", 2), ("val", 2), ("test", 3)):
        folder = meta / "CUB" / split
        for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
            text = (folder / name).read_text()
            assert " " not in text and text.endswith("\n"), f"{name}: the reference's format has no spaces"
        box_lines = (folder / "localization.txt").read_text().splitlines()
        assert all(re.fullmatch(r"[^,]+(,\d+){4}", line) for line in box_lines)
        items = load_wsol_split(root, meta, "CUB", split)
        assert len(items) == 3 * count
        assert sorted(it["label"] for it in items) == sorted([0, 1, 2] * count)
        for it in items:
            assert os.path.isabs(it["image"]) and it["image"] == str(root / "CUB" / it["image_id"])
            folder_class = int(it["image_id"].split(".", 1)[0]) - 1  # CUB class folders "001.Name"
            assert it["label"] == folder_class
            image = np.asarray(Image.open(it["image"]).convert("RGB"))
            assert it["image_size"] == (image.shape[1], image.shape[0])  # (W, H)
            assert it["boxes"].dtype == np.float32 and it["boxes"].shape == (1, 4)
            # the drawn object, recovered from the decoded JPEG, has the box of the metadata (JPEG blurs
            # edges)
            ys, xs = np.nonzero(_saturation(image) > 100)
            found = [xs.min(), ys.min(), xs.max(), ys.max()]
            np.testing.assert_allclose(it["boxes"][0], found, atol=1)
            # and it is the class's own colour: hue c / num_classes
            x0, y0, x1, y1 = it["boxes"][0].astype(int)
            r, g, b = image[(y0 + y1) // 2, (x0 + x1) // 2] / 255.0
            hue = colorsys.rgb_to_hsv(r, g, b)[0]
            assert min(abs(hue - it["label"] / 3), 1 - abs(hue - it["label"] / 3)) < 0.05


def test_fake_dataset_is_deterministic(tmp_path):
    def digest(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    kwargs = {"dataset_name": "ILSVRC", "num_classes": 2, "images_per_class": 1}
    make_fake_wsol_dataset(tmp_path / "a", seed=3, **kwargs)
    make_fake_wsol_dataset(tmp_path / "b", seed=3, **kwargs)
    make_fake_wsol_dataset(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (digest(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 2 * 3 + 2 + 4 + 4  # images + train's 2 files + val's and test's 4 each
    assert a != c
    assert not [p for p in (tmp_path / "a").rglob("*") if ".tmp" in p.name]  # atomic writes left nothing


def test_ilsvrc_and_openimages_layouts(fakes):
    root, meta = fakes["ILSVRC"]
    train = load_wsol_split(root, meta, "ILSVRC", "train-weaksup")  # the paper's name of "train"
    assert all(it["image_id"].startswith("train/n") for it in train)
    assert all("boxes" not in it and "image_size" not in it for it in train)  # ids and labels only
    val = load_wsol_split(root, meta, "ILSVRC", "train-fullsup")
    assert [it["image_id"] for it in val] == (meta / "ILSVRC" / "val" / "image_ids.txt").read_text().split()
    test = load_wsol_split(root, meta, "ILSVRC", "test")
    assert all(re.fullmatch(r"val/ILSVRC2012_val_\d{8}\.JPEG", it["image_id"]) for it in test)
    lines = (meta / "ILSVRC" / "test" / "localization.txt").read_text().splitlines()
    assert sum(len(it["boxes"]) for it in test) == len(lines)
    assert max(len(it["boxes"]) for it in val + test) == 2  # some images hold two objects

    root, meta = fakes["OpenImages"]
    assert not (meta / "OpenImages" / "test" / "image_sizes.txt").exists()  # as the reference's
    for it in load_wsol_split(root, meta, "OpenImages", "test"):
        assert "boxes" not in it and it["ignore_path"].endswith("_ignore.png")
        image = np.asarray(Image.open(it["image"]).convert("RGB"))
        masks = [np.asarray(Image.open(root / "OpenImages" / p)) > 127 for p in it["mask_paths"]]
        assert all(m.shape == image.shape[:2] for m in masks)
        # the instance masks are exactly where the coloured objects are (up to JPEG blur on their border)
        union = np.any(masks, axis=0)
        assert (_saturation(image)[union] > 100).mean() > 0.9
        assert (_saturation(image)[~union] > 100).mean() < 0.01


# ---------------------------------------------------------------------------------------------------------
# errors name the file and line
# ---------------------------------------------------------------------------------------------------------


def _copy_metadata(meta: Path, dst: Path) -> Path:
    for src in (meta / "CUB" / "test").iterdir():
        (dst / "CUB" / "test").mkdir(parents=True, exist_ok=True)
        (dst / "CUB" / "test" / src.name).write_bytes(src.read_bytes())
    return dst / "CUB" / "test"


def test_missing_image_names_file_and_line(fakes, tmp_path):
    root, meta = fakes["CUB"]
    folder = _copy_metadata(meta, tmp_path / "meta")
    ids = (folder / "image_ids.txt").read_text().splitlines()
    ids[3] = ids[3].replace(".jpg", "_gone.jpg")
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        text = (folder / name).read_text().replace(ids[3].replace("_gone", ""), ids[3])
        (folder / name).write_text(text)
    with pytest.raises(WSOLDataError) as e:
        load_wsol_split(root, tmp_path / "meta", "CUB", "test")
    assert str(root / "CUB" / ids[3]) in str(e.value) and "image_ids.txt:4" in str(e.value)
    assert len(load_wsol_split(root, tmp_path / "meta", "CUB", "test", check_files=False)) == len(ids)


@pytest.mark.parametrize(
    "name, line, expected",
    [
        ("class_labels.txt", "{id},one", r"class_labels.txt:2: label must be integers"),
        ("class_labels.txt", "{id};1", r"class_labels.txt:2: expected 'id,label'"),
        ("class_labels.txt", "{id},-1", r"class_labels.txt:2: class label must be >= 0"),
        ("image_sizes.txt", "{id},40", r"image_sizes.txt:2: expected 'id,width,height'"),
        ("localization.txt", "{id},1,2,3", r"localization.txt:2: expected 'id,x0,y0,x1,y1'"),
        ("localization.txt", "{id},1,2,3,x", r"localization.txt:2: box coordinates must be integers"),
        ("localization.txt", "{id},0,0,9999,5", r"localization.txt:2: box .* is outside"),
    ],
)
def test_malformed_line_names_file_and_line(fakes, tmp_path, name, line, expected):
    root, meta = fakes["CUB"]
    folder = _copy_metadata(meta, tmp_path / "meta")
    lines = (folder / name).read_text().splitlines()
    lines[1] = line.format(id=lines[1].split(",")[0])
    (folder / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(WSOLDataError, match=expected) as e:
        load_wsol_split(root, tmp_path / "meta", "CUB", "test")
    assert str(folder / name) in str(e.value)


def test_missing_split_or_label(fakes, tmp_path):
    root, meta = fakes["CUB"]
    with pytest.raises(WSOLDataError, match=r"CUB/train-full: metadata folder not found"):
        load_wsol_split(root, meta, "CUB", "train-full")
    folder = _copy_metadata(meta, tmp_path / "meta")
    labels = (folder / "class_labels.txt").read_text().splitlines()
    (folder / "class_labels.txt").write_text("\n".join(labels[1:]) + "\n")
    first = labels[0].split(",")[0]
    with pytest.raises(WSOLDataError, match=rf"no class label for '{re.escape(first)}' \(listed at .*:1\)"):
        load_wsol_split(root, tmp_path / "meta", "CUB", "test")


# ---------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------


def _torchvision_like(path: str, size: int) -> torch.Tensor:
    """What the reference's eval transform gives: PIL bilinear resize, ToTensor, Normalize."""
    pil = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


def _asymmetric_image(path: Path, w: int = 300, h: int = 200) -> str:
    """Red rises along x, green along y: any transpose or flip shows."""
    xx, yy = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    Image.fromarray(np.stack([xx, yy, np.full_like(xx, 60)], -1).astype(np.uint8)).save(path)
    return str(path)


def test_eval_transform_matches_reference(fakes, tmp_path):
    root, meta = fakes["CUB"]
    items = load_wsol_split(root, meta, "CUB", "test")[:2]
    items.append({"image": _asymmetric_image(tmp_path / "grad.png"), "label": 0, "image_id": "grad.png"})
    xform = make_wsol_transforms(train=False)
    for it in items:  # upsampled fake JPEGs and a downsampled 300 x 200 image
        out = xform(dict(it))
        image = out["image"]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
        assert tuple(image.shape) == (3, 224, 224)
        ref = _torchvision_like(it["image"], 224)
        assert (image - ref).abs().max().item() <= ONE_LEVEL
        assert out["label"] == it["label"] and out["image_id"] == it["image_id"]
    # normalisation: a uniform image of value v gives (v / 255 - mean) / std on every pixel
    Image.fromarray(np.full((30, 50, 3), (200, 100, 0), np.uint8)).save(tmp_path / "flat.png")
    flat = xform({"image": str(tmp_path / "flat.png")})["image"]
    expected = (torch.tensor([200.0, 100.0, 0.0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    torch.testing.assert_close(flat.mean((1, 2)), expected, atol=1e-5, rtol=0)


def test_train_transform_resizes_crops_and_flips_along_x(tmp_path):
    path = _asymmetric_image(tmp_path / "grad.png", w=60, h=40)
    # resize_size = crop_size: no crop, so each output is the resized image or its mirror
    plain = make_wsol_transforms(train=False, crop_size=32)({"image": path})["image"]
    train = make_wsol_transforms(train=True, resize_size=32, crop_size=32)
    flipped = 0
    for seed in range(12):
        train.set_random_state(seed)
        out = train({"image": path})["image"]
        is_plain = torch.allclose(out, plain, atol=1e-5)
        is_flip = torch.allclose(out, plain.flip(-1), atol=1e-5)  # last axis = x (W)
        assert is_plain != is_flip
        flipped += is_flip
        red, green = out[0], out[1]
        assert (green[1:] >= green[:-1] - 1e-4).all()  # y is never flipped: green still rises down the rows
        assert (red[:, 1:] >= red[:, :-1] - 1e-4).all() == is_plain  # red rises along x unless flipped
    assert 0 < flipped < 12
    # the real sizes: resize to 256 then a random 224 window of it
    big = make_wsol_transforms(train=False, crop_size=256)({"image": path})["image"]
    train = make_wsol_transforms(train=True)
    train.set_random_state(0)
    out = train({"image": path})["image"]
    assert tuple(out.shape) == (3, 224, 224)
    # locate the window by its top-left 4 x 4 patch, then compare the whole window
    found = []
    for candidate in (out, out.flip(-1)):
        for y in range(33):
            for x in range(33):
                if torch.allclose(candidate[:, :4, :4], big[:, y : y + 4, x : x + 4], atol=1e-5):
                    found.append(torch.allclose(candidate, big[:, y : y + 224, x : x + 224], atol=1e-5))
    assert any(found)


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="spatial_size"):
        ResizeAntialias(0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ResizeAntialias(8)(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="crop_size=300 must be <= resize_size=256"):
        make_wsol_transforms(train=True, crop_size=300)


def test_dataloader_batches(fakes):
    root, meta = fakes["ILSVRC"]
    items = load_wsol_split(root, meta, "ILSVRC", "test")
    batches = list(make_wsol_dataloader(items, train=False, batch_size=4, crop_size=64))
    assert [len(b["image_id"]) for b in batches] == [4, 4, 1]
    first = batches[0]
    assert tuple(first["image"].shape) == (4, 3, 64, 64)
    assert first["label"].tolist() == [it["label"] for it in items[:4]]  # eval keeps the metadata order
    for boxes, it in zip(first["boxes"], items[:4], strict=True):
        np.testing.assert_array_equal(boxes, it["boxes"])
    train_items = load_wsol_split(root, meta, "ILSVRC", "train")
    train = make_wsol_dataloader(train_items, train=True, batch_size=6, resize_size=40, crop_size=32)
    batch = next(iter(train))
    assert tuple(batch["image"].shape) == (6, 3, 32, 32) and "boxes" not in batch
    assert sorted(batch["image_id"]) == sorted(it["image_id"] for it in train_items)  # shuffled, all there


# ---------------------------------------------------------------------------------------------------------
# dry run of the evaluation: score maps from the transformed images, fed to python -m monai_wsol.evaluate
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saturation_maps(fakes):
    """{dataset: {image_id: map}}: the saturation of each eval-transformed test image, (H, W) in [0, 1], a
    perfect CAM of the coloured objects."""
    xform = make_wsol_transforms(train=False)
    maps = {}
    for name, (root, meta) in fakes.items():
        maps[name] = {}
        for it in load_wsol_split(root, meta, name, "test"):
            rgb = xform(it)["image"] * STD + MEAN
            smap = (rgb.max(0).values - rgb.min(0).values).numpy().astype(np.float64)
            maps[name][it["image_id"]] = (smap - smap.min()) / (smap.max() - smap.min())
    return maps


def _write_score_maps(maps: dict, out: Path, orient) -> Path:
    """The reference's score-map layout: ``<out>/<image_id>.npy``."""
    for image_id, smap in maps.items():
        path = out / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.ascontiguousarray(orient(smap), dtype=np.float32))
    return out


def _evaluate(root, meta, name, maps, output) -> dict:
    """``python -m monai_wsol.evaluate`` in-process (its ``main``; tests/test_evaluate_cli.py runs the module
    itself in a subprocess): a fresh interpreter would spend most of this file's time importing torch."""
    argv = [
        "--scoremap_root", str(maps), "--metadata_root", str(meta), "--mask_root", str(root),
        "--dataset_name", name, "--split", "test", "--cam_curve_interval", "0.001", "--output", str(output),
    ]  # fmt: skip
    assert evaluate_main(argv) == 0
    return json.loads(Path(output).read_text())


def test_evaluate_dry_run_cub(fakes, saturation_maps, tmp_path):
    root, meta = fakes["CUB"]
    maps = _write_score_maps(saturation_maps["CUB"], tmp_path / "maps", lambda m: m)
    result = _evaluate(root, meta, "CUB", maps, tmp_path / "r.json")
    assert result["num_images"] == 9
    assert result["MaxBoxAcc"] == 100.0 and result["BoxAcc@70"] == 100.0  # the map marks the object exactly
    # the same maps transposed (x and y swapped) localise worse: the boxes and the maps agree on orientation
    maps_t = _write_score_maps(saturation_maps["CUB"], tmp_path / "maps_t", lambda m: m.T)
    assert _evaluate(root, meta, "CUB", maps_t, tmp_path / "t.json")["MaxBoxAcc"] < 100.0


def test_evaluate_dry_run_multi_box_and_masks(fakes, saturation_maps, tmp_path):
    root, meta = fakes["ILSVRC"]
    maps = _write_score_maps(saturation_maps["ILSVRC"], tmp_path / "i", lambda m: m)
    assert _evaluate(root, meta, "ILSVRC", maps, tmp_path / "i.json")["MaxBoxAccV2"] == 100.0
    root, meta = fakes["OpenImages"]
    maps = _write_score_maps(saturation_maps["OpenImages"], tmp_path / "o", lambda m: m)
    good = _evaluate(root, meta, "OpenImages", maps, tmp_path / "o.json")["PxAP"]
    maps = _write_score_maps(saturation_maps["OpenImages"], tmp_path / "of", lambda m: m[:, ::-1])
    mirrored = _evaluate(root, meta, "OpenImages", maps, tmp_path / "of.json")["PxAP"]
    assert good > 99.0 and mirrored < good - 20
