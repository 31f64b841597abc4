"""The embedded default generator: determinism, exact ground truth, splits, CT HU ranges, 3D geometry."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_wsol.data import load_datalist
from monai_wsol.data.sources import load_source
from monai_wsol.data.synthetic import EMBEDDED_2D, EMBEDDED_3D, SPLITS, generate, insert_lesion, main

SMALL = {"n_train": 8, "n_val": 4, "n_test": 4, "image_size": 48}


@pytest.fixture(scope="module")
def mni_data(tmp_path_factory, mni152_available):
    out = tmp_path_factory.mktemp("mni")
    return generate(
        out, source="mni152", distractor=True, distractor_rate=1.0, distractor_neg_rate=0.0, **SMALL
    )


def _arrays(datalist_path, item):
    base = datalist_path.parent
    return np.asarray(nib.load(base / item["image"]).dataobj), np.asarray(
        nib.load(base / item["mask"]).dataobj
    )


def _bbox_of(mask):
    """Independent reference: the bounding box of all foreground voxels, max corner = last index + 1."""
    idx = np.argwhere(mask)
    return [idx.min(axis=0).tolist() + (idx.max(axis=0) + 1).tolist()]


def test_fixed_seed_gives_identical_bytes(mni_data, tmp_path):
    again = generate(
        tmp_path / "again",
        source="mni152",
        distractor=True,
        distractor_rate=1.0,
        distractor_neg_rate=0.0,
        **SMALL,
    )
    files = sorted(p.relative_to(mni_data.parent) for p in mni_data.parent.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.parent) for p in again.parent.rglob("*") if p.is_file())
    for f in files:
        assert (mni_data.parent / f).read_bytes() == (again.parent / f).read_bytes(), f
    other = generate(tmp_path / "other", source="mni152", seed=1, **{**SMALL, "n_val": 0, "n_test": 0})
    assert (other.parent / "images/training_0000.nii.gz").read_bytes() != (
        mni_data.parent / "images/training_0000.nii.gz"
    ).read_bytes()


def test_ground_truth_is_exact(mni_data):
    dl = json.loads(mni_data.read_text())
    assert dl["box_mode"] == "xyxy" and dl["spatial_dims"] == 2
    for split in SPLITS:
        items = dl[split]
        assert sum(i["label"] for i in items) == len(items) // 2
        for item in items:
            image, mask = _arrays(mni_data, item)
            assert image.shape == mask.shape == (48, 48)
            if item["label"] == 1:
                assert mask.sum() >= round(0.003 * mask.size) and item["lesion_class"] in (1, 2)
                assert item["boxes"] == _bbox_of(mask)
                assert len(item["boxes"]) == 1  # one connected blob per positive
            else:
                assert not mask.any() and item["boxes"] == [] and item["lesion_class"] == 0
            if split == "training":  # distractor_rate=1, distractor_neg_rate=0
                assert item["distractor"] == item["label"]
    # the datalist is valid for the loader (mask grids equal image grids)
    assert len(load_datalist(mni_data, "validation")) == 4


def test_splits_never_share_or_touch_slices(mni_data):
    dl = json.loads(mni_data.read_text())
    slabs = {s: dl["splits"][s]["source_slabs"] for s in SPLITS}
    used = {s: {i["source_slice"] for i in dl[s]} for s in SPLITS}
    for s in SPLITS:
        allowed = {z for a, b in slabs[s] for z in range(a, b)}
        assert used[s] <= allowed
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                za = np.array(sorted(z for lo, hi in slabs[a] for z in range(lo, hi)))
                zb = np.array(sorted(z for lo, hi in slabs[b] for z in range(lo, hi)))
                assert np.abs(za[:, None] - zb[None, :]).min() >= 2  # never neighbouring slices


def test_lesion_inside_brain_and_changes_only_near_it(mni152_available):
    src = load_source("mni152")
    z = src.image.shape[2] // 2
    image, brain = src.image[..., z].copy(), src.brain[..., z]
    for cls, sign in ((1, 1), (2, -1)):
        rng = np.random.default_rng(cls)
        out, mask = insert_lesion(image, brain, src.spacing[:2], rng, "MR", cls, radius_mm=12.0)
        assert mask.any() and not (mask & ~brain).any()
        assert sign * (out[mask].mean() - image[mask].mean()) > 0.1 * image[brain].mean()
        changed = np.abs(out - image) > 1e-6
        assert not (changed & ~brain).any()
        np.testing.assert_array_equal(image, src.image[..., z])  # input untouched


def test_ct_lesions_in_hu_ranges(invesalius_ct, tmp_path):
    path = generate(tmp_path, source="ct", n_train=10, n_val=2, n_test=2, image_size=64, seed=3)
    dl = json.loads(path.read_text())
    assert dl["modality"] == "CT"
    for item in dl["training"]:
        image, mask = _arrays(path, item)
        assert image.dtype == np.int16 and image.min() <= -1000  # HU kept, air present
        if item["label"]:
            core = np.median(image[mask.astype(bool)])
            lo, hi = {1: (35, 105), 2: (-5, 40)}[item["lesion_class"]]  # 50-90 / 10-25 HU plus noise and edge
            assert lo <= core <= hi, (item, core)


def test_3d_crops_keep_source_geometry(colin27_nii, tmp_path):
    path = generate(tmp_path, source="colin27", mode="3d", n_train=4, n_val=2, n_test=2, image_size=24)
    src = load_source("colin27")
    dl = json.loads(path.read_text())
    assert dl["box_mode"] == "xyzxyz" and dl["spatial_dims"] == 3
    for item in dl["training"] + dl["test"]:
        img = nib.load(path.parent / item["image"])
        np.testing.assert_allclose(img.affine[:3, :3], src.affine[:3, :3])
        start = np.array(item["source_start"])
        np.testing.assert_allclose(img.affine[:3, 3], (src.affine @ np.r_[start, 1.0])[:3])
        mask = np.asarray(nib.load(path.parent / item["mask"]).dataobj).astype(bool)
        assert item["boxes"] == (_bbox_of(mask) if mask.any() else [])
        d = img.shape[2]
        if item["label"]:  # lesion inside the source brain mask at the crop's position
            sl = tuple(slice(s, s + n) for s, n in zip(start, img.shape, strict=True))
            assert not (mask & ~src.brain[sl]).any() and d == mask.shape[2]
    assert len(load_datalist(path, "training")) == 4


def test_cli_and_argument_errors(tmp_path, mni152_available, capsys):
    path = main(
        ["--out", str(tmp_path), "--n-train", "2", "--n-val", "0", "--n-test", "0", "--image-size", "32"]
    )
    assert str(path) in capsys.readouterr().out
    assert len(json.loads(path.read_text())["training"]) == 2
    with pytest.raises(ValueError, match="source="):
        generate(tmp_path, source="mri")
    with pytest.raises(ValueError, match="distractor_rate=1.5"):
        generate(tmp_path, distractor_rate=1.5)


def test_cli_3d_defaults_are_the_3d_embedded_default(colin27_nii, tmp_path):
    """``--mode 3d`` without options is ``EMBEDDED_3D`` (the 3D benchmark's and ``train_3d.json``'s data), the
    options given replace its values one by one."""
    counts = ["--n-train", "3", "--n-val", "1", "--n-test", "1"]
    cli = json.loads(main(["--out", str(tmp_path / "cli"), "--mode", "3d", *counts]).read_text())
    assert (cli["source"], cli["image_size"], cli["interleave_3d"]) == ("colin27", [48, 48, 19], True)
    assert cli["lesion_radius"] == list(EMBEDDED_3D["lesion_radius"])
    assert cli["slab_weights"] == list(EMBEDDED_3D["slab_weights"])
    same = {**EMBEDDED_3D, "n_train": 3, "n_val": 1, "n_test": 1}
    api = json.loads(generate(tmp_path / "api", mode="3d", **same).read_text())
    assert [i["source_start"] for i in api["training"]] == [i["source_start"] for i in cli["training"]]
    other = ["--no-interleave-3d", "--slab-weights", "1", "1", "1", "--lesion-radius", "0.1", "0.2"]
    changed = json.loads(main(["--out", str(tmp_path / "o"), "--mode", "3d", *counts, *other]).read_text())
    assert (changed["interleave_3d"], changed["slab_weights"]) == (False, [1.0, 1.0, 1.0])
    assert (changed["lesion_radius"], changed["source"]) == ([0.1, 0.2], "colin27")


def test_cli_2d_defaults_are_the_2d_embedded_default(mni152_available, tmp_path):
    """Without options the command line makes ``EMBEDDED_2D`` (the demo's and the benchmark's layout); an
    option given replaces its value."""
    counts = ["--n-train", "6", "--n-val", "3", "--n-test", "3"]
    cli = json.loads(main(["--out", str(tmp_path / "cli"), *counts]).read_text())
    assert (cli["source"], cli["image_size"], cli["blocks_2d"], cli["block_gap"]) == (
        "mni152",
        [96, 96],
        17,
        1,
    )
    assert cli["slab_weights"] == list(EMBEDDED_2D["slab_weights"])
    same = {**EMBEDDED_2D, "n_train": 6, "n_val": 3, "n_test": 3}
    api = json.loads(generate(tmp_path / "api", **same).read_text())
    for split in SPLITS:
        assert [i["source_slice"] for i in api[split]] == [i["source_slice"] for i in cli[split]]
        assert api["splits"][split]["source_slabs"] == cli["splits"][split]["source_slabs"]
    changed = json.loads(
        main(["--out", str(tmp_path / "o"), *counts, "--blocks-2d", "10", "--block-gap", "2"]).read_text()
    )
    assert (changed["blocks_2d"], changed["block_gap"], changed["slab_weights"]) == (10, 2, [4.0, 1.0, 1.0])


def test_lesion_class_labels_make_three_classes_of_the_same_images(mni_data, tmp_path):
    three = generate(
        tmp_path / "three", source="mni152", distractor=True, distractor_rate=1.0, distractor_neg_rate=0.0,
        lesion_class_labels=True, **SMALL,
    )  # fmt: skip
    plain, multi = json.loads(mni_data.read_text()), json.loads(three.read_text())
    assert multi["labels"] == {"0": "no lesion", "1": "hyperintense", "2": "hypointense"}
    seen = set()
    for split in ("training", "validation", "test"):
        for a, b in zip(plain[split], multi[split], strict=True):
            assert (
                b["label"] == (b["lesion_class"] if a["label"] else 0)
                and b["lesion_class"] == a["lesion_class"]
            )
            seen.add(b["label"])
            for key in ("image", "mask"):  # the same random draws: the same files
                assert (mni_data.parent / a[key]).read_bytes() == (three.parent / b[key]).read_bytes()
    assert seen == {0, 1, 2}


def test_a_split_too_small_for_an_anatomical_block_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"leaves none for \['test'\]"):
        generate(tmp_path, n_train=2000, n_val=200, n_test=100)
    assert not (tmp_path / "datalist.json").exists()


def test_3d_interleaved_slabs_weights_and_lesion_radius(colin27_nii, tmp_path):
    """``interleave_3d``: five slabs, train / val / train / test / train from inferior to superior, every crop
    inside its split's slabs and never next to another split's; ``slab_weights`` sets the shares, not the
    counts; ``lesion_radius`` scales the lesions."""
    kwargs = dict(source="colin27", mode="3d", n_train=12, n_val=4, n_test=4, image_size=32, seed=1)
    path = generate(tmp_path / "i", slab_weights=(3, 1, 1), interleave_3d=True, **kwargs)
    dl = json.loads(path.read_text())
    slabs = {s: dl["splits"][s]["source_slabs"] for s in SPLITS}
    assert len(slabs["training"]) == 3 and len(slabs["validation"]) == len(slabs["test"]) == 1
    order = sorted((lo, s) for s in SPLITS for lo, _ in slabs[s])
    assert [s for _, s in order] == ["training", "validation", "training", "test", "training"]
    widths = {s: sum(hi - lo for lo, hi in slabs[s]) for s in SPLITS}
    assert widths["validation"] == widths["test"] and widths["training"] >= 3 * widths["validation"] - 3
    for s in SPLITS:
        for item in dl[s]:
            z0, depth = item["source_start"][2], nib.load(path.parent / item["image"]).shape[2]
            assert any(lo <= z0 and z0 + depth <= hi for lo, hi in slabs[s]), (s, item["source_start"])
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                za = np.array([z for lo, hi in slabs[a] for z in range(lo, hi)])
                zb = np.array([z for lo, hi in slabs[b] for z in range(lo, hi)])
                assert np.abs(za[:, None] - zb[None, :]).min() >= 2

    def lesion_voxels(p: Path) -> float:
        items = [i for s in SPLITS for i in json.loads(p.read_text())[s] if i["label"]]
        return float(np.median([_arrays(p, i)[1].sum() for i in items]))

    small = generate(tmp_path / "s", lesion_radius=(0.08, 0.1), **kwargs)
    large = generate(tmp_path / "l", lesion_radius=(0.16, 0.2), **kwargs)
    assert json.loads(large.read_text())["lesion_radius"] == [0.16, 0.2]
    assert lesion_voxels(large) > 4 * lesion_voxels(small)  # twice the radius
    for bad in ({"lesion_radius": (0.3, 0.2)}, {"slab_weights": (0, 0, 0)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate(tmp_path / "bad", **{**kwargs, **bad})


def _slices(slabs):
    return np.array(sorted(z for lo, hi in slabs for z in range(lo, hi)))


def test_2d_blocks_spread_every_split_over_the_axial_range(mni152_available, tmp_path):
    """``blocks_2d`` / ``block_gap``: more, thinner blocks give validation and test several anatomical levels
    from inferior to superior (the default gives each a single level at the 2000 / 200 / 200 proportions);
    samples stay in their split's blocks, and no two splits share a slice or touch (distance > gap)."""
    default = json.loads(generate(tmp_path / "d", n_train=20, n_val=2, n_test=2, image_size=32).read_text())
    assert default["blocks_2d"] == 10 and default["block_gap"] == 2
    assert len(default["splits"]["validation"]["source_slabs"]) == 1
    assert len(default["splits"]["test"]["source_slabs"]) == 1
    path = generate(
        tmp_path / "s",
        n_train=20,
        n_val=6,
        n_test=6,
        image_size=32,
        blocks_2d=17,
        block_gap=1,
        slab_weights=(4, 1, 1),
    )
    dl = json.loads(path.read_text())
    assert dl["blocks_2d"] == 17 and dl["block_gap"] == 1
    slabs = {s: dl["splits"][s]["source_slabs"] for s in SPLITS}
    assert sum(len(v) for v in slabs.values()) == 17
    z_all = _slices([b for s in SPLITS for b in slabs[s]])
    for s in ("validation", "test"):
        assert len(slabs[s]) == 3
        z = _slices(slabs[s])
        # the levels reach the lower and the upper third of the range
        assert z.min() < z_all.min() + np.ptp(z_all) / 3 and z.max() > z_all.max() - np.ptp(z_all) / 3
    for s in SPLITS:
        assert {i["source_slice"] for i in dl[s]} <= set(_slices(slabs[s]).tolist())
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                za, zb = _slices(slabs[a]), _slices(slabs[b])
                assert np.abs(za[:, None] - zb[None, :]).min() >= 2
    with pytest.raises(ValueError, match=r"blocks_2d=60 blocks with block_gap=1"):
        generate(tmp_path / "bad", n_train=20, n_val=6, n_test=6, image_size=32, blocks_2d=60, block_gap=1)
    with pytest.raises(ValueError, match=r"block_gap=-1"):
        generate(tmp_path / "bad", n_train=20, n_val=6, n_test=6, image_size=32, block_gap=-1)
    assert not (tmp_path / "bad" / "datalist.json").exists()
