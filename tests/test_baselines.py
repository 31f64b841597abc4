"""Tests of the WSOL baselines: ADL, Hide-and-Seek, CutMix, ACoL, losses, and the method registry.

The Grad-CAM(++) maps are tested with the other CAM extractors in ``tests/test_extractors.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import MetaTensor

from monai_wsol.extractors import ForwardCAM, GradCAMExtractor, LayerCAMExtractor
from monai_wsol.losses import acol_loss, classification_loss
from monai_wsol.methods import BOUNDS, CutMixBatch, available_methods, build_method
from monai_wsol.networks.blocks.adl import ADL
from monai_wsol.networks.blocks.registry import get_plugin
from monai_wsol.networks.nets import CAMDenseNet121
from monai_wsol.networks.nets.acol import ACoLClassifier
from monai_wsol.transforms.hide_and_seek import RandHideAndSeek, RandHideAndSeekd

# A DenseNet121 topology with 1 layer per dense block and narrow growth: same code path, milliseconds per
# step.
TINY = {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1, 1), "bn_size": 2, "low_stride": True}
SHAPES = {2: (4, 1, 32, 32), 3: (2, 1, 16, 16, 16)}


def tiny_densenet(spatial_dims: int, num_classes: int = 3, **kwargs) -> CAMDenseNet121:
    return CAMDenseNet121(spatial_dims, 1, num_classes, **TINY, **kwargs)


# ----------------------------------------------------------------------------------------------------- ADL
def _attention_peak_input(spatial_dims: int, batch: int = 2) -> torch.Tensor:
    """(B, 3, 6, ...) features whose channel mean peaks on a known block, with a per-sample scale."""
    torch.manual_seed(0)
    x = torch.rand(batch, 3, *([6] * spatial_dims)) * 0.1
    x[(slice(None), slice(None), *([slice(1, 3)] * spatial_dims))] += 1.0
    scales = torch.tensor([10.0 ** (-i) for i in range(batch)]).reshape(batch, *([1] * (spatial_dims + 1)))
    return x * scales  # sample i is 10**-i times sample 0 (but not a copy: noise differs per sample)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_adl_identity_in_eval(spatial_dims):
    adl = ADL(spatial_dims, 3, drop_rate=1.0, gamma=0.5).eval()
    x = _attention_peak_input(spatial_dims)
    assert torch.equal(adl(x), x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_adl_drop_branch_uses_per_sample_max(spatial_dims):
    adl = ADL(spatial_dims, 3, drop_rate=1.0, gamma=0.9).train()
    x = _attention_peak_input(spatial_dims, batch=2)
    out = adl(x)
    att = x.mean(1, keepdim=True)
    for b in range(2):
        expected_mask = att[b] < 0.9 * att[b].max()  # per sample: sample 1 is 10x smaller than sample 0
        assert expected_mask.sum() < expected_mask.numel()  # the peak is dropped in *each* sample
        torch.testing.assert_close(out[b], x[b] * expected_mask)
        # the dropped region is the planted peak block
        peak = torch.zeros_like(expected_mask)
        peak[(slice(None), *([slice(1, 3)] * spatial_dims))] = True
        assert torch.equal(~expected_mask, peak)
    # a batch-wide max would have kept all of sample 1: check the test can tell the difference
    assert bool((att[1] < 0.9 * att.max()).all())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_adl_importance_branch(spatial_dims):
    adl = ADL(spatial_dims, 3, drop_rate=0.0).train()
    x = _attention_peak_input(spatial_dims)
    torch.testing.assert_close(adl(x), x * torch.sigmoid(x.mean(1, keepdim=True)))


def test_adl_one_draw_per_step_for_whole_batch():
    adl = ADL(2, 3, drop_rate=0.75, gamma=0.9).train()
    x = _attention_peak_input(2, batch=3)
    att = x.mean(1, keepdim=True)
    drop = x * (att < 0.9 * att.flatten(1).amax(1).reshape(-1, 1, 1, 1))
    importance = x * torch.sigmoid(att)
    torch.manual_seed(123)
    n_drop = 0
    for _ in range(200):
        out = adl(x)
        is_drop, is_imp = torch.allclose(out, drop), torch.allclose(out, importance)
        assert is_drop != is_imp  # every sample of the batch took the same branch
        n_drop += int(is_drop)
    assert 0.6 < n_drop / 200 < 0.9  # seeded: ~drop_rate of the steps use the drop mask


def test_adl_registry_and_bad_args():
    assert get_plugin("adl") is ADL
    adl = get_plugin("adl")(3, 16, drop_rate=0.5, gamma=0.8)
    assert (adl.drop_rate, adl.gamma, adl.spatial_dims) == (0.5, 0.8, 3)
    with pytest.raises(ValueError, match="drop_rate"):
        ADL(2, 4, drop_rate=1.5)
    with pytest.raises(ValueError, match="gamma"):
        ADL(2, 4, gamma=-0.1)
    with pytest.raises(ValueError, match="spatial dims"):
        ADL(2, 4)(torch.rand(1, 4, 3, 3, 3))


# ------------------------------------------------------------------------------------------- Hide-and-Seek
@pytest.mark.parametrize("shape,grid", [((2, 10, 13), 4), ((1, 7, 9, 5), 3), ((1, 9, 8), (4, 3))])
def test_has_hides_exactly_grid_cells(shape, grid):
    img = torch.rand(*shape) + 1.0  # never 0, so 0 marks a hidden voxel
    t = RandHideAndSeek(grid_size=grid, hide_prob=0.5, fill_value=None).set_random_state(3)
    out = t(img)
    hidden = out == 0
    assert torch.equal(hidden[0], t.hidden_mask()) and bool(
        (hidden == hidden[:1]).all()
    )  # all channels alike
    assert torch.equal(out[~hidden], img[~hidden])  # the rest is untouched
    # each grid cell is hidden entirely or not at all, and both happen
    sizes = (grid,) * (len(shape) - 1) if isinstance(grid, int) else grid
    states = []
    for corner in np.ndindex(*[-(-s // g) for s, g in zip(shape[1:], sizes, strict=True)]):
        cell = hidden[(0, *[slice(c * g, (c + 1) * g) for c, g in zip(corner, sizes, strict=True)])]
        assert bool(cell.all()) or not bool(cell.any())
        states.append(bool(cell.all()))
    assert any(states) and not all(states)


def test_has_determinism_and_fill_values():
    img = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32) + 1
    a = RandHideAndSeek(4, fill_value=(-1.0, -2.0)).set_random_state(7)
    b = RandHideAndSeek(4, fill_value=(-1.0, -2.0)).set_random_state(7)
    c = RandHideAndSeek(4, fill_value=(-1.0, -2.0)).set_random_state(8)
    out_a, out_b, out_c = a(img), b(img), c(img)
    assert isinstance(out_a, np.ndarray) and out_a.dtype == img.dtype
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.array_equal(out_a, out_c)
    mask = a.hidden_mask().numpy()
    assert (out_a[0][mask] == -1.0).all() and (
        out_a[1][mask] == -2.0
    ).all()  # per-channel fill (dataset mean)
    # consecutive calls draw new cells
    assert not np.array_equal(a(img), out_a)


def test_has_probabilities_and_errors():
    img = torch.rand(1, 8, 8) + 1
    assert torch.equal(RandHideAndSeek(2, hide_prob=0.0)(img), img)
    assert bool((RandHideAndSeek(2, hide_prob=1.0, fill_value=5.0)(img) == 5.0).all())
    assert torch.equal(RandHideAndSeek(2, hide_prob=1.0, prob=0.0)(img), img)
    with pytest.raises(ValueError, match="channels"):
        RandHideAndSeek(2, fill_value=(0.0, 1.0, 2.0))(img)
    with pytest.raises(ValueError, match="grid_size"):
        RandHideAndSeek(0)
    with pytest.raises(ValueError, match="spatial dims"):
        RandHideAndSeek((2, 2, 2))(img)


def test_has_dict_same_cells_all_keys_and_metadata():
    affine = torch.diag(torch.tensor([0.9, 0.8, 1.5, 1.0]))
    img = MetaTensor(torch.rand(1, 12, 12, 6) + 1, affine=affine)
    data = {"image": img, "other": img.clone(), "label": 1}
    t = RandHideAndSeekd(keys=("image", "other"), grid_size=(4, 4, 2), hide_prob=0.5).set_random_state(0)
    out = t(data)
    assert torch.equal(out["image"] == 0, out["other"] == 0) and bool((out["image"] == 0).any())
    assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, affine)
    assert out["label"] == 1
    again = RandHideAndSeekd(keys=("image", "other"), grid_size=(4, 4, 2)).set_random_state(0)(data)
    assert torch.equal(again["image"], out["image"])


# ---------------------------------------------------------------------------------------------------- CutMix
@pytest.mark.parametrize("spatial", [(12, 10), (6, 8, 5)])
def test_cutmix_labels_follow_pasted_area(spatial):
    b, k = 6, 3
    images = torch.arange(b, dtype=torch.float32).reshape(b, 1, *([1] * len(spatial))).expand(b, 2, *spatial)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mixer = CutMixBatch(num_classes=k, alpha=1.0, seed=0)
    mixed_any = False
    for _ in range(5):
        mixed, soft = mixer(images.clone(), labels)
        assert mixed.shape == images.shape and soft.shape == (b, k)
        torch.testing.assert_close(soft.sum(1), torch.ones(b))
        src = mixed[:, 0].round().long()  # each voxel's value names its source sample
        for i in range(b):
            values = src[i].unique()
            assert len(values) <= 2 and i in values.tolist() or len(values) == 1  # itself and one partner
            pasted = src[i] != i
            if pasted.any():
                mixed_any = True
                # the pasted region is one axis-aligned box
                idx = pasted.nonzero()
                lo, hi = idx.min(0).values, idx.max(0).values
                box = pasted[tuple(slice(int(a), int(z) + 1) for a, z in zip(lo, hi, strict=True))]
                assert bool(box.all())
            expected = torch.zeros(k)
            for j in range(b):
                expected[labels[j]] += (src[i] == j).float().mean()
            torch.testing.assert_close(soft[i], expected)
    assert mixed_any


def test_cutmix_seed_prob_and_odd_batches():
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 0, 1, 1])
    a = CutMixBatch(2, seed=4)(x, y)
    b = CutMixBatch(2, seed=4)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    xi, yi = CutMixBatch(2, prob=0.0)(x, y)
    assert torch.equal(xi, x) and torch.equal(yi, F.one_hot(y, 2).float())
    x3, y3 = CutMixBatch(2, seed=1)(x[:3], y[:3])  # a smaller last batch
    assert x3.shape == (3, 1, 8, 8) and y3.shape == (3, 2)


def test_classification_loss_hard_and_soft():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    hard = torch.tensor([0, 1])
    ref = F.cross_entropy(logits, hard)
    torch.testing.assert_close(classification_loss(logits, hard), ref)
    torch.testing.assert_close(classification_loss(logits, hard[:, None]), ref)
    torch.testing.assert_close(classification_loss(logits, F.one_hot(hard, 3).float()), ref)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    logp = logits.log_softmax(1)
    torch.testing.assert_close(classification_loss(logits, soft), -(soft * logp).sum(1).mean())
    with pytest.raises(ValueError, match="K >= 2"):
        classification_loss(torch.zeros(2, 1), hard)


# ------------------------------------------------------------------------------------------------------ ACoL
class _Capture:
    def __init__(self, module: nn.Module):
        self.inputs: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(lambda m, i, o: self.inputs.append(i[0].detach()))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_acol_erases_head_b_input_by_gt_class(spatial_dims):
    torch.manual_seed(0)
    net = ACoLClassifier(tiny_densenet(spatial_dims), erase_threshold=0.6, hidden_channels=8).train()
    x = torch.rand(*SHAPES[spatial_dims])
    cap_a, cap_b = _Capture(net.head_a[0]), _Capture(net.head_b[0])
    with torch.no_grad():
        logits_a0 = net.head_a(net.features(x)).flatten(2).mean(2)
    labels = (logits_a0.argmax(1) + 1) % 3  # deliberately not the predicted class
    logits_a, logits_b = net(x, labels=labels)
    assert logits_a.shape == logits_b.shape == (x.shape[0], 3)
    feat = cap_a.inputs[-1]
    maps_a = net.head_a(feat).detach()
    for i in range(x.shape[0]):
        m = maps_a[i, labels[i]]
        norm = (m - m.min()) / (m.max() - m.min())
        expected = feat[i] * (norm < 0.6)
        torch.testing.assert_close(cap_b.inputs[-1][i], expected)
        assert bool((norm >= 0.6).any())  # something was erased (at least the max)
    loss = acol_loss((logits_a, logits_b), labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels))
    loss.backward()
    for head in (net.head_a, net.head_b):
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in head.parameters())


def test_acol_eval_logits_and_fused_cam():
    torch.manual_seed(1)
    net = ACoLClassifier(tiny_densenet(2), erase_threshold=0.5, hidden_channels=8).eval()
    x = torch.rand(*SHAPES[2])
    with torch.no_grad():
        logits = net(x)
        out_logits, cams = net.forward_cam(x, class_idx=torch.tensor([0, 1, 2, 0]), upsample=False)
        feat = net.features(x)
        maps_a = net.head_a(feat)
    torch.testing.assert_close(out_logits, logits)
    assert logits.shape == (4, 3) and cams.shape == (4, 1, *feat.shape[2:])
    cls = [0, 1, 2, 0]
    for i, c in enumerate(cls):
        a = maps_a[i, c]
        na = (a - a.min()) / (a.max() - a.min())
        with torch.no_grad():
            b = net.head_b(feat[i : i + 1] * (na < 0.5))[0, c]
        nb = (b - b.min()) / (b.max() - b.min())
        torch.testing.assert_close(cams[i, 0], torch.maximum(na, nb))  # max fusion of normalised maps
    with torch.no_grad():
        _, up = net.forward_cam(x)
    assert up.shape == (4, 1, 32, 32) and float(up.min()) >= 0 and float(up.max()) <= 1


def test_acol_rejects_non_cam_backbone():
    with pytest.raises(ValueError, match="features"):
        ACoLClassifier(nn.Linear(3, 3))


# ------------------------------------------------------------------------------------------ method registry
_METHOD_OPTS = {"acol": {"hidden_channels": 8}, "has": {"grid_size": 8}}
# the WSOL classifiers' contract; the bounds (a segmenter, a fitted prior) have theirs in tests/test_bounds.py
_CASES = [(m, sd) for m in available_methods() if m not in BOUNDS for sd in (2, 3)]


@pytest.mark.parametrize("name,spatial_dims", _CASES)
def test_every_method_trains_one_step_and_maps(name, spatial_dims):
    torch.manual_seed(0)
    spec = build_method(name, spatial_dims, 1, 3, net_kwargs=TINY, **_METHOD_OPTS.get(name, {}))
    assert spec.name == name
    net = spec.net.train()
    shape = SHAPES[spatial_dims]
    x, y = torch.rand(*shape), torch.arange(shape[0]) % 3
    data = {"image": x[0], "label": y[0]}
    for t in spec.train_transforms:
        data = t(data)
    assert data["image"].shape == x[0].shape
    loss = spec.training_loss(x, y)
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    loss.backward()
    plugins = [net.get_submodule(p) for p in getattr(net, "plugin_names", ())]
    if name in ("adl", "sfs1", "sfs2"):
        assert len(plugins) == {"adl": 2, "sfs1": 1, "sfs2": 2}[name]
    for plugin in plugins:
        params = list(plugin.parameters())
        if params:  # ADL has none; the SFS block's 1x1 conv and FCs must learn
            assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
    expected = {"gradcam": GradCAMExtractor, "gradcampp": GradCAMExtractor, "layercam": LayerCAMExtractor}
    expected = expected.get(name, ForwardCAM)
    assert type(spec.extractor) is expected
    assert getattr(spec.extractor, "plusplus", name == "gradcampp") == (name == "gradcampp")
    logits, maps = spec.extractor(net, x, None)
    assert logits.shape == (shape[0], 3) and maps.shape == (shape[0], 1, *shape[2:])
    assert bool(torch.isfinite(maps).all()) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert net.training  # the extractor restores the mode
    _, maps_gt = spec.extractor(net, x, y)
    assert maps_gt.shape == maps.shape


@pytest.mark.parametrize("name", ["adl", "gradcam"])
def test_vgg16_backbone_2d(name):
    spec = build_method(name, 2, 1, 2, backbone="vgg16")
    x = torch.rand(2, 1, 32, 32)
    loss = spec.training_loss(x, torch.tensor([0, 1]))
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert spec.extractor(spec.net, x, None)[1].shape == (2, 1, 32, 32)
    if name == "adl":
        assert spec.net.positions == ("conv3_3", "conv4_3", "conv5_3")


def test_adl_is_identity_inside_a_net_at_inference():
    spec = build_method("adl", 2, 1, 3, net_kwargs=TINY, drop_rate=1.0, gamma=0.1)
    plain = tiny_densenet(2)
    plain.load_state_dict({k: v for k, v in spec.net.state_dict().items()})  # ADL has no parameters
    x = torch.rand(*SHAPES[2])
    spec.net.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(spec.net(x), plain(x))
        spec.net.train(), plain.train()
        assert not torch.allclose(spec.net(x), plain(x))


def test_registry_errors_and_options():
    with pytest.raises(
        ValueError, match="valid methods: cam, adl, has, cutmix, acol, gradcam, gradcampp, layercam, sfs1"
    ):
        build_method("spg", 2, 1, 2)
    with pytest.raises(ValueError, match="unknown option"):
        build_method("adl", 2, 1, 2, net_kwargs=TINY, cr=0.5)
    with pytest.raises(ValueError, match="2D only"):
        build_method("cam", 3, 1, 2, backbone="vgg16")
    with pytest.raises(ValueError, match="valid backbones"):
        build_method("cam", 2, 1, 2, backbone="resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        build_method("cam", 2, 1, 1)
    spec = build_method("sfs1", 2, 1, 2, net_kwargs=TINY, cr=0.7, t=0.3, init="random")
    block = spec.net.get_submodule(spec.net.plugin_names[0])
    assert (block.cr, block.t, block.init) == (0.7, 0.3, "random")
    assert spec.options["positions"] == ("denseblock4",)
