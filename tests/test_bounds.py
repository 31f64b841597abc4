"""The floor (``prior``) and the ceiling (``supervised``) of every localization figure, as registry methods.

``supervised`` learns a tiny segmentation task through MethodTrainer and the one evaluation; ``prior``'s map
is the exact mean of the training masks (fitted by the trainer, without the random flips) or a centred
Gaussian, and never depends on the image; both build in the bundle and in the benchmark, and train through the
bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import RandFlipd

from monai_wsol.data import make_preprocessing
from monai_wsol.data.synthetic import gt_boxes
from monai_wsol.engines import LocalizationReport, MethodTrainer
from monai_wsol.engines.trainer import training_items
from monai_wsol.methods import BOUNDS, available_methods, build_method
from monai_wsol.networks.nets import MaskPrior, SegmentationLocalizer

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
SIZE = 32
#: a small UNet (2 levels) so that the tests take seconds
TINY_UNET = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
#: the (default, plain CNN) backbone arguments the bundle/benchmark tests give every method (ignored by the
#: bounds)
NET_KWARGS = {"channels": [4, 8], "stages": [1, 1]}


def _square_data(root: Path, n: int = 16, seed: int = 0, no_mask_negatives: int = 2) -> list[dict]:
    """``n`` images of 32 px (half with a bright square, the lesion); NIfTI files; returns datalist items.

    The first ``no_mask_negatives`` negatives have no mask entry (they get an all-zero one).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        image = rng.normal(0.2, 0.05, (SIZE, SIZE)).astype(np.float32)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        label = i % 2
        if label:
            side = int(rng.integers(6, 11))
            x0, y0 = rng.integers(1, SIZE - side - 1, size=2)
            mask[x0 : x0 + side, y0 : y0 + side] = 1
            image[mask > 0] += 0.8
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / f"img{i}.nii.gz")
        item = {"image": str(root / f"img{i}.nii.gz"), "label": label, "boxes": gt_boxes(mask)}
        if label or i // 2 >= no_mask_negatives:
            nib.save(nib.Nifti1Image(mask, np.eye(4)), root / f"mask{i}.nii.gz")
            item["mask"] = str(root / f"mask{i}.nii.gz")
        items.append(item)
    return items


def _gt_masks(items: list[dict]) -> torch.Tensor:
    """(N, 1, X, Y) GT masks of the items, zeros where an item has none."""
    masks = [
        np.asarray(nib.load(it["mask"]).dataobj) if "mask" in it else np.zeros((SIZE, SIZE)) for it in items
    ]
    return torch.as_tensor(np.stack(masks)[:, None] > 0, dtype=torch.float32)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions: one thread is fastest, and far faster than two threads on a loaded CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def square_items(tmp_path_factory) -> list[dict]:
    return _square_data(tmp_path_factory.mktemp("squares"))


# -- supervised (ceiling) ------------------------------------------------------------------------------------
def test_training_preprocessing_loads_the_mask_and_flips_it_with_the_image(square_items):
    spec = build_method("supervised", 2, 1, 2, segmenter_kwargs=TINY_UNET)
    pre = make_preprocessing(
        "train", 2, spatial_size=[SIZE, SIZE], flip_prob=1.0, method_transforms=spec.train_transforms
    )
    assert any(
        isinstance(t, RandFlipd) and set(t.keys) == {"image", "mask"} for t in pre.flatten().transforms
    )
    pos = next(it for it in square_items if it["label"] == 1)
    out = pre(dict(pos))
    assert set(out) == {"image", "label", "mask"}
    gt = torch.as_tensor(np.asarray(nib.load(pos["mask"]).dataobj), dtype=torch.float32)
    assert torch.equal(out["mask"][0].as_tensor(), torch.flip(gt, dims=[0]))  # flipped, still binary
    # the bright square is where the flipped mask is
    image = out["image"][0].as_tensor()
    assert image[out["mask"][0] > 0].mean() > image[out["mask"][0] == 0].mean() + 0.5
    # a negative without a mask gets zeros on the image's grid
    neg = next(it for it in square_items if "mask" not in it)
    assert torch.count_nonzero(pre(dict(neg))["mask"]) == 0
    # WSOL methods train as before: no mask
    plain = make_preprocessing("train", 2, spatial_size=[SIZE, SIZE])
    assert set(plain(dict(pos))) == {"image", "label"}


def test_affine_augmentation_moves_the_mask_with_the_image(square_items):
    from monai.transforms import RandAffined

    spec = build_method("supervised", 2, 1, 2, segmenter_kwargs=TINY_UNET)
    pre = make_preprocessing(
        "train",
        2,
        spatial_size=[SIZE, SIZE],
        flip_prob=0.0,
        augmentation="affine",
        method_transforms=spec.train_transforms,
    )
    affine = [t for t in pre.flatten().transforms if isinstance(t, RandAffined)]
    assert len(affine) == 1 and set(affine[0].keys) == {"image", "mask"}
    pos = next(it for it in square_items if it["label"] == 1)
    gt = torch.as_tensor(np.asarray(nib.load(pos["mask"]).dataobj), dtype=torch.float32)
    moved = 0
    for seed in range(8):
        pre.set_random_state(seed)
        out = pre(dict(pos))
        mask, image = out["mask"][0].as_tensor(), out["image"][0].as_tensor()
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}  # nearest: still binary
        # the bright square is still where the (moved) mask is
        assert image[mask > 0].mean() > image[mask == 0].mean() + 0.3
        moved += int(not torch.equal(mask, gt))
    assert 0 < moved < 8  # probability 0.5: some draws move it, some do not
    assert not any(
        isinstance(t, RandAffined) for t in make_preprocessing("train", 2, augmentation="none").transforms
    )
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_preprocessing("train", 2, augmentation="elastic")
    with pytest.raises(ValueError, match="'train' stage only"):
        make_preprocessing("validate", 2, augmentation="affine")


def test_a_lesion_image_without_mask_is_an_error_for_mask_training(tmp_path):
    items = _square_data(tmp_path, n=2, no_mask_negatives=0)
    pos = {k: v for k, v in items[1].items() if k != "mask"}
    pre = make_preprocessing("train", 2, with_mask=True)
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps the transform's error
        pre(pos)
    assert isinstance(err.value.__cause__, ValueError) and "has no 'mask'" in str(err.value.__cause__)


def test_supervised_learns_squares_to_dice_above_0_8(square_items):
    torch.manual_seed(0)
    spec = build_method("supervised", 2, 1, 2, segmenter_kwargs=TINY_UNET)
    assert spec.target_key == "mask" and isinstance(spec.net, SegmentationLocalizer)
    pre = make_preprocessing("train", 2, spatial_size=[SIZE, SIZE], method_transforms=spec.train_transforms)
    loader = DataLoader(CacheDataset(square_items, transform=pre, progress=False), batch_size=4, shuffle=True)
    seen = []
    trainer = MethodTrainer(
        device=torch.device("cpu"),
        max_epochs=12,
        train_data_loader=loader,
        optimizer=torch.optim.Adam(spec.net.parameters(), lr=1e-2),
        method=spec,
        amp=False,
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append((e.state.output[0]["pred"], e.state.output[0]["label"])),
    )
    trainer.run()
    # after the loss: class logits (2,) and the class label (not the mask) reach metrics and post-processing
    assert all(p.shape == (2,) and torch.as_tensor(lab).numel() == 1 for p, lab in seen)
    # the one evaluation, on the training images (deterministic preprocessing)
    val = make_preprocessing("validate", 2, spatial_size=[SIZE, SIZE])
    batch = [val(dict(it)) for it in square_items if "mask" in it]
    images = torch.stack([b["image"].as_tensor() for b in batch])
    logits, maps = spec.extractor(spec.net, images, 1)
    assert maps.shape == (len(batch), 1, SIZE, SIZE) and 0.0 <= maps.min() and maps.max() <= 1.0
    # the map is the lesion probability itself (not min-max normalised)
    spec.net.eval()
    with torch.no_grad():
        prob = torch.sigmoid(spec.net.segment(images))
    assert torch.allclose(maps, prob, atol=1e-6)
    report = LocalizationReport(box_step=0.01)
    probs = torch.softmax(logits, dim=1)
    for b, p, m in zip(batch, probs, maps, strict=True):
        report.add({"prob": p, "label": b["label"], "cam": m, "mask": b["mask"].as_tensor()})
    scalars = report.compute().scalars
    assert scalars["Dice"] > 0.8, scalars
    assert scalars["AUC"] > 0.9, scalars  # class logits from the map: the score ranks lesion images first


def test_supervised_class_logits_come_from_the_map():
    net = build_method("supervised", 2, 1, 2, segmenter_kwargs=TINY_UNET).net.eval()
    x = torch.rand(3, 1, 20, 28)  # not a multiple of the UNet's stride: padded and cropped back
    logits, maps = net.forward_cam(x, class_idx=torch.tensor([1, 0, 1]))
    assert logits.shape == (3, 2) and maps.shape == (3, 1, 20, 28)
    prob = torch.sigmoid(net.segment(x))
    assert torch.allclose(maps[1], 1 - prob[1]) and torch.allclose(maps[0], prob[0])
    k = max(1, round(0.001 * 20 * 28))
    s = prob.flatten(1).topk(k, dim=1).values.mean(1)
    assert torch.allclose(torch.softmax(logits, 1)[:, 1], s, atol=1e-5)
    assert torch.allclose(net(x), logits)
    # one training step outside the trainer: the loss reads the masks; given class logits (the bundle's
    # val_loss metric) it is their cross-entropy
    spec = build_method("supervised", 2, 1, 2, segmenter_kwargs=TINY_UNET)
    spec.net.train()
    masks, labels = (torch.rand(2, 1, 16, 16) > 0.7).float(), torch.tensor([1, 0])
    loss = spec.training_loss(torch.rand(2, 1, 16, 16), masks, labels)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isclose(
        spec.loss_fn(logits, torch.tensor([1, 0, 1])), F.cross_entropy(logits, torch.tensor([1, 0, 1]))
    )


# -- prior (floor) -------------------------------------------------------------------------------------------
def test_prior_mean_mask_is_exactly_the_mean_of_the_given_masks():
    torch.manual_seed(0)
    spec = build_method("prior", 2, 1, 2)
    assert isinstance(spec.net, MaskPrior) and spec.fit is not None and spec.target_key == "label"
    masks = (torch.rand(7, 1, 12, 10) > 0.6).float()
    spec.fit([{"mask": m} for m in masks])
    expected = masks.double().mean(0, keepdim=True).float()
    assert torch.equal(spec.net.prior, expected)
    # independent of the input image: two different batches give the same maps and logits
    a, b = torch.rand(2, 1, 12, 10), 10 * torch.randn(2, 1, 12, 10)
    (la, ma), (lb, mb) = spec.extractor(spec.net, a, 1), spec.extractor(spec.net, b, 1)
    assert torch.equal(ma, mb) and torch.equal(la, lb)
    assert torch.equal(la[0], la[1])  # constant logits
    raw = spec.net.forward_cam(a, upsample=False)[1]
    assert torch.equal(raw[0], expected[0])
    # another input size: the stored map resized to it
    assert spec.extractor(spec.net, torch.rand(1, 1, 24, 20), 1)[1].shape == (1, 1, 24, 20)


def test_prior_is_in_the_checkpoint_and_loads_into_a_fresh_net(tmp_path):
    spec = build_method("prior", 2, 1, 2)
    with pytest.raises(RuntimeError, match="not fitted"):
        spec.net.forward_cam(torch.rand(1, 1, 8, 8))
    spec.fit([{"mask": (torch.rand(1, 8, 8) > 0.5).float()} for _ in range(3)])
    torch.save(spec.net.state_dict(), tmp_path / "model.pt")
    fresh = build_method("prior", 2, 1, 2).net
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # strict
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(fresh.forward_cam(x)[1], spec.net.forward_cam(x)[1])


@pytest.mark.parametrize("size", [(9, 9), (8, 12), (7, 7, 7)])
def test_prior_center_kind_peaks_at_the_centre(size):
    spec = build_method("prior", len(size), 1, 2, kind="center")
    assert spec.fit is None and spec.train_transforms == []
    x = torch.rand(2, 1, *size)
    _, maps = spec.extractor(spec.net, x, 1)
    m = maps[0, 0]
    assert torch.equal(maps[0], maps[1]) and m.max() == 1.0
    peak = torch.nonzero(m == m.max())
    centre = torch.tensor([(n - 1) / 2 for n in size])
    assert ((peak.float() - centre).abs() <= 0.5).all()  # the centre voxel (odd) or the central ones (even)
    assert m.flatten()[0] < 0.2  # a corner is far down


def test_trainer_fits_the_prior_on_the_unflipped_training_masks(square_items):
    spec = build_method("prior", 2, 1, 2)
    pre = make_preprocessing(
        "train", 2, spatial_size=[SIZE, SIZE], flip_prob=1.0, method_transforms=spec.train_transforms
    )
    loader = DataLoader(Dataset(square_items, transform=pre), batch_size=8, shuffle=True)
    assert len(list(training_items(loader))) == len(square_items)
    MethodTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        optimizer=torch.optim.Adam(spec.net.parameters(), lr=1e-3),
        method=spec,
        amp=False,
    ).run()
    expected = _gt_masks(square_items).double().mean(0, keepdim=True).float()
    assert torch.equal(spec.net.prior, expected)
    assert not torch.equal(expected, torch.flip(expected, dims=[2]))  # the flip would have shown


# -- registry, bundle, benchmark -----------------------------------------------------------------------------
def test_bounds_are_registry_methods_and_check_their_options():
    assert set(BOUNDS) <= set(available_methods())
    with pytest.raises(ValueError, match="num_classes must be 2"):
        build_method("supervised", 2, 1, 3)
    with pytest.raises(ValueError, match="unknown segmenter"):
        build_method("supervised", 2, 1, 2, segmenter="vnet")
    with pytest.raises(ValueError, match="kind"):
        build_method("prior", 2, 1, 2, kind="median")
    net = build_method(
        "supervised", 3, 1, 2, segmenter="basicunet", segmenter_kwargs={"features": [4] * 6}
    ).net
    assert net.forward_cam(torch.rand(1, 1, 18, 16, 16), 1)[1].shape == (1, 1, 18, 16, 16)


@pytest.mark.parametrize("method", BOUNDS)
def test_bounds_build_through_the_bundle_config(method):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    # the classifier's network arguments of a shared configuration do not apply to the bounds
    parser.update({"method": method, "network_kwargs": NET_KWARGS})
    spec = parser.get_parsed_content("wsol_method")
    assert spec.name == method and parser.get_parsed_content("network_def") is spec.net
    pre = parser.get_parsed_content("train#preprocessing")
    flips = [t for t in pre.flatten().transforms if isinstance(t, RandFlipd)]
    assert flips and set(flips[0].keys) == {"image", "mask"}  # the mask is loaded and flipped with the image


def test_benchmark_accepts_the_bounds(tmp_path):
    from monai_wsol.benchmark.runner import Benchmark

    bench = Benchmark(
        tmp_path, {"default": {}}, methods=["cam", "prior", "supervised"], seeds=[0], report=False
    )
    assert bench.methods == ["cam", "prior", "supervised"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, options",
    [("prior", {}), ("supervised", {"segmenter_kwargs": TINY_UNET})],
    ids=["prior", "supervised"],
)
def test_bundle_trains_and_evaluates_the_bounds(method, options, tmp_path):
    from monai_wsol.benchmark.bundle_runs import BundleRunner

    data = tmp_path / "data"
    items = _square_data(data, n=12, no_mask_negatives=0)
    datalist = {"training": items[:8], "validation": items[8:10], "test": items[10:]}
    (data / "datalist.json").write_text(json.dumps(datalist))
    overrides = {
        "dataset_dir": str(data),
        "datalist": str(data / "datalist.json"),
        "spatial_size": [SIZE, SIZE],
        "epochs": 1,
        "batch_size": 4,
        "amp": False,
        "num_workers": 0,
        "method": method,
        "method_options": options,
        "network_kwargs": NET_KWARGS,
    }
    runner = BundleRunner()
    model = runner.train(tmp_path / "run", overrides)
    net = build_method(method, 2, 1, 2, **options).net
    net.load_state_dict(torch.load(model, weights_only=True))  # strict: what the bundle exports loads
    if method == "prior":
        expected = _gt_masks(items[:8]).double().mean(0, keepdim=True).float()
        assert torch.equal(net.prior, expected)
    curves = runner.evaluate(model, "test", tmp_path / "eval", overrides, box_step=0.01)
    assert {"MaxBoxAccV2", "Dice", "PxAP", "accuracy", "AUC"} <= set(curves.scalars)
