"""The slices of a volume data set (``monai_wsol.data.slices``): pixels, world positions, slice labels and
boxes as the volumes give them; the benchmark's 2D-on-slices variant wired to them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_wsol.benchmark.runner import Benchmark
from monai_wsol.data.slices import slice_affine, slice_datalist
from monai_wsol.io_utils import atomic_write_nifti

SHAPE = (10, 12, 6)
# oblique, anisotropic and translated: a slice placed with the wrong column or offset lands elsewhere
_ROT = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag([0.9, 1.1, 2.5])
AFFINE[:3, 3] = [-40.0, 12.5, 7.0]


@pytest.fixture()
def volumes(tmp_path) -> Path:
    """Two volumes: a positive one (lesion in slices 2..3 along the last axis, two regions in slice 3) and a
    negative one; the intensities encode the voxel index so a slice's pixels name their origin."""
    root = tmp_path / "vol"
    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:5, 3:7, 2:4] = 1
    mask[7:9, 9:11, 3] = 1
    entries = []
    for name, m, label in (("pos", mask, 1), ("neg", np.zeros_like(mask), 0)):
        atomic_write_nifti(image + label, AFFINE, root / "images" / f"{name}.nii.gz", fsync=False)
        atomic_write_nifti(m, AFFINE, root / "masks" / f"{name}.nii.gz", fsync=False)
        entries.append({"image": f"images/{name}.nii.gz", "label": label, "mask": f"masks/{name}.nii.gz"})
    datalist = {"labels": {"0": "no", "1": "yes"}, "training": entries, "validation": entries[:1]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


@pytest.mark.parametrize("axis", [2, 0])
def test_slices_hold_the_volumes_pixels_positions_labels_and_boxes(volumes, tmp_path, axis):
    path = slice_datalist(volumes / "datalist.json", tmp_path / "s", slice_axis=axis, splits=("training",))
    data = json.loads(path.read_text())
    assert "validation" not in data and data["spatial_dims"] == 2 and data["slice_axis"] == axis
    items = data["training"]
    assert len(items) == 2 * SHAPE[axis]
    volume = nib.load(volumes / "images" / "pos.nii.gz")
    mask = np.asarray(nib.load(volumes / "masks" / "pos.nii.gz").dataobj)
    in_plane = [a for a in range(3) if a != axis]
    assert data["image_size"] == [SHAPE[a] for a in in_plane]
    for item in items[: SHAPE[axis]]:  # the positive volume's
        k = item["slice_index"]
        img = nib.load(path.parent / item["image"])
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.take(np.asarray(volume.dataobj), k, axis))
        # every pixel's world position is its voxel's in the volume
        ij = np.stack(np.meshgrid(*(np.arange(SHAPE[a]) for a in in_plane), indexing="ij"), -1).reshape(-1, 2)
        ijk = np.zeros((len(ij), 3))
        ijk[:, in_plane] = ij
        ijk[:, axis] = k
        world_slice = ij @ img.affine[:3, :2].T + img.affine[:3, 3]
        np.testing.assert_allclose(world_slice, ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3], atol=1e-4)
        mask_slice = np.take(mask, k, axis)
        assert item["label"] == int(mask_slice.any())
        np.testing.assert_array_equal(np.asarray(nib.load(path.parent / item["mask"]).dataobj), mask_slice)
        expected = [
            [int(v) for v in np.r_[np.argwhere(region).min(0), np.argwhere(region).max(0) + 1]]
            for region in _regions(mask_slice)
        ]
        assert sorted(item["boxes"]) == sorted(expected)
    assert sum(i["label"] for i in items) == (2 if axis == 2 else 5)  # lesion slices of the positive volume
    assert all(i["label"] == 0 and i["boxes"] == [] for i in items[SHAPE[axis] :])
    # written once: a second call returns the same datalist without rewriting
    mtime = path.stat().st_mtime_ns
    assert slice_datalist(volumes / "datalist.json", tmp_path / "s", slice_axis=axis) == path
    assert path.stat().st_mtime_ns == mtime


def test_volume_labels_give_every_slice_its_volumes_label(volumes, tmp_path):
    path = slice_datalist(volumes / "datalist.json", tmp_path / "v", splits=("training",), labels="volume")
    data = json.loads(path.read_text())
    assert data["slice_labels"] == "volume"
    labels = [i["label"] for i in data["training"]]
    assert (
        labels == [1] * SHAPE[2] + [0] * SHAPE[2]
    )  # the lesion volume's slices all 1, even lesion-free ones
    assert [i["boxes"] for i in data["training"]][:2] == [[], []]  # boxes still the slice's own regions
    with pytest.raises(
        ValueError, match="holds slices along axis 2 with volume labels, not axis 2 with slice"
    ):
        slice_datalist(volumes / "datalist.json", tmp_path / "v", splits=("training",))
    with pytest.raises(ValueError, match="labels must be 'slice' or 'volume'"):
        slice_datalist(volumes / "datalist.json", tmp_path / "w", labels="both")


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage

    labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
    return [labelled == i for i in range(1, n + 1)]


def test_slice_affine_rejects_a_bad_affine():
    with pytest.raises(ValueError, match="4 x 4"):
        slice_affine(np.eye(3), 2, 0)
    np.testing.assert_allclose(slice_affine(AFFINE, 2, 3)[:3, 3], AFFINE[:3, 3] + 3 * AFFINE[:3, 2])


def test_bad_inputs_are_named(volumes, tmp_path):
    data = json.loads((volumes / "datalist.json").read_text())
    data["training"][1] = {"image": "images/neg.nii.gz", "label": 0}
    bad = volumes / "no_mask.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"no_mask\.json training\[1\] needs 'image', 'label' and 'mask'"):
        slice_datalist(bad, tmp_path / "a")
    assert not (tmp_path / "a" / "datalist.json").exists()
    with pytest.raises(ValueError, match="has no split 'test'"):
        slice_datalist(volumes / "datalist.json", tmp_path / "b")
    flat = volumes / "flat.nii.gz"
    atomic_write_nifti(np.zeros((4, 4), np.float32), np.eye(4), flat, fsync=False)
    data["training"] = [{"image": "flat.nii.gz", "label": 0, "mask": "flat.nii.gz"}]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"flat\.nii\.gz is not a volume"):
        slice_datalist(bad, tmp_path / "c", splits=("training",))
    with pytest.raises(ValueError, match="slice_axis"):
        slice_datalist(volumes / "datalist.json", tmp_path / "d", slice_axis=3)


def test_benchmark_slice_variant_trains_2d_on_slices_and_evaluates_the_volumes(volumes, tmp_path):
    bench = Benchmark(
        tmp_path / "bench",
        {"v": {"datalist": str(volumes / "datalist.json")}},
        ["cam", "cam2d"],
        spatial_dims=3,
        image_size=32,
        data_root=tmp_path / "data",
        train={"epochs": 5, "batch_size": 2},
        variants={
            "cam2d": {"method": "cam", "slice_axis": 2, "train": {"batch_size": 16}},
            "cam2d_vol": {"method": "cam", "slice_axis": 2, "slice_labels": "volume"},
        },
    )
    volume_run = bench.bundle_overrides("v", "cam", 0, {})
    assert volume_run["spatial_dims"] == 3 and volume_run["datalist"] == str(volumes / "datalist.json")
    assert bench.evaluation_overrides("v", "cam", volume_run) == volume_run
    train = bench.bundle_overrides("v", "cam2d", 0, {})
    slices = tmp_path / "data" / "v_slices_axis2" / "datalist.json"
    assert train["datalist"] == str(slices) and slices.exists()
    assert train["spatial_dims"] == 2 and train["spatial_size"] == list(SHAPE[:2])
    assert train["batch_size"] == 16 and train["epochs"] == 5 and train["method"] == "cam"
    evaluation = bench.evaluation_overrides("v", "cam2d", train)
    assert evaluation["datalist"] == str(volumes / "datalist.json")
    assert evaluation["spatial_dims"] == 2 and evaluation["image_spatial_dims"] == 3
    assert evaluation["slice_axis"] == 2
    assert bench.choose("v", "cam2d") == ({}, None)  # the variant's network keys are no method options
    assert bench.choose("v", "cam2d_vol") == ({}, None)
    volume_labels = Path(bench.bundle_overrides("v", "cam2d_vol", 0, {})["datalist"])
    assert volume_labels != slices and json.loads(volume_labels.read_text())["slice_labels"] == "volume"
    for bad in ({"slice_axis": 3}, {"slice_axis": True}):
        with pytest.raises(ValueError, match="slice_axis"):
            Benchmark(tmp_path, {"v": {}}, ["x"], spatial_dims=3, variants={"x": {"method": "cam", **bad}})
    with pytest.raises(ValueError, match="needs spatial_dims=3"):
        Benchmark(tmp_path, {"v": {}}, ["x"], variants={"x": {"method": "cam", "slice_axis": 2}})
