"""Training on patches of volumes larger than the network's input: bags of random patches, each bag given the
logits of its most positive patch, validated in sliding windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _bundle_helpers import CONFIGS, REPO, TINY_CNN, run_workflow
from monai.bundle import ConfigParser

from monai_wsol.data import make_preprocessing
from monai_wsol.engines.trainer import MethodBatch, MethodInferer, bag_logits
from monai_wsol.extractors import SlidingWindowExtractor
from monai_wsol.io_utils import atomic_write_nifti
from monai_wsol.methods import build_method


def _volume(tmp_path, name: str, shape, label: int) -> dict:
    path = tmp_path / f"{name}.nii.gz"
    data = np.random.default_rng(0).normal(100.0, 10.0, shape).astype(np.float32)
    atomic_write_nifti(data, np.diag([1.5, 1.0, 2.0, 1.0]), path)
    return {"image": str(path), "label": label}


def test_train_patches_are_bags_of_the_images_own_grid(tmp_path):
    prep = make_preprocessing("train", 3, spatial_size=[4, 4, 4], patch_size=[8, 8, 6], patch_samples=3)
    prep.set_random_state(0)
    bag = prep(_volume(tmp_path, "big", (20, 18, 10), 1))
    assert isinstance(bag, list) and len(bag) == 3
    for patch in bag:  # not resized to spatial_size: patches at the image's resolution
        assert tuple(patch["image"].shape) == (1, 8, 8, 6) and int(patch["label"]) == 1
        assert patch["image"].pixdim.tolist() == [1.5, 1.0, 2.0]
    assert len({p["image"].sum().item() for p in bag}) == 3  # three places
    small = prep(_volume(tmp_path, "small", (6, 5, 4), 0))  # padded up to a patch
    assert [tuple(p["image"].shape) for p in small] == [(1, 8, 8, 6)] * 3
    whole = make_preprocessing("validate", 3, spatial_size=[4, 4, 4], patch_size=[8, 8, 6])
    item = {
        **_volume(tmp_path, "v", (20, 18, 10), 1),
        "mask": _volume(tmp_path, "m", (20, 18, 10), 0)["image"],
    }
    assert tuple(whole(item)["image"].shape) == (1, 20, 18, 10)  # validated on its own grid
    with pytest.raises(ValueError, match="patch_size"):
        make_preprocessing("train", 3, patch_size=[8, 8])
    with pytest.raises(ValueError, match="patch_samples 0"):
        make_preprocessing("train", 3, patch_size=[8, 8, 6], patch_samples=0)
    # without a patch_size the bundle's patch_samples is not used: whole images, resized
    plain = make_preprocessing("train", 3, spatial_size=[4, 4, 4], patch_samples=4)
    assert tuple(plain(_volume(tmp_path, "w", (20, 18, 10), 1))["image"].shape) == (1, 4, 4, 4)


def test_a_bag_gets_the_logits_of_its_most_positive_patch():
    logits = torch.tensor(
        [[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 0.0], [3.0, 0.0], [0.5, 0.0]], requires_grad=True
    )
    pooled = bag_logits(logits, 3)
    assert torch.equal(pooled, logits[[1, 5]])
    pooled.sum().backward()  # the gradient reaches the chosen patches only
    assert logits.grad[:, 0].tolist() == [0, 1, 0, 0, 0, 1]
    ties = torch.zeros(4, 3)
    assert torch.equal(bag_logits(ties, 2), ties[[0, 2]])  # the first on ties
    with pytest.raises(ValueError, match="bags of 4"):
        bag_logits(torch.zeros(6, 2), 4)


def test_the_trainer_keeps_one_label_per_bag_and_refuses_what_cannot_pool():
    cam = build_method("cam", 3, 1, 2, backbone="cnn", net_kwargs=TINY_CNN)
    batch = MethodBatch(cam, bag_size=2)
    images = torch.rand(4, 1, 8, 8, 6)
    _, targets, _, kwargs = batch({"image": images, "label": torch.tensor([1, 1, 0, 0])})
    assert targets.tolist() == [1, 0] and kwargs["labels"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="different labels"):
        batch({"image": images, "label": torch.tensor([1, 0, 0, 0])})
    with pytest.raises(ValueError, match="not bags of 2"):
        batch({"image": images[:3], "label": torch.tensor([1, 1, 0])})
    logits = MethodInferer(cam, bag_size=2)(images, cam.net.eval(), labels=targets)
    assert logits.shape == (2, 2)
    for name in ("cutmix", "supervised", "prior"):
        method = build_method(name, 3, 1, 2, backbone="cnn", net_kwargs=TINY_CNN)
        with pytest.raises(ValueError, match=f"{name}.*cannot train on patches"):
            MethodBatch(method, bag_size=2)
    acol = build_method("acol", 2, 1, 2, backbone="cnn", net_kwargs=TINY_CNN)
    with pytest.raises(ValueError, match="acol.*returns tuple"):
        MethodInferer(acol, bag_size=2)(torch.rand(4, 1, 32, 32), acol.net, labels=torch.tensor([1, 0]))


def test_the_bundle_trains_a_3d_model_on_patches_and_validates_in_windows(tmp_path, colin27_nii):
    from monai_wsol.data.synthetic import generate

    data = generate(
        tmp_path / "data", source="colin27", mode="3d", n_train=6, n_val=4, n_test=2, image_size=24
    )
    depth = json.loads(data.read_text())["image_size"][2]
    patch = [16, 16, min(8, depth)]
    overrides = {
        "dataset_dir": str(data.parent),
        "output_dir": str(tmp_path / "runs"),
        "run_name": "patches",
        "network_kwargs": TINY_CNN,
        "patch_size": patch,
        "patch_samples": 2,
        "epochs": 1,
        "batch_size": 2,
        "amp": False,
        "num_workers": 0,
    }
    config = [str(CONFIGS / "train.json"), str(REPO / "configs" / "train_3d.json")]
    parser = ConfigParser()
    parser.read_config(config)
    parser.update(overrides)
    item = parser.get_parsed_content("training_data")["training"][0]
    bag = parser.get_parsed_content("train#preprocessing")(dict(item))
    assert [tuple(p["image"].shape) for p in bag] == [(1, *patch)] * 2
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.prepare_batch.bag_size == trainer.inferer.bag_size == 2
    extractor = parser.get_parsed_content("validate#evaluator").inferer.extractor
    assert isinstance(extractor, SlidingWindowExtractor) and list(extractor.roi_size) == patch
    assert parser.get_parsed_content("val_batch_size") == 1
    run_workflow("training", config, **overrides)
    run = tmp_path / "runs" / "patches"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,val_auc") and len(rows) == 2
    assert json.loads((run / "config.json").read_text())["patch_size"] == patch
    state = torch.load(run / "checkpoints" / "model.pt", weights_only=True)
    infer = ConfigParser()
    infer.read_config(str(CONFIGS / "inference.json"))
    infer.update({"spatial_dims": 3, "network_kwargs": TINY_CNN, "sw_roi_size": patch})
    infer.get_parsed_content("network_def").load_state_dict(state)
