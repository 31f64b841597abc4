"""The VGG16 / CUB config (configs/vgg16_cub.json), the patent publication's experiment in the WSOL protocol's
layout, runs as written on a tiny fake CUB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from monai_wsol.data.wsol_protocol import load_wsol_split, make_fake_wsol_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake_cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsol")
    return make_fake_wsol_dataset(root, "CUB", num_classes=3, images_per_class=(3, 1, 2), seed=0)


def _parser(dataset_root, metadata_root, out_dir) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(REPO / "configs" / "vgg16_cub.json")
    parser.update(
        {
            "data_root": str(dataset_root),
            "metadata_root": str(metadata_root),
            "output_dir": str(out_dir),
            "pretrained": False,  # no download in tests
            "crop_size": 32,  # VGG16 at 224^2 is too slow for a CPU test; the code path is the same
            "resize_size": 36,
            "num_workers": 0,
            "train#epochs": 1,
            "train#batch_size": 4,
            "train#lr": 1e-3,
        }
    )
    return parser


def test_config_values_follow_the_published_experiment():
    cfg = json.loads((REPO / "configs" / "vgg16_cub.json").read_text())
    assert cfg["backbone"] == "vgg16" and cfg["methods"] == ["cam", "sfs1", "sfs2"]
    assert cfg["experiment"]["cam_curve_interval"] == 0.001
    assert cfg["experiment"]["iou_threshold_list"] == [50, 70]
    assert (cfg["crop_size"], cfg["resize_size"], cfg["pretrained"]) == (224, 256, True)


def test_dry_run_on_fake_cub(fake_cub, tmp_path):
    dataset_root, metadata_root = fake_cub
    out = tmp_path / "runs"
    parser = _parser(dataset_root, metadata_root, out)
    parser.get_parsed_content("initialize")  # logging to the run folder
    results = parser.get_parsed_content("run")[0]
    assert list(results) == ["cam", "sfs1", "sfs2"]
    test_ids = [item["image_id"] for item in load_wsol_split(dataset_root, metadata_root, "CUB", "test")]
    for method, result in results.items():
        for d in (50, 70):
            assert 0.0 <= result["metrics"][f"BoxAcc@{d}"] <= 100.0
        # one score map per test image, in the reference's <image_id>.npy layout, at the crop size
        maps = sorted((out / method / "scoremaps").rglob("*.npy"))
        assert len(maps) == len(test_ids)
        for image_id in test_ids:
            m = np.load(out / method / "scoremaps" / f"{image_id}.npy")
            assert m.shape == (32, 32) and m.min() >= 0 and m.max() <= 1
        assert not (out / method / "checkpoint.pt").exists()
    # the blocks are really in the trained networks
    exp = parser.get_parsed_content("experiment")
    assert (
        sum("plugin" in n for n, _ in exp.build("sfs2", 3).net.named_modules())
        > sum("plugin" in n for n, _ in exp.build("sfs1", 3).net.named_modules())
        > 0
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["sfs2"]["disclosure"] == [64.62, 19.24]  # the patent publication's two-block figures

    # finished methods are skipped on a second run (their result files are not rewritten)
    stamp = (out / "cam" / "result.json").stat().st_mtime_ns
    _parser(dataset_root, metadata_root, out).get_parsed_content("run")
    assert (out / "cam" / "result.json").stat().st_mtime_ns == stamp
