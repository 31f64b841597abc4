"""CAM extractors.

State restoration, class selection, maps (range, shape, values), registry, evaluator use.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import MetaTensor, decollate_batch, list_data_collate

from monai_wsol.engines import CAMEvaluator, CAMInferer
from monai_wsol.extractors import (
    CAMExtractor,
    ForwardCAM,
    GradCAMExtractor,
    LayerCAMExtractor,
    SliceBySliceExtractor,
    SlidingWindowExtractor,
    available_extractors,
    get_extractor,
    normalize_maps,
    resolve_class_selection,
)
from monai_wsol.methods import build_method
from monai_wsol.networks.nets import ACoLClassifier, CAMDenseNet121, CAMPlainCNN

# A DenseNet121 topology with 1 layer per dense block and narrow growth: same code path, milliseconds per
# call.
TINY = {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1, 1), "bn_size": 2, "low_stride": True}
SHAPES = {2: (4, 1, 32, 32), 3: (2, 1, 16, 16, 16)}
NAMES = ("cam", "gradcam", "gradcampp", "layercam")


def tiny_densenet(spatial_dims: int, num_classes: int = 3) -> CAMDenseNet121:
    return CAMDenseNet121(spatial_dims, 1, num_classes, **TINY)


def _mixed_state_net(spatial_dims: int, acol: bool = False) -> nn.Module:
    """A net in training mode with a frozen (eval) batch norm, an inplace ReLU at the Grad-CAM layer, one
    frozen parameter and gradients from a backward pass: everything an extractor could disturb."""
    torch.manual_seed(0)
    net = tiny_densenet(spatial_dims)
    if acol:
        net = ACoLClassifier(net, hidden_channels=8)
    net.train()
    dense = net.backbone if acol else net
    dense.backbone.norm0.eval()
    dense.backbone.norm0.weight.requires_grad_(False)
    net.get_submodule(net.cam_layer_name).inplace = True  # MONAI's GradCAM switches the hooked layer's off
    out = net(torch.rand(*SHAPES[spatial_dims]))
    loss = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
    loss.backward()
    return net


def _global_hook_dicts() -> dict[str, int]:
    module = torch.nn.modules.module
    return {k: len(v) for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict)}


def _snapshot(net: nn.Module) -> dict:
    """Every state an extractor must leave unchanged, by module / parameter name."""
    return {
        "training": {n: m.training for n, m in net.named_modules()},
        "inplace": {n: m.__dict__.get("inplace") for n, m in net.named_modules()},
        "full_bw": {n: m.__dict__.get("_is_full_backward_hook") for n, m in net.named_modules()},
        "hooks": {
            (n, k): sorted(d)
            for n, m in net.named_modules()
            for k, d in vars(m).items()
            if "hooks" in k and isinstance(d, dict)
        },
        "global_hooks": _global_hook_dicts(),
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()},
        "grad_id": {n: id(p.grad) for n, p in net.named_parameters()},
    }


def _assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "inplace", "full_bw", "hooks", "global_hooks", "requires_grad", "grad_id"):
        assert after[key] == before[key], key
    for n, g in before["grad"].items():
        assert (g is None and after["grad"][n] is None) or torch.equal(g, after["grad"][n]), n


def _assert_normalised(maps: torch.Tensor, shape: tuple, strict_max: bool = True) -> None:
    """(B, 1, *spatial) in [0, 1], min 0 and max 1 per sample (or an all-zero, constant map)."""
    assert maps.shape == (shape[0], 1, *shape[2:])
    assert maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())
    flat = maps.flatten(1)
    assert float(flat.min()) >= 0.0 and float(flat.max()) <= 1.0
    torch.testing.assert_close(flat.amin(1), torch.zeros(shape[0]))
    peaks = flat.amax(1)
    ones = torch.ones(shape[0])
    if strict_max:
        torch.testing.assert_close(peaks, ones)
    else:  # Grad-CAM's ReLU can leave a class with no positive evidence: an all-zero map
        assert bool(((peaks - 1).abs() < 1e-6).logical_or(peaks == 0).all())


# ---------------------------------------------------------------------------------------- state restoration
@pytest.mark.parametrize("context", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_every_extractor_leaves_the_net_as_it_was(name, spatial_dims, context):
    net = _mixed_state_net(spatial_dims)
    x = torch.rand(*SHAPES[spatial_dims])
    before = _snapshot(net)
    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[
        context
    ]
    with ctx():
        logits, maps = get_extractor(name)(net, x, class_idx=1)
    _assert_same_state(before, _snapshot(net))
    assert not before["training"]["backbone.norm0"] and before["training"]["backbone.denseblock1"]
    assert (
        before["inplace"]["backbone.relu5"] is True
        and before["requires_grad"]["backbone.norm0.weight"] is False
    )
    assert logits.shape == (x.shape[0], 3) and not logits.requires_grad and not maps.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(logits, net.eval()(x))  # the logits are the eval-mode ones
    _assert_normalised(maps, x.shape, strict_max=name == "cam")


@pytest.mark.parametrize("name", NAMES)
def test_acol_net_is_left_as_it_was(name):
    net = _mixed_state_net(2, acol=True)
    x = torch.rand(*SHAPES[2])
    before = _snapshot(net)
    _, maps = get_extractor(name)(net, x, class_idx=torch.tensor([0, 1, 2, 0]))
    _assert_same_state(before, _snapshot(net))
    _assert_normalised(maps, x.shape, strict_max=name == "cam")


class _FailingCAMNet(nn.Module):
    """forward_cam disturbs the net (a hook, a module back in training mode) and then raises."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2)

    def forward_cam(self, x: torch.Tensor, class_idx=None, upsample=True):
        self.conv.register_forward_hook(lambda m, i, o: None)
        self.norm.register_forward_pre_hook(lambda m, i: None)
        self.norm.train()
        self.conv(x)
        raise RuntimeError("failure inside forward_cam")


def test_exception_inside_forward_cam_restores_modes_and_hooks():
    net = _FailingCAMNet().train()
    net.norm.eval()
    before = _snapshot(net)
    with pytest.raises(RuntimeError, match="failure inside"):
        ForwardCAM()(net, torch.rand(2, 1, 8, 8))
    _assert_same_state(before, _snapshot(net))


@pytest.mark.parametrize("plusplus", [False, True])
def test_exception_inside_gradcam_restores_modes_and_hooks(plusplus):
    # an out-of-range class raises in the class score, after MONAI registered its hooks, switched the layer's
    # inplace off, ran the forward pass in eval mode
    net = _mixed_state_net(2)
    before = _snapshot(net)
    with pytest.raises(ValueError, match="class_idx must be in"):
        GradCAMExtractor(plusplus=plusplus)(net, torch.rand(*SHAPES[2]), class_idx=3)
    _assert_same_state(before, _snapshot(net))
    with pytest.raises(ValueError, match="not a module"):
        GradCAMExtractor(layer_name="nope")(net, torch.rand(*SHAPES[2]))
    _assert_same_state(before, _snapshot(net))


# ----------------------------------------------------------------------------------------------- map values
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_forward_cam_equals_normalised_upsampled_weighted_sum(spatial_dims):
    torch.manual_seed(1)
    net = tiny_densenet(spatial_dims).eval()
    x = torch.rand(*SHAPES[spatial_dims])
    b = x.shape[0]
    with torch.no_grad():
        feats = net.features(x)  # (B, C, *s)
        logits_ref = net(x)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    for class_idx, classes in [
        (None, logits_ref.argmax(1)),
        (2, torch.full((b,), 2)),
        (torch.arange(b) % 3, torch.arange(b) % 3),
    ]:
        logits, maps = ForwardCAM()(net, x, class_idx)
        w = net.classifier.weight.detach()[classes]  # (B, C): w_k of each sample's class
        explicit = torch.einsum("bc,bc...->b...", w, feats).unsqueeze(1)  # (B, 1, *s)
        up = F.interpolate(explicit, size=x.shape[2:], mode=mode, align_corners=False).flatten(1)
        lo, hi = up.amin(1, keepdim=True), up.amax(1, keepdim=True)
        expected = ((up - lo) / (hi - lo)).reshape(maps.shape)
        torch.testing.assert_close(logits, logits_ref)
        torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-5)
    raw_logits, raw = ForwardCAM(normalize=False)(net, x, 1)
    torch.testing.assert_close(normalize_maps(raw), ForwardCAM()(net, x, 1)[1])
    assert not torch.allclose(raw, normalize_maps(raw))  # really raw


def test_forward_cam_of_acol_is_its_fused_map_renormalised():
    torch.manual_seed(2)
    net = ACoLClassifier(tiny_densenet(2), hidden_channels=8).eval()
    x = torch.rand(*SHAPES[2])
    cls = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        logits_ref, fused = net.forward_cam(x, class_idx=cls, upsample=True)
    logits, maps = ForwardCAM()(net, x, cls)
    torch.testing.assert_close(logits, logits_ref)
    torch.testing.assert_close(maps, normalize_maps(fused))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradcam_equals_relu_cam_for_gap_linear_nets(spatial_dims):
    # for GAP + linear, dlogit_k/dF_c = w_k[c] / N everywhere, so Grad-CAM = ReLU(CAM) / N: same normalised
    # map
    torch.manual_seed(0)
    net = tiny_densenet(spatial_dims).eval()
    x = torch.rand(*SHAPES[spatial_dims])
    _, maps = GradCAMExtractor()(net, x, class_idx=1)
    with torch.no_grad():
        _, cams = net.forward_cam(x, class_idx=1, upsample=False)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    expected = normalize_maps(F.interpolate(F.relu(cams), size=x.shape[2:], mode=mode, align_corners=False))
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_layercam_of_the_last_layer_of_a_gap_net_is_the_tanh_of_its_cam(spatial_dims):
    # GAP + linear: dlogit_k/dF_c = w_k[c] / N at every location; with w_k > 0 and F >= 0 (after the ReLU)
    # LayerCAM's map is CAM / N, then tanh(gamma * normalised); stride 1, so no upsampling in between
    torch.manual_seed(0)
    net = CAMPlainCNN(spatial_dims, 1, 2, channels=(4, 8), stages=(1, 2), num_pools=0, pooling="avg").eval()
    with torch.no_grad():
        net.classifier.weight.abs_()
    x = torch.rand(2, 1, *([12] * spatial_dims))
    _, maps = LayerCAMExtractor(layer_names=[net.cam_layer_name], gamma=2.0)(net, x, class_idx=1)
    with torch.no_grad():
        _, cams = net.forward_cam(x, class_idx=1, upsample=False)
    expected = normalize_maps(torch.tanh(2.0 * normalize_maps(cams)))
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_layercam_fuses_the_stage_maps_by_their_maximum_on_the_finest_grid(spatial_dims):
    torch.manual_seed(1)
    net = CAMPlainCNN(spatial_dims, 1, 2, channels=(4, 8, 8), stages=(1, 1, 2)).eval()
    assert net.stage_layer_names == ("backbone.conv1", "backbone.conv2", "backbone.conv4")
    x = torch.rand(2, 1, *([16] * spatial_dims))
    raw = LayerCAMExtractor(normalize=False)  # the default layers: the last convolution of each stage
    _, fused = raw(net, x, class_idx=1)
    # the first stage is at the input's grid, so each single-layer map is upsampled to it as the fusion does
    per_layer = [
        LayerCAMExtractor([name], normalize=False)(net, x, class_idx=1)[1] for name in net.stage_layer_names
    ]
    torch.testing.assert_close(fused, torch.stack(per_layer).amax(0))
    assert not torch.equal(per_layer[0], per_layer[2])  # the layers do differ
    assert float(fused.max()) <= 1.0 and float(fused.min()) >= 0.0  # tanh of maps in [0, 1]


def test_layercam_refusals_and_registry():
    net = CAMPlainCNN(2, 1, 2, channels=(4, 8), stages=(1, 1)).eval()
    with pytest.raises(ValueError, match="'backbone.nope' is not a module of CAMPlainCNN"):
        LayerCAMExtractor(["backbone.nope"])(net, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="non-empty list"):
        LayerCAMExtractor("backbone.conv1")
    with pytest.raises(ValueError, match="gamma"):
        LayerCAMExtractor(gamma=0)
    with pytest.raises(ValueError, match="class_idx must be in"):
        LayerCAMExtractor()(net, torch.rand(1, 1, 8, 8), class_idx=5)
    cnn = {"channels": [4, 8], "stages": [1, 1]}
    spec = build_method(
        "layercam", 2, 1, 2, backbone="cnn", net_kwargs=cnn, gamma=3.0, layer_names=["backbone.conv2"]
    )
    assert isinstance(spec.extractor, LayerCAMExtractor)
    assert spec.extractor.gamma == 3.0 and spec.extractor.layer_names == ["backbone.conv2"]
    with pytest.raises(ValueError, match="unknown"):
        build_method("layercam", 2, 1, 2, backbone="cnn", t=0.4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("plusplus", [False, True])
def test_gradcam_per_sample_classes_equal_per_sample_calls(plusplus, spatial_dims):
    torch.manual_seed(2)
    net = tiny_densenet(spatial_dims).eval()
    x = torch.rand(*SHAPES[spatial_dims])
    b = x.shape[0]
    extractor = GradCAMExtractor(plusplus=plusplus, normalize=False)  # raw: no normalisation hides a mix-up
    cls = torch.tensor([2, 0, 1, 2][:b])
    logits, batch = extractor(net, x, class_idx=cls)
    single = torch.cat([extractor(net, x[i : i + 1], class_idx=int(c))[1] for i, c in enumerate(cls)])
    torch.testing.assert_close(batch, single)
    other = extractor(net, x, class_idx=(cls + 1) % 3)[1]
    assert not torch.allclose(batch, other)  # each sample's map depends on its own class
    with torch.no_grad():
        torch.testing.assert_close(logits, net(x))
    # class None = each sample's own prediction
    torch.testing.assert_close(extractor(net, x)[1], extractor(net, x, logits.argmax(1))[1])


def test_gradcam_works_with_every_parameter_frozen():
    net = tiny_densenet(2).eval().requires_grad_(False)
    x = torch.rand(*SHAPES[2])
    _, maps = GradCAMExtractor(plusplus=True)(net, x, class_idx=0)
    assert maps.shape == (4, 1, 32, 32) and bool(torch.isfinite(maps).all())
    assert not any(p.requires_grad or p.grad is not None for p in net.parameters())


# ------------------------------------------------------------------------------------------- class selection
def test_class_selection_forms():
    b = 3
    torch.testing.assert_close(resolve_class_selection(2, b), torch.tensor([2, 2, 2]))
    torch.testing.assert_close(resolve_class_selection(torch.tensor([1, 0, 2]), b), torch.tensor([1, 0, 2]))
    torch.testing.assert_close(
        resolve_class_selection(torch.tensor([[1], [0], [2]]), b), torch.tensor([1, 0, 2])
    )
    torch.testing.assert_close(
        resolve_class_selection(torch.tensor([1.0, 0.0, 2.0]), b), torch.tensor([1, 0, 2])
    )
    one_hot = F.one_hot(torch.tensor([1, 0, 2]), 3)
    torch.testing.assert_close(resolve_class_selection(one_hot, b), torch.tensor([1, 0, 2]))
    soft = torch.tensor([[0.2, 0.8, 0.0], [0.6, 0.1, 0.3], [0.3, 0.3, 0.4]])
    torch.testing.assert_close(resolve_class_selection(soft, b), torch.tensor([1, 0, 2]))
    assert resolve_class_selection(None, b) is None
    for bad, err in [
        (True, TypeError),
        (torch.tensor([True, False, True]), TypeError),
        (torch.tensor([0, 1]), ValueError),
        (torch.tensor([0.5, 1.0, 2.0]), ValueError),
        (torch.zeros(3, 2, 2), ValueError),
        (torch.zeros(2, 3), ValueError),
    ]:
        with pytest.raises(err, match="class_idx"):
            resolve_class_selection(bad, b)


@pytest.mark.parametrize("name", NAMES)
def test_label_style_selection_gives_the_indexed_maps(name):
    torch.manual_seed(3)
    net = tiny_densenet(2).eval()
    x = torch.rand(*SHAPES[2])
    extractor = get_extractor(name)
    idx = torch.tensor([2, 0, 1, 1])
    by_index = extractor(net, x, idx)[1]
    torch.testing.assert_close(extractor(net, x, F.one_hot(idx, 3).float())[1], by_index)
    torch.testing.assert_close(extractor(net, x, idx[:, None].float())[1], by_index)
    with pytest.raises(ValueError, match="labels"):
        extractor(net, x, F.one_hot(idx, 4).float())  # 4 label classes, 3 net classes
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        extractor(net, torch.rand(32, 32))


def test_metatensor_input_gives_maps_with_its_metadata():
    torch.manual_seed(4)
    net = tiny_densenet(2).eval()
    affines = [torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])), torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0]))]
    items = [
        MetaTensor(torch.rand(1, 32, 32), affine=a, meta={"filename_or_obj": f"im{i}"})
        for i, a in enumerate(affines)
    ]
    x = list_data_collate(items)
    assert isinstance(x, MetaTensor) and x.is_batch
    logits, maps = ForwardCAM()(net, x, 1)
    assert isinstance(maps, MetaTensor) and not isinstance(logits, MetaTensor)
    torch.testing.assert_close(maps.as_tensor(), ForwardCAM()(net, x.as_tensor(), 1)[1])
    for item, affine, name in zip(decollate_batch(maps), affines, ("im0", "im1"), strict=True):
        torch.testing.assert_close(item.affine.float(), affine)
        assert item.meta["filename_or_obj"] == name and item.shape == (1, 32, 32)


# -------------------------------------------------------------------------------------------------- registry
def test_registry_by_name():
    assert available_extractors() == ("cam", "gradcam", "gradcampp", "layercam")
    assert type(get_extractor("cam")) is ForwardCAM
    grad, gradpp = get_extractor("gradcam"), get_extractor("gradcampp", layer_name="backbone.relu5")
    assert isinstance(grad, GradCAMExtractor) and not grad.plusplus
    assert isinstance(gradpp, GradCAMExtractor) and gradpp.plusplus and gradpp.layer_name == "backbone.relu5"
    assert get_extractor("cam", normalize=False).normalize is False
    instance = ForwardCAM()
    assert get_extractor(instance) is instance
    with pytest.raises(ValueError, match="valid extractors: cam, gradcam, gradcampp, layercam"):
        get_extractor("scorecam")
    with pytest.raises(ValueError, match="instance"):
        get_extractor(instance, normalize=False)
    with pytest.raises(TypeError):
        CAMExtractor()  # abstract
    with pytest.raises(TypeError, match="forward_cam"):
        ForwardCAM()(nn.Conv2d(1, 2, 3), torch.rand(1, 1, 8, 8))


# ------------------------------------------------------------------------------------------ evaluator use
def _evaluator_batches(n_batches: int = 2, b: int = 2) -> list[dict]:
    """Batches collated as a DataLoader would.

    MetaTensor images (own affines, ``is_batch``), labels, masks.
    """
    torch.manual_seed(5)
    batches = []
    for _ in range(n_batches):
        items = [
            {
                "image": MetaTensor(torch.rand(1, 32, 32), affine=torch.diag(torch.rand(4) + 0.5)),
                "label": torch.randint(0, 3, ()),
                "mask": torch.zeros(1, 32, 32),
            }
            for _ in range(b)
        ]
        batches.append(list_data_collate(items))
    return batches


@pytest.mark.parametrize("extractor", [None, "gradcam"])
@pytest.mark.parametrize("cam_class", [1, "pred", "label"])
def test_cam_evaluator_uses_the_extractor(cam_class, extractor):
    net = tiny_densenet(2).train()
    batches = _evaluator_batches()
    outputs = []
    evaluator = CAMEvaluator(
        device=torch.device("cpu"),
        val_data_loader=batches,
        network=net,
        cam_class=cam_class,
        extractor=extractor,
        batch_keys=["mask"],
        decollate=False,
    )
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    evaluator.run()
    assert net.training  # the evaluator and the extractor both restore the mode
    reference = get_extractor("cam" if extractor is None else extractor)
    for batch, out in zip(batches, outputs, strict=True):
        image = batch["image"]
        class_idx = {"pred": None, "label": batch["label"]}.get(cam_class, cam_class)
        logits, maps = reference(net, image, class_idx)
        torch.testing.assert_close(out["pred"], logits)
        assert isinstance(out["cam"], MetaTensor)
        torch.testing.assert_close(out["cam"].as_tensor(), maps.as_tensor())
        torch.testing.assert_close(out["cam"].affine, image.affine)
        assert out["mask"] is batch["mask"]


def test_cam_evaluator_label_needs_labels_and_inferer_unwraps():
    net = tiny_densenet(2)
    batches = [{"image": b["image"]} for b in _evaluator_batches(1)]
    evaluator = CAMEvaluator(
        device=torch.device("cpu"), val_data_loader=batches, network=net, cam_class="label"
    )
    with pytest.raises(ValueError, match="needs a 'label'"):
        evaluator.run()
    x = torch.rand(*SHAPES[2])
    wrapped = nn.DataParallel(net)
    torch.testing.assert_close(CAMInferer(1)(x, wrapped)[1], ForwardCAM()(net, x, 1)[1])
    with pytest.raises(ValueError, match="cam_class"):
        CAMEvaluator(device=torch.device("cpu"), val_data_loader=batches, network=net, cam_class="gt")


# ------------------------------------------------------------------------------- flip test-time augmentation
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flip_tta_averages_the_flipped_back_maps(name, spatial_dims):
    net = _mixed_state_net(spatial_dims)
    x = torch.rand(*SHAPES[spatial_dims])
    before = _snapshot(net)
    plain = get_extractor(name, normalize=False)
    axes = (0,) if spatial_dims == 2 else (0, 2)
    tta = plain.with_flip_axes(axes)
    assert plain.flip_axes == () and tta.flip_axes == axes  # a copy: the original is unchanged
    logits, maps = tta(net, x, 1)
    _assert_same_state(before, _snapshot(net))

    passes = [plain(net, x, 1)]
    for a in axes:
        lg, mp = plain(net, x.flip(a + 2), 1)
        passes.append((lg, mp.flip(a + 2)))
    torch.testing.assert_close(logits, torch.stack([p[0] for p in passes]).mean(0))
    torch.testing.assert_close(maps, torch.stack([p[1] for p in passes]).mean(0))
    # the flipped pass differs from the plain one (otherwise the test proves nothing); Grad-CAM's ReLU can
    # leave this untrained tiny net with all-zero maps, so the forward CAM carries the check
    if name == "cam":
        assert not torch.allclose(passes[1][1], passes[0][1])

    normalised = get_extractor(name).with_flip_axes(axes)(net, x, 1)[1]
    torch.testing.assert_close(normalised, normalize_maps(maps))
    if spatial_dims == 2:
        with pytest.raises(ValueError, match="spatial dims"):
            get_extractor(name).with_flip_axes((2,))(net, x, 1)
    with pytest.raises(ValueError, match="distinct"):
        ForwardCAM(flip_axes=(0, 0))


# ------------------------------------------------------------------------------------ 2D nets through volumes
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_slice_by_slice_equals_the_slices_as_a_batch(name, slice_axis):
    net = _mixed_state_net(2)
    x = torch.rand(2, 1, 20, 24, 28)
    before = _snapshot(net)
    extractor = SliceBySliceExtractor(name, slice_axis=slice_axis, positive_class=1, slice_batch=7)
    logits, maps, slice_logits = extractor.extract(net, x, 2)
    _assert_same_state(before, _snapshot(net))
    assert maps.shape == (2, 1, 20, 24, 28)
    plain = get_extractor(name, normalize=False)
    for b in range(2):
        slices = x[b].movedim(slice_axis + 1, 0)  # (S, C, *in-plane)
        ref_logits, ref_maps = plain(net, slices, 2)
        torch.testing.assert_close(slice_logits[b], ref_logits, rtol=1e-4, atol=1e-5)
        # one normalisation over the whole volume, not per slice
        volume = ref_maps[:, 0].movedim(0, slice_axis)[None, None]
        torch.testing.assert_close(maps[b : b + 1], normalize_maps(volume), rtol=1e-4, atol=1e-5)
        best = int(torch.softmax(ref_logits, -1)[:, 1].argmax())  # the slice most likely to be positive
        torch.testing.assert_close(logits[b], ref_logits[best], rtol=1e-4, atol=1e-5)
    assert torch.equal(extractor(net, x, 2)[1], maps)


def test_slice_by_slice_flips_slices_and_passes_2d_batches_through():
    net = _mixed_state_net(2)
    volume = MetaTensor(torch.rand(1, 1, 24, 20, 6), affine=torch.diag(torch.tensor([0.5, 0.7, 3.0, 1.0])))
    tta = SliceBySliceExtractor(ForwardCAM(), slice_axis=-1).with_flip_axes((0,))
    assert tta.flip_axes == (0,) and tta.part_extractor.flip_axes == (0,)
    _, maps = tta(net, volume, 1)
    # the map of each slice is the flip-averaged map of that slice, normalised over the volume
    slices = volume.as_tensor()[0].movedim(-1, 0)
    ref = ForwardCAM(normalize=False, flip_axes=(0,))(net, slices, 1)[1]
    torch.testing.assert_close(maps.as_tensor(), normalize_maps(ref[:, 0].movedim(0, -1)[None, None]))
    assert isinstance(maps, MetaTensor) and torch.equal(maps.affine, volume.affine)
    # a 2D batch: the wrapped extractor's maps
    x = torch.rand(3, 1, 32, 32)
    got = SliceBySliceExtractor("cam")(net, x, 1)
    want = ForwardCAM()(net, x, 1)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert SliceBySliceExtractor("cam").extract(net, x, 1)[2] is None


def test_slice_by_slice_refusals():
    net = _mixed_state_net(2)
    with pytest.raises(ValueError, match="predicted class is known only after"):
        SliceBySliceExtractor()(net, torch.rand(1, 1, 16, 16, 3), None)
    with pytest.raises(ValueError, match="positive_class=3"):
        SliceBySliceExtractor(positive_class=3)(net, torch.rand(1, 1, 16, 16, 3), 0)
    with pytest.raises(ValueError, match="slice_axis"):
        SliceBySliceExtractor(slice_axis=3)
    with pytest.raises(ValueError, match="slice_batch"):
        SliceBySliceExtractor(slice_batch=0)
    with pytest.raises(ValueError, match="volumes"):
        SliceBySliceExtractor()(net, torch.rand(1, 1, 16), 0)


# ------------------------------------------------------------------------------ 3D nets over larger volumes
def test_sliding_window_tiles_stitch_the_raw_window_maps():
    net = _mixed_state_net(3)
    x = torch.rand(1, 1, 32, 32, 16)
    before = _snapshot(net)
    # non-overlapping windows that tile the volume, averaged: the stitched map is each window's own raw map
    tiled = SlidingWindowExtractor(
        "cam", roi_size=(16, 16, 16), overlap=0.0, mode="constant", positive_class=1
    )
    logits, maps = tiled(net, x, 1)
    _assert_same_state(before, _snapshot(net))
    raw = get_extractor("cam", normalize=False)
    expected = torch.zeros(1, 1, 32, 32, 16)
    window_logits = []
    for i in (0, 16):
        for j in (0, 16):
            lg, mp = raw(net, x[:, :, i : i + 16, j : j + 16], 1)
            expected[:, :, i : i + 16, j : j + 16] = mp
            window_logits.append(lg)
    torch.testing.assert_close(maps, normalize_maps(expected), rtol=1e-4, atol=1e-5)
    window_logits = torch.cat(window_logits)
    best = int(torch.softmax(window_logits, -1)[:, 1].argmax())  # the window most likely to be positive
    torch.testing.assert_close(logits[0], window_logits[best], rtol=1e-4, atol=1e-5)


def test_sliding_window_gaussian_blend_keeps_the_grid_and_small_volumes_pass_through():
    net = _mixed_state_net(3)
    volume = MetaTensor(torch.rand(2, 1, 40, 24, 24), affine=torch.diag(torch.tensor([0.7, 0.7, 2.0, 1.0])))
    extractor = SlidingWindowExtractor("cam", roi_size=16, overlap=0.5, positive_class=1).with_flip_axes((0,))
    logits, maps = extractor(net, volume, torch.tensor([1, 2]))
    assert logits.shape == (2, 3) and maps.shape == (2, 1, 40, 24, 24)
    _assert_normalised(maps.as_tensor(), (2, 1, 40, 24, 24))
    assert isinstance(maps, MetaTensor) and torch.equal(maps.affine, volume.affine)
    # each volume on its own gives the same (the windows of one volume never mix with another's)
    alone = extractor(net, volume[1:].as_tensor(), 2)[1]
    torch.testing.assert_close(maps[1:].as_tensor(), alone, rtol=1e-4, atol=1e-5)
    # a volume within one window: the wrapped extractor's maps
    small = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(extractor(net, small, 1)[1], ForwardCAM(flip_axes=(0,))(net, small, 1)[1])
    with pytest.raises(ValueError, match="predicted class is known only after"):
        extractor(net, volume, None)
    with pytest.raises(ValueError, match="mode"):
        SlidingWindowExtractor(mode="max")
    with pytest.raises(ValueError, match="roi_size"):
        SlidingWindowExtractor(roi_size=(16, 16))(net, volume, 1)
