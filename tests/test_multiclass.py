"""Datalists with several lesion classes (class 0: no lesion, 1..K-1: a lesion of that class): every lesion
image is localized with its own class's map, the AUC scores "a lesion", and the benchmark runs such a
Decathlon-style datalist as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _bundle_helpers import TINY_CNN, make_tiny_data
from scipy.stats import mannwhitneyu
from test_perfect_map import MaskAsCAM, _gt, _lesion_masks_2d, _run_evaluate

from monai_wsol.benchmark.runner import Benchmark
from monai_wsol.engines.evaluation import lesion_classes, mask_boxes, split_curves
from monai_wsol.writers.nifti import write_nifti


def roc_auc_score(is_positive, scores) -> float:
    """The ROC AUC as the Mann-Whitney U of the positives' scores over the negatives' (an independent
    reference)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[is_positive], scores[~is_positive]
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def test_split_curves_localizes_every_lesion_class_and_scores_any_lesion():
    rng = np.random.default_rng(0)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    probs = torch.softmax(torch.as_tensor(rng.normal(size=(7, 3)), dtype=torch.float32), dim=1)
    lesion = labels > 0
    masks = np.zeros((int(lesion.sum()), 1, 24, 24), np.float32)
    for k in range(len(masks)):
        masks[k, 0, 3 + 2 * k : 10 + 2 * k, 5:12] = 1
    cams = torch.as_tensor(masks)
    boxes = [mask_boxes(m[0]) for m in masks]
    curves = split_curves(probs, labels, cams, cams, boxes, lesion_class=[1, 2], box_step=0.01)
    assert curves.scalars["lesion_images"] == 5.0  # both classes' images, not class 1's alone
    assert curves.scalars["MaxBoxAccV2"] == 100.0 and curves.scalars["Dice"] == 1.0
    expected_auc = roc_auc_score(lesion.numpy(), (probs[:, 1] + probs[:, 2]).numpy())
    assert curves.scalars["AUC"] == pytest.approx(expected_auc, abs=1e-6)
    assert curves.scalars["accuracy"] == pytest.approx(
        100 * float((probs.argmax(1) == labels).float().mean())
    )
    # class 1 alone: its two images only (the maps given must then be theirs)
    one = split_curves(probs, labels, cams[[0, 3]], cams[[0, 3]], [boxes[0], boxes[3]], 1, box_step=0.01)
    assert one.scalars["lesion_images"] == 2.0
    assert one.scalars["AUC"] == pytest.approx(roc_auc_score(labels == 1, probs[:, 1]), abs=1e-6)
    with pytest.raises(ValueError, match="5 images of class"):
        split_curves(probs, labels, cams[:2], cams[:2], boxes[:2], [1, 2], box_step=0.01)
    with pytest.raises(ValueError, match="lesion class 3 but 3 class probabilities"):
        split_curves(probs, labels, cams, cams, boxes, [1, 3], box_step=0.01)


@pytest.mark.parametrize("bad", [0, [], [1, 1], [True], "1", [1.0]])
def test_lesion_classes_rejects_what_is_no_lesion_class(bad):
    with pytest.raises(ValueError, match="lesion_class"):
        lesion_classes(bad)


def test_lesion_classes_accepts_ints_numpy_ints_and_lists():
    assert lesion_classes(1) == lesion_classes(np.int64(1)) == [1]
    assert lesion_classes((1, np.int32(2))) == [1, 2]


class ThreeClassMaskAsCAM(MaskAsCAM):
    """:class:`MaskAsCAM` with three classes (no lesion, lesion classes 1 and 2), every class's map the
    input."""

    def forward_cam(self, x, class_idx=None, upsample=True):
        peak = x.flatten(1).amax(1)
        return torch.stack([-peak, peak, peak], dim=1) * self.scale, x


def test_bundle_evaluate_scores_a_perfect_map_100_with_two_lesion_classes(tmp_path):
    root = tmp_path / "data"
    items = []
    for i, mask in enumerate(_lesion_masks_2d((40, 40)) + [np.zeros((40, 40), dtype=bool)]):
        path = write_nifti(mask.astype(np.uint8), np.eye(4), root / "masks" / f"case_{i}.nii.gz", fsync=False)
        rel = str(path.relative_to(root))
        label = 0 if not mask.any() else 1 + i % 2  # lesion classes 1, 2, 1, 2, 1
        items.append({"image": rel, "mask": rel, "label": label, "boxes": _gt(mask).coords.tolist()})
    (root / "datalist.json").write_text(json.dumps({"validation": items}))
    torch.save(ThreeClassMaskAsCAM().state_dict(), root / "model.pt")
    row = _run_evaluate(
        root,
        tmp_path / "out",
        network_def=ThreeClassMaskAsCAM(),
        num_classes=3,
        class_names=["none", "a", "b"],
        cam_class="label",
    )
    assert row["lesion_images"] == 5.0 and row["MaxBoxAccV2"] == 100.0
    assert row["Dice"] == 1.0 and row["PxAP"] == 100.0 and row["AUC"] == 1.0


@pytest.fixture(scope="module")
def three_class(tmp_path_factory) -> Path:
    """The tiny embedded default relabelled as a three-class Decathlon datalist: lesion images alternate
    between classes 1 and 2 (a wiring test: the classes need not differ in appearance)."""
    root = make_tiny_data(tmp_path_factory.mktemp("three"))
    data = json.loads((root / "datalist.json").read_text())
    for split in ("training", "validation", "test"):
        lesion_images = [item for item in data[split] if item["label"]]
        for k, item in enumerate(lesion_images):
            item["label"] = 1 + k % 2
    data["labels"] = {"0": "no lesion", "1": "lesion a", "2": "lesion b"}
    (root / "datalist.json").write_text(json.dumps(data))
    assert {i["label"] for i in data["training"]} == {0, 1, 2}
    return root / "datalist.json"


def test_benchmark_runs_a_three_class_datalist(three_class, tmp_path):
    bench = Benchmark(
        tmp_path, {"d": {"datalist": str(three_class)}}, ["cam"], seeds=[0], image_size=32, backbone="cnn",
        net_kwargs=TINY_CNN, train={"epochs": 1, "batch_size": 4}, num_examples=0, report=False,
    )  # fmt: skip
    overrides = bench.bundle_overrides("d", "cam", 0, {})
    assert overrides["num_classes"] == 3 and overrides["cam_class"] == "label"
    assert overrides["class_names"] == ["no lesion", "lesion a", "lesion b"]
    result = bench.run_one("d", "cam", 0, {})
    data = json.loads(three_class.read_text())
    for split, figures in (("validation", result["val"]), ("test", result["test"])):
        assert figures["lesion_images"] == sum(i["label"] > 0 for i in data[split])
        assert 0 <= figures["MaxBoxAccV2"] <= 100 and np.isfinite(figures["Dice"])
    config = json.loads((tmp_path / "runs" / "d" / "cam" / "seed0" / "config.json").read_text())
    assert config["num_classes"] == 3
    # the bounds segment "lesion": trained and evaluated on the copy whose lesion classes are all 1, they are
    # scored on the same lesion images as the methods
    bounds = Benchmark(
        tmp_path, {"d": {"datalist": str(three_class)}}, ["prior"], seeds=[0], image_size=32,
        train={"batch_size": 4}, num_examples=0, report=False,
    )  # fmt: skip
    prior = bounds.bundle_overrides("d", "prior", 0, {})
    assert prior["cam_class"] == 1 and "num_classes" not in prior
    assert prior["dataset_dir"] == str(three_class.parent) and prior["datalist"] != str(three_class)
    copy = json.loads(Path(prior["datalist"]).read_text())
    for split in ("training", "validation", "test"):
        assert [min(i["label"], 1) for i in data[split]] == [i["label"] for i in copy[split]]
    floor = bounds.run_one("d", "prior", 0, {})
    assert floor["test"]["lesion_images"] == result["test"]["lesion_images"]
    # a lesion / no-lesion datalist keeps the binary keys
    binary = Benchmark(tmp_path, {"b": {"datalist": str(three_class.parent / "two.json")}}, ["cam"])
    (three_class.parent / "two.json").write_text(
        json.dumps({"training": [{"label": 0}, {"label": 1}], "labels": {"0": "no", "1": "yes"}})
    )
    assert binary.bundle_overrides("b", "cam", 0, {})["cam_class"] == 1
    assert "num_classes" not in binary.bundle_overrides("b", "cam", 0, {})
