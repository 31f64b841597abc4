"""Attention-based Dropout Layer (ADL), Choe & Shim, CVPR 2019 (https://arxiv.org/abs/1908.10028).

A parameter-free plug-in inserted after a conv layer of a CAM classifier. In training it either hides the most
discriminative region of the feature map (drop mask) or highlights it (importance map), picked at random once
per forward pass; at inference it is the identity. Works for any number of spatial dimensions.

Reference implementation checked: ``clovaai/wsolevaluation`` ``wsol/method/adl.py`` (a port of
``junsukchoe/ADL``). Differences from it (none change the maths):

- the reference blends both maps with a 0/1 weight ``floor(u + drop_rate)``; here the drop mask is picked when
  ``u < drop_rate`` and only that map is computed -- the same probability and the same gradients. ``u`` comes
  from the global torch generator (seeded by ``monai.utils.set_determinism`` / ``torch.manual_seed``), as
  there;
- the default ``gamma`` is 0.9 (the value the project's specification sets, docs/baselines.md) where
  wsolevaluation defaults ``adl_drop_threshold`` to 0.8;
- ``spatial_dims`` and ``in_channels`` are accepted (and checked) so that ADL is built like every other
  plug-in of ``monai_wsol.networks.blocks.registry``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ADL"]


class ADL(nn.Module):
    """Attention-based Dropout Layer.

    With ``x`` of shape (B, C, *spatial) and ``a = mean_c x`` of shape (B, 1, *spatial):

    - importance map ``sigmoid(a)``;
    - drop mask ``1[a < gamma * max_spatial(a)]``, the max taken per sample;
    - one uniform draw ``u`` per forward pass: the drop mask is used if ``u < drop_rate``, else the importance
      map; the whole batch shares the draw (as in the reference code);
    - output ``x * map`` (the map broadcast over channels), same shape as ``x``.

    In ``eval()`` mode the input is returned unchanged.

    Args:
        spatial_dims: number of spatial dimensions of the input (1, 2 or 3); only checked.
        in_channels: number of input channels; only checked (ADL has no parameters).
        drop_rate: probability of using the drop mask in a training step, in [0, 1]. Default 0.75.
        gamma: drop threshold as a fraction of the per-sample attention maximum, in [0, 1]. Default 0.9.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, drop_rate: float = 0.75, gamma: float = 0.9
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"ADL: spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if int(in_channels) < 1:
            raise ValueError(f"ADL: in_channels must be >= 1, got {in_channels}.")
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"ADL: drop_rate must be in [0, 1], got {drop_rate}.")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"ADL: gamma must be in [0, 1], got {gamma}.")
        self.spatial_dims = spatial_dims
        self.in_channels = int(in_channels)
        self.drop_rate = float(drop_rate)
        self.gamma = float(gamma)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-mean self-attention map: (B, C, *spatial) -> (B, 1, *spatial)."""
        return x.mean(dim=1, keepdim=True)

    def drop_mask(self, attention: torch.Tensor) -> torch.Tensor:
        """Binary mask (B, 1, *spatial): 0 where the attention reaches ``gamma`` times its per-sample max."""
        b = attention.shape[0]
        max_val = attention.reshape(b, -1).amax(dim=1).reshape(b, *([1] * (attention.ndim - 1)))
        return (attention < self.gamma * max_val).to(attention.dtype)

    def importance_map(self, attention: torch.Tensor) -> torch.Tensor:
        """Importance map (B, 1, *spatial): ``sigmoid(attention)``."""
        return torch.sigmoid(attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, *spatial) -> (B, C, *spatial)."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"ADL: expected input of shape (B, C, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(x.shape)}."
            )
        if not self.training:
            return x
        attention = self.attention(x)
        # one draw for the whole batch and step, as in the reference implementation
        use_drop = bool(torch.rand((), device=x.device) < self.drop_rate)
        selected = self.drop_mask(attention) if use_drop else self.importance_map(attention)
        return x * selected

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, drop_rate={self.drop_rate}, gamma={self.gamma}"
