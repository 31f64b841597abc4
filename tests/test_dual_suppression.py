"""The dual-suppression block against docs/method.md: constraints on g, branch 2, steps 1-6, init, export."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_wsol.networks.blocks import (
    DualSuppressionBlock,
    available_plugins,
    g_alpha,
    get_plugin,
    register_plugin,
    suppress_discriminative,
    suppress_irrelevant,
)
from monai_wsol.networks.blocks import registry as registry_module

FAMILIES = ("exp", "tanh")


def _ramp(m: float = 10.0, n: int = 4001) -> torch.Tensor:
    """One sample, one channel whose values sweep [0, m] (so m_c == m): shape (1, 1, n, 1), float64."""
    return torch.linspace(0.0, m, n, dtype=torch.float64).reshape(1, 1, n, 1)


def _g_below_threshold(cr: float, g: str, m: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    x = _ramp(m)
    d = suppress_discriminative(x, cr=cr, g=g)
    below = x < cr * m
    return x[below], d[below]


@pytest.mark.parametrize("g", FAMILIES)
@pytest.mark.parametrize("cr", [0.2, 0.5, 0.8, 0.95])
def test_g_constraints(cr, g):
    xs, ds = _g_below_threshold(cr, g)
    assert xs[0] == 0 and ds[0] == 0  # g(0) = 0
    diffs = ds[1:] - ds[:-1]
    assert (diffs > 0).all()  # strictly increasing on [0, cr*m)
    assert (diffs[1:] - diffs[:-1] <= 1e-12).all()  # concave: non-increasing increments on a uniform grid
    assert (ds >= xs - 1e-12).all()  # g(x) >= x: enhances, never weakens
    assert (ds[1:] > xs[1:]).all()  # strictly, inside the open interval
    # meets the identity at cr*m: g(x) - x -> 0 as x -> cr*m from below (grid step is m / 4000)
    assert abs(float(ds[-1] - xs[-1])) < 5e-3
    alpha = g_alpha(cr, g)
    h = (lambda u: 1 - math.exp(-u)) if g == "exp" else math.tanh
    assert h(alpha * cr) == pytest.approx(cr, rel=1e-12)  # alpha fixed by cr: exact intersection


def test_reference_exp_formula_and_alpha():
    assert g_alpha(0.8) == pytest.approx(math.log(5) / 0.8)  # docs/method.md: ln 5 / 0.8 ~ 2.012
    m = 7.0
    xs, ds = _g_below_threshold(0.8, "exp", m)
    alpha = math.log(5) / 0.8
    torch.testing.assert_close(ds, m * (1 - torch.exp(-alpha * xs / m)))


@pytest.mark.parametrize("g", FAMILIES)
def test_branch1_zero_at_and_above_threshold(g):
    m, cr = 10.0, 0.75  # cr*m = 7.5 exactly representable
    x = _ramp(m)
    d = suppress_discriminative(x, cr=cr, g=g)
    assert (d[x >= cr * m] == 0).all()
    assert (x == 7.5).any() and d[x == 7.5].item() == 0  # exactly at the threshold -> suppressed
    assert d[(x > 7.4) & (x < 7.5)].min() > 7.4  # just below: kept (and enhanced)


def test_branch2_keeps_exactly_values_at_or_above_t_m():
    torch.manual_seed(0)
    x = torch.rand(3, 4, 9, 7) * 5
    x[0, 0, 0, 0] = 10.0  # m = 10 in (0, 0); t*m = 5 exactly
    x[0, 0, 1, 1] = 5.0
    x[0, 0, 2, 2] = 4.999
    s = suppress_irrelevant(x, t=0.5)
    m = x.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(s, torch.where(x >= 0.5 * m, x, torch.zeros_like(x)), rtol=0, atol=0)
    assert s[0, 0, 1, 1] == 5.0 and s[0, 0, 2, 2] == 0.0


def test_negative_inputs_are_clamped_first():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(suppress_discriminative(x), suppress_discriminative(x.clamp_min(0)))
    torch.testing.assert_close(suppress_irrelevant(x), suppress_irrelevant(x.clamp_min(0)))
    assert (suppress_irrelevant(x) >= 0).all() and (suppress_discriminative(x) >= 0).all()


@pytest.mark.parametrize("spatial", [(8, 7), (5, 6, 4)])
def test_per_sample_and_per_channel_max(spatial):
    """The max is per sample and per channel: a batch equals its samples one by one, channels don't mix."""
    torch.manual_seed(2)
    scales = torch.tensor([0.01, 1.0, 1000.0]).reshape(3, 1, *([1] * len(spatial)))
    x = torch.rand(3, 4, *spatial, dtype=torch.float64) * scales  # float64: batched conv rounds differently
    block = DualSuppressionBlock(len(spatial), 4, init="random").double().eval()
    for fn in (suppress_discriminative, suppress_irrelevant, block):
        batched = fn(x)
        single = torch.cat([fn(x[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(batched, single)
    y = x.clone()
    y[:, 1] *= 50.0  # rescaling channel 1 must not change the other channels' branch outputs
    for fn in (suppress_discriminative, suppress_irrelevant):
        torch.testing.assert_close(fn(y)[:, [0, 2, 3]], fn(x)[:, [0, 2, 3]])


def test_max_runs_over_all_spatial_positions_in_3d():
    x = torch.zeros(1, 1, 4, 4, 4)
    x[0, 0, 3, 3, 3] = 10.0  # the max sits in the last depth slice only
    x[0, 0, 0, 0, 0] = 5.0
    assert suppress_irrelevant(x, t=0.6)[0, 0, 0, 0, 0] == 0  # 5 < 0.6 * 10 (a per-slice max would keep it)
    assert suppress_discriminative(x, cr=0.8)[0, 0, 3, 3, 3] == 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dead_channels_give_zero_and_finite(spatial_dims):
    x = torch.rand(2, 3, *([5] * spatial_dims))
    x[0, 1] = 0.0  # all zero
    x[1, 2] = -torch.rand(*([5] * spatial_dims))  # all negative -> 0 after the clamp
    d, s = suppress_discriminative(x), suppress_irrelevant(x)
    assert (d[0, 1] == 0).all() and (s[0, 1] == 0).all() and (d[1, 2] == 0).all() and (s[1, 2] == 0).all()
    block = DualSuppressionBlock(spatial_dims, 3, init="random")
    out = block(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_block_matches_method_steps(spatial_dims):
    """Steps 1-6 written out with functional ops equal the module (random init, so every weight matters)."""
    torch.manual_seed(3)
    c = 6
    block = DualSuppressionBlock(spatial_dims, c, cr=0.7, t=0.3, reduction_channels=4, init="random")
    x = torch.randn(2, c, *([6] * spatial_dims))
    fused = torch.cat([suppress_discriminative(x, 0.7), suppress_irrelevant(x, 0.3)], dim=1)
    w1 = fused.flatten(2).amax(dim=2)  # global MAX pooling
    w_star = torch.sigmoid(block.fc2(F.relu(block.fc1(w1))))
    weighted = fused * w_star.reshape(2, 2 * c, *([1] * spatial_dims))
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    expected = conv(weighted, block.conv.weight, block.conv.bias)
    out = block(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)
    assert block.conv.weight.shape == (c, 2 * c, *([1] * spatial_dims))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_passthrough_init_is_even_blend(spatial_dims):
    torch.manual_seed(4)
    x = torch.randn(2, 5, *([6] * spatial_dims))
    block = DualSuppressionBlock(spatial_dims, 5, cr=0.8, t=0.4)
    assert block.init == "passthrough" and block.cr == 0.8 and block.t == 0.4
    expected = 0.5 * (suppress_discriminative(x, 0.8) + suppress_irrelevant(x, 0.4))
    torch.testing.assert_close(block(x), expected)
    random_block = DualSuppressionBlock(spatial_dims, 5, init="random")
    assert not torch.allclose(random_block(x), expected, atol=1e-3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_ablations_replace_one_branch_by_the_features_or_drop_the_enhancement(spatial_dims):
    """The ablations: one suppression only (the other branch's place taken by the clamped F), and branch 1
    without its enhancement; with random weights the whole forward is checked, not only the init."""
    torch.manual_seed(6)
    c = 5
    x = torch.randn(2, c, *([6] * spatial_dims))
    clamped = x.clamp_min(0)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d

    def by_hand(block, d, s):
        fused = torch.cat([d, s], dim=1)
        w_star = torch.sigmoid(block.fc2(F.relu(block.fc1(fused.flatten(2).amax(dim=2)))))
        weighted = fused * w_star.reshape(2, 2 * c, *([1] * spatial_dims))
        return conv(weighted, block.conv.weight, block.conv.bias)

    d, s = suppress_discriminative(x, 0.8), suppress_irrelevant(x, 0.4)
    for branches, pair in (("discriminative", (d, clamped)), ("irrelevant", (clamped, s)), ("both", (d, s))):
        block = DualSuppressionBlock(spatial_dims, c, init="random", branches=branches)
        torch.testing.assert_close(block(x), by_hand(block, *pair))
    # at the pass-through init the one-branch blocks blend that branch evenly with F
    block = DualSuppressionBlock(spatial_dims, c, branches="discriminative")
    torch.testing.assert_close(block(x), 0.5 * (d + clamped))
    # without the enhancement branch 1 keeps F below cr * m_c, unchanged
    m = clamped.flatten(2).amax(2).reshape(2, c, *([1] * spatial_dims))
    plain = suppress_discriminative(x, 0.8, g="identity")
    torch.testing.assert_close(plain, torch.where(clamped < 0.8 * m, clamped, torch.zeros_like(x)))
    assert (suppress_discriminative(x, 0.8)[plain > 0] > plain[plain > 0]).all()  # exp enhances those
    block = DualSuppressionBlock(spatial_dims, c, g="identity")
    torch.testing.assert_close(block(x), 0.5 * (plain + s))
    assert "branches='irrelevant'" in repr(DualSuppressionBlock(2, c, branches="irrelevant"))
    with pytest.raises(ValueError, match="branches must be one of"):
        DualSuppressionBlock(2, c, branches="neither")


def test_gradients_reach_every_parameter():
    torch.manual_seed(5)
    x = torch.rand(2, 4, 6, 6, requires_grad=True)
    block = DualSuppressionBlock(2, 4, init="random")
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0
    # passthrough: fc2.weight = 0 blocks fc1's gradient at step 0 only; one SGD step later it flows
    block = DualSuppressionBlock(2, 4)
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        block(x).square().sum().backward()
        opt.step()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_argument_validation():
    for kwargs, word in [
        ({"cr": 0.0}, "cr"),
        ({"cr": 1.0}, "cr"),
        ({"t": 1.5}, "t"),
        ({"t": -0.1}, "t"),
        ({"init": "zeros"}, "init"),
        ({"g": "log"}, "g"),
        ({"reduction_channels": 0}, "reduction_channels"),
    ]:
        with pytest.raises(ValueError, match=word):
            DualSuppressionBlock(2, 4, **kwargs)
    with pytest.raises(ValueError, match="spatial_dims"):
        DualSuppressionBlock(1, 4)
    with pytest.raises(ValueError, match="in_channels"):
        DualSuppressionBlock(2, 0)
    block = DualSuppressionBlock(2, 4)
    with pytest.raises(ValueError, match="spatial dims"):
        block(torch.rand(1, 4, 5, 5, 5))
    with pytest.raises(ValueError, match="in_channels=4"):
        block(torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match="cr"):
        suppress_discriminative(torch.rand(1, 1, 3, 3), cr=2.0)
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        suppress_irrelevant(torch.rand(3, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        suppress_irrelevant([[1.0]])


def test_low_precision():
    torch.manual_seed(6)
    x = torch.rand(2, 8, 7, 7) * 3
    block = DualSuppressionBlock(2, 8, init="random")
    ref = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    # fp16 near its range limit and tiny (subnormal) channels: the ratio form keeps exp/tanh finite
    big = (torch.rand(1, 2, 6, 6) * 6.0e4).half()
    big[0, 1] *= 1e-4
    d = suppress_discriminative(big)
    assert torch.isfinite(d).all()
    tiny = (torch.rand(1, 1, 6, 6) * 1e-6).half()  # subnormal fp16 channel max
    assert tiny.amax() > 0 and torch.isfinite(suppress_discriminative(tiny)).all()
    low = (tiny > 0) & (tiny < 0.5 * tiny.amax())
    assert (suppress_discriminative(tiny)[low] >= tiny[low]).all()  # still enhances, no flush to zero
    torch.testing.assert_close(d.float(), suppress_discriminative(big.float()), atol=64.0, rtol=2e-3)


def test_torchscript_onnx_and_compile():
    torch.manual_seed(7)
    block = DualSuppressionBlock(2, 4, init="random").eval()
    x = torch.rand(2, 4, 6, 5)
    ref = block(x)
    torch.testing.assert_close(torch.jit.script(block)(x), ref)
    torch.testing.assert_close(torch.compile(block, backend="aot_eager")(x), ref)

    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    buf = io.BytesIO()
    torch.onnx.export(block, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    (out,) = ReferenceEvaluator(model).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-5, rtol=1e-4)


def test_registry():
    assert get_plugin("dual_suppression") is DualSuppressionBlock
    assert {"dual_suppression", "adl"} <= set(available_plugins())
    with pytest.raises(KeyError, match="adl, dual_suppression"):
        get_plugin("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_plugin("dual_suppression", DualSuppressionBlock)
    try:
        register_plugin("_test_identity", lambda spatial_dims, in_channels: nn.Identity())
        assert isinstance(get_plugin("_test_identity")(2, 3), nn.Identity)
        register_plugin("_test_lazy", "monai_wsol.networks.blocks.dual_suppression:DualSuppressionBlock")
        assert get_plugin("_test_lazy") is DualSuppressionBlock
        register_plugin("_test_broken", "monai_wsol.no_such_module:Thing")
        with pytest.raises(ImportError, match="_test_broken"):
            get_plugin("_test_broken")
    finally:
        for name in ("_test_identity", "_test_lazy", "_test_broken"):
            registry_module._REGISTRY.pop(name, None)
    adl = get_plugin("adl")(2, 4, drop_rate=0.5)  # resolved lazily from monai_wsol.networks.blocks.adl
    assert type(adl).__name__ == "ADL" and adl.drop_rate == 0.5
    block = get_plugin("dual_suppression")(3, 4, cr=0.7, t=0.2)
    assert (block.spatial_dims, block.in_channels, block.cr, block.t) == (3, 4, 0.7, 0.2)
