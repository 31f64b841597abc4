"""Classifiers that localize: shapes, plug-in positions, plain checkpoints, in-graph CAM, bundle config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.bundle import ConfigParser

from monai_wsol.networks.blocks import DualSuppressionBlock, register_plugin
from monai_wsol.networks.blocks import registry as registry_module
from monai_wsol.networks.nets import (
    CAMVGG16,
    CAMDenseNet121,
    CAMPlainCNN,
    load_plain_state_dict,
    resolve_class_idx,
)

# A small DenseNet (same code path, same layer names as DenseNet121) keeps the 3D tests fast on 2 cores.
TINY = {"init_features": 8, "growth_rate": 4, "block_config": (2, 2, 2, 2)}


@pytest.fixture
def identity_plugin():
    register_plugin("_identity", lambda spatial_dims, in_channels: nn.Identity())
    yield "_identity"
    registry_module._REGISTRY.pop("_identity", None)


def _capture(net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    out = {}
    handle = net.get_submodule(name).register_forward_hook(lambda m, i, o: out.setdefault("y", o.clone()))
    with torch.no_grad():
        net(x)
    handle.remove()
    return out["y"]


def test_vgg16_gap_form_and_positions():
    net = CAMVGG16(in_channels=1, out_channels=4)
    assert net.backbone.get_submodule("0").weight.shape == (64, 1, 3, 3)  # grayscale stem
    assert not any(isinstance(m, nn.MaxPool2d) for m in list(net.backbone)[-8:])  # last max-pool removed
    assert net.cam_layer_name == "backbone.relu6" and net.classifier.in_features == 1024
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert net.features(x).shape == (2, 1024, 2, 2)  # stride 16
        assert net(x).shape == (2, 4)
    one = CAMVGG16(3, 4, plugin="dual_suppression", positions="one")
    two = CAMVGG16(3, 4, plugin="dual_suppression", positions="two")
    assert one.plugin_names == ("backbone.plugin_conv5_3",)
    assert two.plugin_names == ("backbone.plugin_conv4_3", "backbone.plugin_conv5_3")
    names = list(two.backbone._modules)
    assert names.index("plugin_conv4_3") == names.index("22") + 1  # right after conv4_3's ReLU
    assert names.index("plugin_conv5_3") == names.index("29") + 1
    explicit = CAMVGG16(3, 4, plugin="dual_suppression", positions=["conv5_3", "conv3_3"])
    assert explicit.positions == ("conv3_3", "conv5_3")
    assert explicit.get_submodule("backbone.plugin_conv3_3").in_channels == 256
    with pytest.raises(ValueError, match="conv4_3"):
        CAMVGG16(3, 4, plugin="dual_suppression", positions="conv9_9")
    with pytest.raises(KeyError, match="dual_suppression"):
        CAMVGG16(3, 4, plugin="sfs")
    with pytest.raises(ValueError, match="conv5_3"):
        CAMVGG16(3, 4, plugin=None, positions="conv5_4")  # positions are checked for the plain net too


def test_vgg16_names_match_torchvision():
    """Layers 0-28 carry torchvision's VGG16 ``features`` names and shapes, so its weights load by name."""
    tv = pytest.importorskip("torchvision")
    backbone_state = CAMVGG16(3, 2).backbone.state_dict()
    camvgg16_shapes = {k: v.shape for k, v in backbone_state.items() if not k.startswith("conv6")}
    torchvision_shapes = {k: v.shape for k, v in tv.models.vgg16(weights=None).features.state_dict().items()}
    assert camvgg16_shapes == torchvision_shapes


def test_densenet_positions_and_low_stride():
    net = CAMDenseNet121(2, 1, 3, plugin="dual_suppression", positions="two").eval()
    assert net.plugin_names == ("backbone.transition3.plugin_denseblock3", "backbone.plugin_denseblock4")
    assert list(net.backbone.transition3._modules) == ["norm", "relu", "plugin_denseblock3", "conv", "pool"]
    assert net.get_submodule("backbone.transition3.plugin_denseblock3").in_channels == 1024
    assert net.cam_layer_name == "backbone.plugin_denseblock4"
    x2 = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert net.features(x2).shape == (1, 1024, 1, 1) and net.feature_stride == 32
        low = CAMDenseNet121(2, 1, 3, low_stride=True).eval()
        assert low.features(x2).shape == (1, 1024, 4, 4) and low.feature_stride == 8
        net3 = CAMDenseNet121(3, 1, 3, plugin="dual_suppression", positions="one", **TINY).eval()
        assert net3.low_stride and net3.feature_stride == 8  # low stride is the 3D default
        assert net3.features(torch.rand(1, 1, 32, 32, 32)).shape[2:] == (4, 4, 4)
        full = CAMDenseNet121(3, 1, 3, low_stride=False, **TINY).eval()
        assert (
            full.features(torch.rand(1, 1, 32, 32, 32)).shape[2:] == (1, 1, 1) and full.feature_stride == 32
        )
    with pytest.raises(ValueError, match="denseblock1, denseblock2"):
        CAMDenseNet121(2, 1, 3, plugin="dual_suppression", positions="denseblock9", **TINY)


@pytest.mark.parametrize(
    "make",
    [
        lambda plugin: CAMVGG16(3, 5, plugin=plugin, positions="two"),
        lambda plugin: CAMDenseNet121(2, 3, 5, plugin=plugin, positions="two", low_stride=True, **TINY),
        lambda plugin: CAMDenseNet121(3, 1, 5, plugin=plugin, positions="two", **TINY),
        lambda plugin: CAMPlainCNN(2, 1, 3, channels=(8, 16), stages=(1, 2), plugin=plugin, positions="two"),
    ],
)
def test_plain_checkpoint_loads_after_insertion(make, identity_plugin):
    torch.manual_seed(0)
    plain = make(None).eval()
    state = plain.state_dict()
    x = torch.rand(2, plain.in_channels, *([32] * plain.spatial_dims))

    # every backbone parameter keeps its name: the plugged net's keys = the plain keys + plug-in keys only
    sfs = make("dual_suppression").eval()
    extra = set(sfs.state_dict()) - set(state)
    assert set(state) <= set(sfs.state_dict())
    assert extra and all(k.startswith(tuple(f"{p}." for p in sfs.plugin_names)) for k in extra)
    load_plain_state_dict(sfs, state)
    for key, value in state.items():
        assert torch.equal(sfs.state_dict()[key], value), key
    # backbone layers before the first plug-in compute the same outputs
    first_anchor = {
        "CAMVGG16": "backbone.22",
        "CAMDenseNet121": "backbone.transition3.relu",
        "CAMPlainCNN": "backbone.conv2",
    }[type(plain).__name__]
    torch.testing.assert_close(_capture(sfs, first_anchor, x), _capture(plain, first_anchor, x))

    # with a parameter-free identity plug-in the whole network computes the same logits
    ident = make(identity_plugin).eval()
    load_plain_state_dict(ident, state)
    with torch.no_grad():
        torch.testing.assert_close(ident(x), plain(x))

    with pytest.raises(KeyError, match="unexpected keys"):
        load_plain_state_dict(sfs, {**state, "backbone.bogus.weight": torch.zeros(1)})
    missing = dict(state)
    missing.pop("classifier.weight")
    with pytest.raises(KeyError, match="classifier.weight"):
        load_plain_state_dict(sfs, missing)


def test_monai_densenet_checkpoint_converts():
    from monai.networks.nets import DenseNet121

    torch.manual_seed(1)
    monai_net = DenseNet121(3, 1, 2, **TINY).eval()
    net = CAMDenseNet121(3, 1, 2, plugin="dual_suppression", low_stride=False, **TINY).eval()
    load_plain_state_dict(net, CAMDenseNet121.convert_monai_state_dict(monai_net.state_dict()))
    plain = CAMDenseNet121(3, 1, 2, low_stride=False, **TINY).eval()
    load_plain_state_dict(plain, CAMDenseNet121.convert_monai_state_dict(monai_net.state_dict()))
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), monai_net(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cam_equals_explicit_weighted_sum(spatial_dims):
    torch.manual_seed(2)
    net = CAMDenseNet121(
        spatial_dims, 2, 4, plugin="dual_suppression", positions="one", low_stride=True, **TINY
    ).eval()
    size = (32 if spatial_dims == 2 else 16,) * spatial_dims
    x = torch.rand(3, 2, *size)
    with torch.no_grad():
        feats = net.features(x)
        logits, cams = net.forward_cam(x, class_idx="all", upsample=False)
        torch.testing.assert_close(logits, net(x))
        w = net.classifier.weight
        for b in range(3):
            for k in range(4):
                explicit = sum(w[k, c] * feats[b, c] for c in range(feats.shape[1]))
                torch.testing.assert_close(cams[b, k], explicit, atol=1e-5, rtol=1e-5)
        # CAM identity: mean of CAM_k + bias_k == logit_k
        torch.testing.assert_close(
            cams.flatten(2).mean(2) + net.classifier.bias, logits, atol=1e-5, rtol=1e-5
        )

        _, top1 = net.forward_cam(x, upsample=False)
        torch.testing.assert_close(top1, cams[torch.arange(3), logits.argmax(1)][:, None])
        _, given = net.forward_cam(x, class_idx=2, upsample=False)
        torch.testing.assert_close(given, cams[:, 2:3])
        per_sample = torch.tensor([3, 0, 1])
        _, ps = net.forward_cam(x, class_idx=per_sample, upsample=False)
        torch.testing.assert_close(ps, cams[torch.arange(3), per_sample][:, None])
        _, two = net.forward_cam(x, class_idx=torch.tensor([[1, 3], [0, 0], [2, 1]]), upsample=False)
        torch.testing.assert_close(two[2], cams[2, [2, 1]])
        _, listed = net.forward_cam(x, class_idx=[3, 1], upsample=False)
        torch.testing.assert_close(listed, cams[:, [3, 1]])
        _, up = net.forward_cam(x, class_idx="all")
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        assert up.shape == (3, 4, *size)
        torch.testing.assert_close(up, F.interpolate(cams, size=size, mode=mode, align_corners=False))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_plain_cnn_topk_pooling_pools_the_cam(spatial_dims):
    torch.manual_seed(3)
    net = CAMPlainCNN(spatial_dims, 1, 3, channels=(4, 8), stages=(1, 2), topk_fraction=0.1).eval()
    assert net.feature_stride == 2 and net.pooling == "topk"
    assert [n for n in net.backbone._modules] == ["conv1", "pool1", "conv2", "conv3"]
    size = (20 if spatial_dims == 2 else 8,) * spatial_dims
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        logits, cams = net.forward_cam(x, class_idx="all", upsample=False)
    assert cams.shape == (2, 3, *(s // 2 for s in size))
    flat = cams.flatten(2)
    k = math.ceil(0.1 * flat.shape[2])
    # the logit is the mean of the k largest CAM values plus the bias, not the CAM's mean
    expected = flat.sort(dim=2, descending=True).values[..., :k].mean(2) + net.classifier.bias
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, flat.mean(2) + net.classifier.bias, atol=1e-3)

    avg = CAMPlainCNN(spatial_dims, 1, 3, channels=(4, 8), stages=(1, 2), pooling="avg").eval()
    avg.load_state_dict(net.state_dict())
    with torch.no_grad():
        logits_avg, cams_avg = avg.forward_cam(x, class_idx="all", upsample=False)
    torch.testing.assert_close(cams_avg, cams)
    torch.testing.assert_close(logits_avg, flat.mean(2) + net.classifier.bias, atol=1e-5, rtol=1e-5)

    with pytest.raises(ValueError, match="pooling"):
        CAMPlainCNN(2, 1, 2, pooling="max")
    with pytest.raises(ValueError, match="topk_fraction"):
        CAMPlainCNN(2, 1, 2, topk_fraction=0.0)
    with pytest.raises(ValueError, match="same non-zero length"):
        CAMPlainCNN(2, 1, 2, channels=(4,), stages=(1, 2))


def test_bad_class_idx_and_input():
    logits = torch.zeros(2, 3)
    for bad, err in [
        (3, ValueError),
        (-1, ValueError),
        ("top", ValueError),
        (1.5, TypeError),
        (True, TypeError),
        (torch.tensor([0.0, 1.0]), TypeError),
        (torch.tensor([0, 1, 2]), ValueError),
        (torch.tensor([[0, 5], [1, 1]]), ValueError),
        ([0, 3], ValueError),
        ([], TypeError),
        ([0.5], TypeError),
    ]:
        with pytest.raises(err, match="class_idx"):
            resolve_class_idx(bad, logits)
    net = CAMDenseNet121(2, 1, 3, **TINY)
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        net(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="2 spatial dims"):
        net.forward_cam(torch.rand(1, 1, 16, 16, 16))


def test_gradients_reach_every_parameter_and_bf16():
    torch.manual_seed(3)
    net = CAMDenseNet121(
        3, 1, 2, plugin="dual_suppression", positions="two", plugin_kwargs={"init": "random"}, **TINY
    ).train()
    x = torch.rand(2, 1, 16, 16, 16)
    F.cross_entropy(net(x), torch.tensor([0, 1])).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cams = net.eval().forward_cam(x)
    assert cams.shape == (2, 1, 16, 16, 16) and torch.isfinite(cams.float()).all()


def test_cam_layer_name_works_with_monai_gradcam():
    from monai.visualize import GradCAM

    torch.manual_seed(4)
    net = CAMDenseNet121(2, 1, 3, plugin="dual_suppression", positions="one", low_stride=True, **TINY).eval()
    x = torch.rand(2, 1, 32, 32)
    hooked = _capture(net, net.cam_layer_name, x)
    with torch.no_grad():
        torch.testing.assert_close(hooked, net.features(x))
    assert GradCAM(nn_module=net, target_layers=net.cam_layer_name)(x).shape == (2, 1, 32, 32)


def test_bundle_config():
    config = {
        "net": {
            "_target_": "monai_wsol.networks.nets.CAMDenseNet121",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "plugin": "dual_suppression",
            "positions": ["denseblock3", "denseblock4"],
            "plugin_kwargs": {"cr": 0.7, "t": 0.3},
            **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        },
        "vgg": {
            "_target_": "monai_wsol.networks.nets.CAMVGG16",
            "in_channels": 1,
            "out_channels": 2,
            "plugin": None,
        },
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("net")
    assert isinstance(net, CAMDenseNet121) and len(net.plugin_names) == 2
    block = net.get_submodule(net.plugin_names[0])
    assert isinstance(block, DualSuppressionBlock) and (block.cr, block.t) == (0.7, 0.3)
    vgg = parser.get_parsed_content("vgg")
    assert isinstance(vgg, CAMVGG16) and vgg.plugin_names == ()


def test_nets_import_no_upper_layer():
    # nets sit below the method registry and the workflows: importing either from a net (even inside a
    # function) would make an import circle
    import ast
    from pathlib import Path

    import monai_wsol.networks as networks

    upper = ("monai_wsol.methods", "monai_wsol.engines", "monai_wsol.benchmark", "monai_wsol.monailabel")
    files = sorted(Path(networks.__file__).parent.rglob("*.py"))
    assert any(f.name == "acol.py" for f in files)
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.startswith(upper)], f"{path.name} imports {names}"
