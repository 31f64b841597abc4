"""VGG16 in the GAP form of the WSOL protocol (Choe et al., CVPR 2020), with plug-ins at named conv layers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from monai_wsol.networks.nets.cam_classifier import CAMClassifier

__all__ = ["CAMVGG16", "VGG16_POSITIONS", "VGG16_PRESETS"]

# torchvision's VGG16 stages as (width, convs); a 2x2 max-pool follows every stage but the last (the WSOL GAP
# form drops torchvision's fifth pool): stride 16, a 224x224 image gives a 14x14 map.
_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
_CONV_NAMES = tuple(f"conv{s}_{i}" for s, (_, n) in enumerate(_STAGES, start=1) for i in range(1, n + 1))

#: Valid plug-in positions: after a conv layer's ReLU (conv6 is the WSOL head conv, 512 -> 1024).
VGG16_POSITIONS: tuple[str, ...] = (*_CONV_NAMES, "conv6")
#: Placements for one and two blocks (the project's choice; the patent publication does not name the layers):
#: one block after conv5_3, two blocks after conv4_3 and conv5_3.
VGG16_PRESETS: dict[str, tuple[str, ...]] = {"one": ("conv5_3",), "two": ("conv4_3", "conv5_3")}


class CAMVGG16(CAMClassifier):
    """VGG16-GAP classifier with CAM in the graph (2D only).

    ``backbone``: torchvision's ``vgg16().features`` layers 0-29 with the same entry names ("0" ... "29", so
    torchvision weights load by name), i.e. without the last max-pool, then ``conv6`` (3x3, 512 -> 1024) and
    ``relu6``; then global average pooling and ``classifier`` ``Linear(1024, K)``. Feature stride 16.
    Shapes: (B, in_channels, H, W) -> logits (B, K); :meth:`features` -> (B, 1024, H/16, W/16).

    Args:
        in_channels: input channels; 1 gives a grayscale stem (the pretrained RGB filters are summed).
        out_channels: number of classes K.
        plugin: a plug-in name of ``monai_wsol.networks.blocks.registry`` (``"dual_suppression"``, ``"adl"``),
            or None for the plain CAM baseline.
        positions: ``"one"`` (after conv5_3), ``"two"`` (after conv4_3 and conv5_3), or position name(s) from
            :data:`VGG16_POSITIONS` (each means "after that conv's ReLU").
        plugin_kwargs: keyword arguments of the plug-in (e.g. ``{"cr": 0.8, "t": 0.4}``).
        pretrained: load torchvision's ImageNet VGG16 conv weights (downloads them; needs torchvision). A user
            feature: conv6 and the classifier stay freshly initialised.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1000,
        plugin: str | None = None,
        positions: str | Sequence[str] = "two",
        plugin_kwargs: Mapping[str, Any] | None = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__(spatial_dims=2, in_channels=in_channels)
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}.")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        anchors: dict[str, tuple[str, int]] = {}
        channels, names = in_channels, iter(_CONV_NAMES)
        for stage, (width, n_convs) in enumerate(_STAGES, start=1):
            for _ in range(n_convs):
                layers[str(len(layers))] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
                # Not in-place (torchvision's are): a hook on any conv (Grad-CAM baselines) sees an intact
                # output.
                layers[str(len(layers))] = nn.ReLU(inplace=False)
                anchors[next(names)] = (f"backbone.{len(layers) - 1}", width)
                channels = width
            if stage < len(_STAGES):
                layers[str(len(layers))] = nn.MaxPool2d(kernel_size=2, stride=2)
        layers["conv6"] = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        layers["relu6"] = nn.ReLU(inplace=False)
        anchors["conv6"] = ("backbone.relu6", 1024)
        self.backbone = nn.Sequential(layers)
        self.classifier = nn.Linear(1024, out_channels)
        self._init_weights()
        if pretrained:
            self._load_torchvision_weights()
        self._insert_plugins(plugin, positions, plugin_kwargs, anchors, VGG16_PRESETS)

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation (the WSOL reference code uses the same for conv6).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def _load_torchvision_weights(self) -> None:
        try:
            from torchvision.models import VGG16_Weights, vgg16
        except ImportError as e:  # torchvision is optional: only this feature needs it
            raise ImportError("CAMVGG16(pretrained=True) needs torchvision (pip install torchvision).") from e
        state = vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features.state_dict()
        own = self.backbone.state_dict()
        first = state["0.weight"]  # (64, 3, 3, 3)
        if self.in_channels != 3:
            # Spread the RGB filters over the new channels, keeping the response to a gray image (sum for 1
            # ch).
            state["0.weight"] = (
                first.mean(1, keepdim=True).repeat(1, self.in_channels, 1, 1) * 3 / self.in_channels
            )
        self.backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
