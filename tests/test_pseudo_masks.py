"""Pseudo-mask self-training: the CAM model's masks of the training images, a segmenter trained on them.

The benchmark's self-training variant runs the bundle's ``pseudo_masks`` workflow with the source method's
model at its validation-chosen threshold, then trains ``supervised`` on the result; nothing but the weak
labels and the maps may reach the segmenter's training items.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_wsol.benchmark.runner import Benchmark
from monai_wsol.engines.batch import image_stem, localization_path
from monai_wsol.engines.pseudo_masks import PSEUDO_MASK_KEYS, pseudo_mask_agreement, pseudo_mask_datalist
from tests._bundle_helpers import TINY_CNN, make_tiny_data
from tests._paths import REPO


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pseudo_masks_cli = _load_script("pseudo_masks")

VARIANTS = {"cam_pseudo": {"method": "supervised", "pseudo_masks_from": "cam"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("pseudo_data")) / "datalist.json"


@pytest.fixture(scope="module")
def self_trained(tiny, tmp_path_factory) -> tuple[Path, Benchmark]:
    bench = Benchmark(
        tmp_path_factory.mktemp("bench"), {"d": {"datalist": str(tiny)}}, ["cam", "cam_pseudo"], seeds=[0],
        image_size=32, backbone="cnn", net_kwargs=TINY_CNN, train={"epochs": 1, "batch_size": 4},
        num_examples=0, report=False, variants=VARIANTS,
    )  # fmt: skip
    bench.run()
    return bench.bench_dir, bench


def _absolute(datalist: Path, path: str) -> Path:
    return (datalist.parent / path).resolve()


def test_the_segmenter_trains_on_the_cam_models_masks_at_its_validation_tau(tiny, self_trained):
    bench_dir, _ = self_trained
    runs = bench_dir / "runs" / "d"
    cam = json.loads((runs / "cam" / "seed0" / "result.json").read_text())
    pseudo = json.loads((runs / "cam_pseudo" / "seed0" / "result.json").read_text())
    record = pseudo["hyperparameters"]["pseudo_masks"]
    assert record["from"] == "cam" and record["tau"] == cam["val_tau"]["Dice"]
    assert Path(record["model"]) == runs / "cam" / "seed0" / "checkpoints" / "model.pt"
    # the segmenter was trained on the pseudo-mask datalist, and evaluated on the original's lesions
    pseudo_list = Path(record["datalist"])
    config = json.loads((runs / "cam_pseudo" / "seed0" / "config.json").read_text())
    assert Path(config["datalist"]) == pseudo_list and config["method"] == "supervised"
    assert pseudo["test"]["lesion_images"] == cam["test"]["lesion_images"] > 0

    original = json.loads(tiny.read_text())
    written = json.loads(pseudo_list.read_text())
    assert written["pseudo_masks"]["tau"] == record["tau"]
    assert len(written["training"]) == len(original["training"])
    saw = {0: 0, 1: 0}
    for before, after in zip(original["training"], written["training"], strict=True):
        # nothing but the image, its class label and the pseudo-mask
        assert set(after) == {*PSEUDO_MASK_KEYS, "mask"} and after["label"] == before["label"]
        assert _absolute(pseudo_list, after["image"]) == _absolute(tiny, before["image"])
        assert _absolute(pseudo_list, after["mask"]) != _absolute(tiny, before["mask"])
        image = nib.load(str(_absolute(tiny, before["image"])))
        mask = nib.load(str(_absolute(pseudo_list, after["mask"])))
        np.testing.assert_allclose(mask.affine, image.affine)
        assert mask.shape == image.shape
        values = np.asarray(mask.dataobj)
        if after["label"] == 0:
            assert not values.any()  # "no lesion": nothing to segment
        else:
            # the inference's mask: its CAM at the validation-chosen tau
            stem = image_stem(before["image"])
            doc = json.loads(localization_path(pseudo_list.parent / "predictions", stem).read_text())
            cam_map = np.asarray(nib.load(doc["cam_file"]).dataobj)
            np.testing.assert_array_equal(values.astype(bool), cam_map >= record["tau"])
        saw[after["label"]] += 1
    assert saw[0] and saw[1]
    # validation and test items are the original's (the same files, masks and boxes)
    for split in ("validation", "test"):
        for before, after in zip(original[split], written[split], strict=True):
            assert _absolute(pseudo_list, after["image"]) == _absolute(tiny, before["image"])
            assert _absolute(pseudo_list, after["mask"]) == _absolute(tiny, before["mask"])
            assert after["boxes"] == before["boxes"] and after["label"] == before["label"]


def test_a_finished_self_training_run_is_read_back_and_keeps_its_record(self_trained, monkeypatch):
    bench_dir, bench = self_trained
    first = json.loads((bench_dir / "runs" / "d" / "cam_pseudo" / "seed0" / "result.json").read_text())

    def no_work(*args, **kwargs):
        raise AssertionError("a finished run made its pseudo-masks or trained again")

    monkeypatch.setattr(bench.bundle, "pseudo_masks", no_work)
    monkeypatch.setattr(bench.bundle, "train", no_work)
    again = bench.run_one("d", "cam_pseudo", 0, {}, reevaluate=True)
    assert again["hyperparameters"]["pseudo_masks"] == first["hyperparameters"]["pseudo_masks"]
    assert again["test"] == first["test"]


def _copy_with_masks(tiny: Path, out: Path, mask_of) -> Path:
    """A pseudo-mask-style datalist in ``out`` whose training masks are ``mask_of(gt_mask_array)``."""
    data = json.loads(tiny.read_text())
    out.mkdir()
    for i, item in enumerate(data["training"]):
        gt = nib.load(str(tiny.parent / item["mask"]))
        path = out / f"m{i}.nii.gz"
        nib.save(nib.Nifti1Image(mask_of(np.asarray(gt.dataobj)).astype(np.uint8), gt.affine), str(path))
        item["image"] = str((tiny.parent / item["image"]).resolve())
        item["mask"] = path.name
    (out / "datalist.json").write_text(json.dumps(data))
    return out / "datalist.json"


def test_pseudo_mask_agreement_measures_the_masks_against_the_ground_truth(tiny, tmp_path, self_trained):
    exact = pseudo_mask_agreement(_copy_with_masks(tiny, tmp_path / "exact", lambda m: m > 0), tiny)
    lesions = sum(1 for item in json.loads(tiny.read_text())["training"] if item["label"] > 0)
    assert exact == {"lesion_images": lesions, "dice": 1.0, "empty": 0.0, "area_ratio": 1.0}
    none = pseudo_mask_agreement(_copy_with_masks(tiny, tmp_path / "none", np.zeros_like), tiny)
    assert none["dice"] == 0.0 and none["empty"] == 1.0 and none["area_ratio"] == 0.0
    # everything: Dice 2|G| / (|image| + |G|), area ratio |image| / |G|
    full = pseudo_mask_agreement(_copy_with_masks(tiny, tmp_path / "full", np.ones_like), tiny)
    assert 0 < full["dice"] < 1 and full["area_ratio"] > 1 and full["empty"] == 0.0
    # the benchmark's table reads every self-training run of a benchmark folder
    bench_dir, _ = self_trained
    table = pseudo_masks_cli.main(["--bench_dir", str(bench_dir), "--setting", "d"])
    assert "| cam_pseudo | 0 | cam |" in table


def test_pseudo_mask_datalist_names_what_is_missing(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"have no complete prediction in .*empty.*Run the inference"):
        pseudo_mask_datalist(tiny, tmp_path / "empty", tmp_path / "out")
    data = json.loads(tiny.read_text())
    data["training"][1].pop("label")
    broken = tiny.parent / "no_label.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"training\[1\] .* has no integer 'label'"):
        pseudo_mask_datalist(broken, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="no items in split 'nope'"):
        pseudo_mask_datalist(tiny, tmp_path / "empty", tmp_path / "out", split="nope")
    assert not (tmp_path / "out" / "datalist.json").exists()


@pytest.mark.parametrize(
    "methods, variants",
    [
        (["cam_pseudo"], VARIANTS),  # the source is not listed
        (["cam_pseudo", "cam"], VARIANTS),  # listed after
        # the variant is no segmenter
        (["cam", "cam_pseudo"], {"cam_pseudo": {"method": "cam", "pseudo_masks_from": "cam"}}),
    ],
)
def test_a_self_training_variant_needs_its_source_first_and_a_segmenter(tmp_path, methods, variants):
    with pytest.raises(ValueError, match="pseudo"):
        Benchmark(tmp_path, {"d": {}}, methods, variants=variants, report=False)
