"""The dual-suppression (SFS: suppress, fuse, select) block of the project's specification, docs/method.md.

This module reads side by side with docs/method.md, section "2. The SFS block". Comments quote its steps:

- "clamp F at 0 before the branches" and ``m_c = max over (i,j) of F[c,i,j]`` (per sample, per channel, over
  ALL spatial positions, so 2D and 3D alike);
- Branch 1 (``suppress_discriminative``): ``D = g(F)`` where ``F < cr * m_c``, else 0; ``g`` concave with
  ``g(0) = 0``, ``g(x) >= x`` below ``cr * m_c`` and ``g(cr * m_c) = cr * m_c``;
- Branch 2 (``suppress_irrelevant``): ``S = F`` where ``F >= t * m_c``, else 0;
- Fusion: ``M = concat(D, S)``;
- Feature selection steps 1-6: global MAX pool, FC(2C->C)+ReLU, FC(C->2C), sigmoid, channel weighting,
  1x1 conv 2C->C.

Numerics: the enhancement is computed on the ratio ``r = F / m_c`` (in [0, 1] since 0 <= F <= m_c), never on
``F`` itself, so ``exp``/``tanh`` see an argument in ``[-alpha, alpha]`` whatever the feature scale and dtype
(fp16 and bf16 included); ``m_c <= 0`` (a dead, all-zero channel after the clamp) is replaced by 1 in the
division, so there is no 0/0 and no epsilon that would bias small activations, and its outputs are 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

__all__ = [
    "BRANCHES",
    "G_FAMILIES",
    "DualSuppressionBlock",
    "g_alpha",
    "suppress_discriminative",
    "suppress_irrelevant",
]

#: Families offered for the enhancement map ``g(x) = m * h(alpha * x / m)``; ``h`` is concave, increasing,
#: ``h(0) = 0``, and ``alpha`` is fixed by ``cr`` so that ``h(alpha * cr) = cr`` (the intersection with the
#: identity lands exactly at ``cr * m``). "exp" is docs/method.md's reference choice and the default;
#: "identity" (``g(x) = x``, no enhancement) is the ablation "without the enhancement".
G_FAMILIES = ("exp", "tanh", "identity")
#: Which suppression branches the block computes: both (the method), or one of them for the ablation, the
#: other branch then passing the clamped features unchanged (fusion, selection and the 1x1 conv stay as they
#: are).
BRANCHES = ("both", "discriminative", "irrelevant")


def g_alpha(cr: float, g: str = "exp") -> float:
    """The curvature ``alpha`` fixed by ``cr`` (docs/method.md, section 2.1: "alpha is fixed by cr").

    - ``"exp"``: ``h(u) = 1 - exp(-u)``, ``alpha = -ln(1 - cr) / cr`` (the reference
      of docs/method.md; ~2.012 at cr=0.8);
    - ``"tanh"``: ``h(u) = tanh(u)``, ``alpha = atanh(cr) / cr`` (~1.373 at cr=0.8), a flatter alternative;
    - ``"identity"``: ``h(u) = u``, ``alpha = 1``: no enhancement (the ablation).
    """
    _check_fraction("cr", cr)
    if g == "exp":
        return -math.log1p(-cr) / cr
    if g == "tanh":
        return math.atanh(cr) / cr
    if g == "identity":
        return 1.0
    raise ValueError(f"g must be one of {G_FAMILIES}, got {g!r}.")


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number with 0 < {name} < 1, got {value!r}.")


def _check_features(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, *spatial), got {type(x).__name__}.")
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape (B, C, *spatial) (at least 3 dims), got {tuple(x.shape)}.")


def _channel_max(x: torch.Tensor) -> torch.Tensor:
    """``m_c``: per-sample, per-channel max over all spatial positions.

    Shapes: (B, C, *spatial) -> (B, C, 1, ..., 1).
    """
    dims = list(range(2, x.dim()))
    return x.amax(dim=dims, keepdim=True)


def _discriminative_from_max(
    x: torch.Tensor, m: torch.Tensor, cr: float, alpha: float, g: str
) -> torch.Tensor:
    """Branch 1 on already clamped ``x`` with its channel max ``m`` (TorchScript-friendly core)."""
    # x is clamped at 0, so m_c <= 0 only for an all-zero channel: divide by 1 there (no 0/0). Its D is 0
    # anyway, because x < cr * 0 is false ("Where m_c <= 0, D[c] = 0").
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    # 0 <= x <= m_c, so the ratio is in [0, 1] (IEEE division is monotone) in any dtype: exp/tanh see an
    # argument in [-alpha, 0] / [0, alpha] whatever the activation scale (fp16 included, subnormal m_c
    # included).
    ratio = x / safe_m
    if g == "exp":
        # g(x) = m (1 - exp(-alpha x / m)); not expm1, which the TorchScript ONNX exporter cannot export
        enhanced = (1.0 - torch.exp(ratio * -alpha)) * safe_m
    elif g == "tanh":
        enhanced = torch.tanh(ratio * alpha) * safe_m  # g(x) = m tanh(alpha x / m)
    else:
        enhanced = x  # "identity": suppression without enhancement
    return enhanced.masked_fill(x >= cr * m, 0.0)  # ">= cr * m_c -> 0": the most discriminative features go


def _irrelevant_from_max(x: torch.Tensor, m: torch.Tensor, t: float) -> torch.Tensor:
    """Branch 2 on already clamped ``x`` with its channel max ``m`` (TorchScript-friendly core)."""
    # all-zero channels (m_c = 0) stay 0: x = 0 is kept as 0
    return x.masked_fill(x < t * m, 0.0)


def suppress_discriminative(x: torch.Tensor, cr: float = 0.8, g: str = "exp") -> torch.Tensor:
    """Branch 1 of docs/method.md (section 2.1): suppress the most discriminative features, enhance the rest.

    ``x`` is clamped at 0, then with ``m_c`` the per-sample per-channel max over all spatial positions::

        D = g(x) = m_c * h(alpha * x / m_c)   where x <  cr * m_c
        D = 0                                  where x >= cr * m_c, and in channels with m_c <= 0

    Args:
        x: features (B, C, *spatial), any number of spatial dims.
        cr: first threshold as a fraction of ``m_c``, ``0 < cr < 1`` (docs/method.md default 0.8).
        g: enhancement family, one of :data:`G_FAMILIES` ("exp" is docs/method.md's reference); see
            :func:`g_alpha`.

    Returns:
        D, same shape and dtype as ``x``.
    """
    _check_features(x)
    alpha = g_alpha(cr, g)
    x = x.clamp_min(0)
    return _discriminative_from_max(x, _channel_max(x), float(cr), alpha, g)


def suppress_irrelevant(x: torch.Tensor, t: float = 0.4) -> torch.Tensor:
    """Branch 2 of docs/method.md (section 2.2): keep ``x`` where ``x >= t * m_c``, else 0 (``x`` clamped at 0
    first).

    Args:
        x: features (B, C, *spatial).
        t: second threshold as a fraction of ``m_c``, ``0 < t < 1`` (docs/method.md default 0.4).

    Returns:
        S, same shape and dtype as ``x``; channels with ``m_c <= 0`` are 0.
    """
    _check_features(x)
    _check_fraction("t", t)
    x = x.clamp_min(0)
    return _irrelevant_from_max(x, _channel_max(x), float(t))


class DualSuppressionBlock(nn.Module):
    """The SFS block: dual suppression, fusion, feature selection (docs/method.md, "2. The SFS block").

    Shapes: input ``F`` (B, C, *spatial) -> output ``F*`` (B, C, *spatial), so the backbone continues
        unchanged.

    Forward, step by step (docs/method.md numbering, sections 2.1-2.4)::

        F = clamp(F, 0); m_c = max_spatial F                    # "clamp F at 0 before the branches"
        D = suppress_discriminative(F, cr)                      # Branch 1, (B, C, *s)
        S = suppress_irrelevant(F, t)                           # Branch 2, (B, C, *s)
        M = concat(D, S)                                        # Fusion, (B, 2C, *s)
        W1 = global_max_pool(M)                                 # step 1, (B, 2C)
        W2 = relu(FC_2C->R(W1))                                 # step 2, R = reduction_channels (default C)
        W3 = FC_R->2C(W2)                                       # step 3
        W* = sigmoid(W3)                                        # step 4, in (0, 1)
        M_w = W* . M                                            # step 5, per channel
        F* = Conv1x1_2C->C(M_w)                                 # step 6 (1x1x1 in 3D)

    Initialisation (beyond the patent publication, docs/method.md "2.6 Initialisation"):

    - ``init="passthrough"`` (default): ``fc2.weight = 0`` and ``fc2.bias = 0`` so ``W* = sigmoid(0) = 0.5``
      for every channel at step 0, and the 1x1 conv weight is ``[I_C | I_C]`` with zero bias, so at step 0
      exactly ``F* = 0.5 * D + 0.5 * S`` -- an even blend of the two branches, channel by channel. With the
      default ``exp`` family (``g'(0) = alpha ~ 2`` at cr=0.8) this is ``~F`` for weak activations, ``>= F``
      in the middle band and ``F / 2`` at the peaks (``F >= cr * m_c``): the pretrained features keep their
      channel identity and scale instead of being scrambled by a random conv. ``fc1`` keeps PyTorch's default
      init; it receives no gradient on the very first step (``fc2.weight`` is 0, the zero-init-last-layer
      trick) and does from the first optimiser update on.
    - ``init="random"``: PyTorch/MONAI defaults for both FC layers and the 1x1 conv (the patent
      publication's block as written, for the ablation docs/method.md asks for).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C, the channels of the feature map the block is inserted after.
        cr: branch-1 threshold fraction, ``0 < cr < 1``. Default 0.8.
        t: branch-2 threshold fraction, ``0 < t < 1``. Default 0.4.
        reduction_channels: width R of the squeeze FC; default ``in_channels`` (docs/method.md: FC(2C->C)).
        init: ``"passthrough"`` or ``"random"`` (see above).
        g: enhancement family of branch 1, one of :data:`G_FAMILIES`. Default ``"exp"`` (docs/method.md's
            reference); ``"identity"`` ablates the enhancement.
        branches: ``"both"`` (default, the method), or ``"discriminative"`` / ``"irrelevant"`` to keep only
            that suppression for the ablation (:data:`BRANCHES`): the other branch's place in the fusion is
            taken by the clamped ``F`` itself, so the block's shape, selection and initialisation are those of
            the full block (``F* = 0.5 * D + 0.5 * F`` at step 0 for ``"discriminative"``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        cr: float = 0.8,
        t: float = 0.4,
        reduction_channels: int | None = None,
        init: str = "passthrough",
        g: str = "exp",
        branches: str = "both",
    ) -> None:
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        _check_fraction("cr", cr)
        _check_fraction("t", t)
        if reduction_channels is None:
            reduction_channels = in_channels
        if (
            isinstance(reduction_channels, bool)
            or not isinstance(reduction_channels, int)
            or reduction_channels < 1
        ):
            raise ValueError(
                f"reduction_channels must be a positive int or None, got {reduction_channels!r}."
            )
        if init not in ("passthrough", "random"):
            raise ValueError(f"init must be 'passthrough' or 'random', got {init!r}.")
        if branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {branches!r}.")
        self.branches = branches
        self.spatial_dims = int(spatial_dims)
        self.in_channels = in_channels
        self.cr = float(cr)
        self.t = float(t)
        self.g = g
        self.alpha = g_alpha(self.cr, g)  # validates g too
        self.init = init

        # Feature selection, steps 2-3 (an SE-style bottleneck on the 2C max-pooled channel descriptors).
        self.fc1 = nn.Linear(2 * in_channels, reduction_channels)
        self.fc2 = nn.Linear(reduction_channels, 2 * in_channels)
        # Step 6: the 1x1 (1x1x1 in 3D) conv that brings the 2C fused channels back to C.
        self.conv = Conv[Conv.CONV, self.spatial_dims](2 * in_channels, in_channels, kernel_size=1)
        if init == "passthrough":
            self.reset_passthrough()

    @torch.no_grad()
    def reset_passthrough(self) -> None:
        """Set the pass-through-biased init.

        ``W* = 0.5`` everywhere and ``F* = 0.5 * D + 0.5 * S`` at step 0.
        """
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        c = self.in_channels
        eye = torch.eye(c, dtype=self.conv.weight.dtype, device=self.conv.weight.device)
        weight = torch.cat([eye, eye], dim=1)  # (C, 2C): output channel c reads D_c and S_c
        self.conv.weight.copy_(weight.reshape(self.conv.weight.shape))
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, *spatial) with C == in_channels and spatial_dims spatial dims -> (B, C, *spatial)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"DualSuppressionBlock expects input (B, C, *spatial) with {self.spatial_dims} spatial dims, "
                f"got a tensor with {x.dim()} dims."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"DualSuppressionBlock was built for in_channels={self.in_channels}, "
                f"got {x.shape[1]} channels."
            )
        # "The block assumes non-negative activations ...; clamp F at 0 before the branches."
        x = x.clamp_min(0)
        m = _channel_max(x)  # m_c, per sample and per channel, over all spatial positions
        # Branch 1 and Branch 2 (an ablated branch passes F unchanged, see ``branches``)
        d = (
            _discriminative_from_max(x, m, self.cr, self.alpha, self.g)
            if self.branches != "irrelevant"
            else x
        )
        s = _irrelevant_from_max(x, m, self.t) if self.branches != "discriminative" else x
        fused = torch.cat([d, s], dim=1)  # Fusion: M = concat(D, S), (B, 2C, *spatial)
        w1 = _channel_max(fused)  # step 1: global MAX pooling, (B, 2C, 1, ..., 1)
        w2 = F.relu(self.fc1(w1.flatten(1)))  # step 2: FC(2C -> C) + ReLU
        w3 = self.fc2(w2)  # step 3: FC(C -> 2C)
        w_star = torch.sigmoid(w3)  # step 4: one weight in (0, 1) per channel of M
        weighted = fused * w_star.view_as(w1).to(fused.dtype)  # step 5: M_w[i] = W*[i] * M[i]
        return self.conv(weighted)  # step 6: F* = Conv1x1(2C -> C)(M_w)

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}, cr={self.cr}, t={self.t}, "
            f"g={self.g!r}, alpha={self.alpha:.4f}, init={self.init!r}"
            + ("" if self.branches == "both" else f", branches={self.branches!r}")
        )
