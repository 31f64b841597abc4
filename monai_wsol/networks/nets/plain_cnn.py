"""A compact plain CNN (conv-norm-ReLU stages) as a localizing classifier, with global average or top-k
pooling of the class maps (2D and 3D)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool

from monai_wsol.networks.nets.cam_classifier import CAMClassifier

__all__ = ["CAMPlainCNN", "POOLINGS"]

POOLINGS: tuple[str, ...] = ("avg", "topk")


class CAMPlainCNN(CAMClassifier):
    """Stages of 3x3 conv -> norm -> ReLU with a 2x max-pool between stages -> class maps -> pooling.

    ``backbone`` holds the convolutions ``conv1`` ... ``convN`` (each a MONAI ``Convolution``: conv, batch
    norm, ReLU) and the poolings ``pool1`` ... between stages; its output (the last conv's ReLU, non-negative
    as docs/method.md's block assumes) is the CAM feature map. ``classifier`` is ``nn.Linear(C, K)``, so the
    class activation map is ``CAM_k = sum_c w_k[c] F[c]`` as for every :class:`CAMClassifier`.

    Pooling (how the logits are made from the class maps):

    - ``"avg"``: global average pooling, ``logit_k = mean(CAM_k) + b_k`` (the original CAM);
    - ``"topk"``: ``logit_k = mean of the top ceil(topk_fraction * n) values of CAM_k + b_k`` over the n
      feature locations. The evidence of a small lesion is not diluted by the many locations without it
      (the global max pooling of Oquab et al. / WILDCAT's top-k), which is what lets a small network learn
      a lesion that covers a few percent of the image; the CAM stays exactly the map the logit pools.

    Shapes: (B, in_channels, *spatial) -> logits (B, K); :meth:`features` -> (B, channels[-1], *spatial /
    stride), stride ``2 ** num_pools``; with the default ``stages=(2, 2, 3)`` that is 7 convolutions and
    stride 4 (a 24 x 24 CAM at 96 x 96).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes K.
        channels: output channels of each stage.
        stages: number of convolutions in each stage (same length as ``channels``).
        num_pools: how many of the stage transitions (the first ones) halve the resolution; default (None):
            all ``len(stages) - 1``. Fewer pools give a finer CAM (stride ``2 ** num_pools``) at a higher
            cost.
        pooling: ``"avg"`` or ``"topk"`` (see above).
        topk_fraction: the share of feature locations the top-k pooling averages, in (0, 1].
        plugin: a plug-in name of ``monai_wsol.networks.blocks.registry`` or None (plain CAM baseline).
        positions: ``"one"`` (after the last convolution), ``"two"`` (after the last two) or position
            name(s) ``"conv1"`` ... ``"convN"``.
        plugin_kwargs: keyword arguments of the plug-in.
        dropout: dropout probability of every convolution.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        stages: Sequence[int] = (2, 2, 3),
        num_pools: int | None = None,
        pooling: str = "topk",
        topk_fraction: float = 0.05,
        plugin: str | None = None,
        positions: str | Sequence[str] = "two",
        plugin_kwargs: Mapping[str, Any] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels)
        if len(channels) != len(stages) or not channels:
            raise ValueError(
                f"channels and stages must have the same non-zero length, got {list(channels)} and "
                f"{list(stages)}."
            )
        if any(int(n) < 1 for n in stages) or any(int(c) < 1 for c in channels):
            raise ValueError(f"stages and channels must be positive, got {list(stages)}, {list(channels)}.")
        num_pools = len(stages) - 1 if num_pools is None else int(num_pools)
        if not 0 <= num_pools <= len(stages) - 1:
            raise ValueError(f"num_pools must be in [0, {len(stages) - 1}], got {num_pools}.")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid poolings: {', '.join(POOLINGS)}.")
        if not 0.0 < float(topk_fraction) <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction!r}.")
        self.pooling = pooling
        self.topk_fraction = float(topk_fraction)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        anchors: dict[str, tuple[str, int]] = {}
        pool_type = Pool[Pool.MAX, spatial_dims]
        prev, index = in_channels, 0
        stage_ends: list[str] = []
        for stage, (n_convs, ch) in enumerate(zip(stages, channels, strict=True)):
            if 0 < stage <= num_pools:
                layers[f"pool{stage}"] = pool_type(kernel_size=2, stride=2)
            for _ in range(int(n_convs)):
                index += 1
                layers[f"conv{index}"] = Convolution(
                    spatial_dims, prev, int(ch), kernel_size=3, act="relu", norm="batch", dropout=dropout
                )
                anchors[f"conv{index}"] = (f"backbone.conv{index}", int(ch))
                prev = int(ch)
            stage_ends.append(f"backbone.conv{index}")
        self.backbone = nn.Sequential(layers)
        self.classifier = nn.Linear(prev, out_channels)
        self.feature_stride = 2**num_pools
        #: the last convolution of each stage, finest first: the layers a multi-layer map (LayerCAM) fuses
        self.stage_layer_names: tuple[str, ...] = tuple(stage_ends)
        names = list(anchors)
        presets = {"one": (names[-1],), "two": tuple(names[-2:])}
        self._insert_plugins(plugin, positions, plugin_kwargs, anchors, presets)

    def pool_and_classify(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, *s) -> logits (B, K): average or top-k pooling of the class maps, plus the bias."""
        if self.pooling == "avg":
            return super().pool_and_classify(feats)
        b, c = feats.shape[:2]
        flat = feats.reshape(b, c, -1)
        cams = torch.einsum("kc,bcn->bkn", self.classifier.weight.to(flat.dtype), flat)  # (B, K, n)
        k = max(1, math.ceil(self.topk_fraction * flat.shape[2]))
        pooled = cams.topk(k, dim=2).values.mean(dim=2)
        return pooled + self.classifier.bias.to(pooled.dtype)
