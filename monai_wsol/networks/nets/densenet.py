"""MONAI's DenseNet121 as a localizing classifier (2D and 3D), with plug-ins after named dense blocks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.nets import DenseNet121

from monai_wsol.networks.nets.cam_classifier import CAMClassifier

__all__ = ["CAMDenseNet121", "DENSENET_PRESETS", "densenet_presets"]

#: Presets of DenseNet121: one block after dense block 4 (the last stage, as VGG16's conv5_3), two after dense
#: blocks 3 and 4 (the last two stages, as VGG16's conv4_3 and conv5_3). With another ``block_config`` the
#: presets mean the same relative to its last dense block (:func:`densenet_presets`).
DENSENET_PRESETS: dict[str, tuple[str, ...]] = {
    "one": ("denseblock4",),
    "two": ("denseblock3", "denseblock4"),
}


def densenet_presets(num_blocks: int) -> dict[str, tuple[str, ...]]:
    """Feature-layer presets for a DenseNet of ``num_blocks`` dense blocks.

    ``"one"``: after the last dense block; ``"two"``: after the last two.
    """
    last = [f"denseblock{i}" for i in range(max(1, num_blocks - 1), num_blocks + 1)]
    return {"one": (last[-1],), "two": tuple(last)}


class CAMDenseNet121(CAMClassifier):
    """MONAI ``DenseNet121`` -> global average pooling -> ``Linear``, with CAM in the graph.

    ``backbone`` is MONAI's ``DenseNet121.features`` with its entry names kept (``conv0`` ... ``denseblock4``,
    ``norm5``) plus a parameter-free ``relu5`` (MONAI applies that ReLU in its head), so :meth:`features` is
    the final norm + ReLU map; ``classifier`` is MONAI's ``class_layers.out``. Shapes: (B, in_channels,
    *spatial) -> logits (B, K); :meth:`features` -> (B, 1024, *spatial / stride).

    Plug-in positions ``"denseblock1"`` ... ``"denseblock4"`` mean "after dense block N and the BN + ReLU that
    follows it", where activations are non-negative as docs/method.md's block assumes: for N < 4 the plug-in
    becomes the entry ``plugin_denseblockN`` of ``transitionN`` between its ``relu`` and its 1x1 ``conv``; for
    N = 4 it is the last entry of ``backbone`` (after ``relu5``), so it feeds the pooling and the CAM is taken
    on its output.

    Feature stride: 32 by default (a 224x224 image gives 7x7, a 96^3 volume 3x3x3). ``low_stride=True``
        replaces
    the 2x2 average pools of ``transition2`` and ``transition3`` with identities (entry names kept, no
    parameter
    changes, so checkpoints still load): stride 8, i.e. 28x28 at 224x224 and 12x12x12 at 96^3. The stem
        max-pool
    is kept on purpose: removing it instead runs dense block 1 (the costliest stage at full resolution) at 8x
        the
    voxels, while removing the late pools only enlarges the cheap late stages; both give stride 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes K.
        plugin: a plug-in name of ``monai_wsol.networks.blocks.registry`` or None (plain CAM baseline).
        positions: ``"one"``, ``"two"`` (see :data:`DENSENET_PRESETS`; relative to the last dense block with
            another ``block_config``) or position name(s) ``"denseblock1"`` ...
            ``"denseblock4"``.
        plugin_kwargs: keyword arguments of the plug-in.
        low_stride: see above; default (None) is True in 3D and False in 2D.
        pretrained: ImageNet weights through MONAI (2D only; downloads them; MONAI skips tensors whose shape
            differs, so with ``in_channels != 3`` the stem conv and with ``out_channels != 1000`` the
            classifier stay freshly initialised).
        kwargs: further arguments of ``monai.networks.nets.DenseNet121`` (``init_features``, ``growth_rate``,
            ``block_config``, ``dropout_prob``, ``act``, ``norm``, ...).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        plugin: str | None = None,
        positions: str | Sequence[str] = "two",
        plugin_kwargs: Mapping[str, Any] | None = None,
        low_stride: bool | None = None,
        pretrained: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels)
        base = DenseNet121(spatial_dims, in_channels, out_channels, pretrained=pretrained, **kwargs)
        layers = OrderedDict(base.features.named_children())
        # MONAI's class_layers.relu, moved into the backbone so that features() ends with it (not in-place,
        # so a hook on it -- Grad-CAM -- sees an intact output).
        layers["relu5"] = nn.ReLU(inplace=False)
        self.backbone = nn.Sequential(layers)
        self.classifier: nn.Linear = base.class_layers.out
        self.low_stride = bool(spatial_dims == 3 if low_stride is None else low_stride)

        transitions = [name for name in layers if name.startswith("transition")]
        if self.low_stride:
            for name in transitions[-2:]:
                layers[name].pool = nn.Identity()
        self.feature_stride = 2 ** (
            2 + len(transitions) - (min(2, len(transitions)) if self.low_stride else 0)
        )

        anchors: dict[str, tuple[str, int]] = {}
        for name in transitions:
            block = "denseblock" + name[len("transition") :]
            anchors[block] = (f"backbone.{name}.relu", layers[name].conv.in_channels)
        anchors[f"denseblock{len(transitions) + 1}"] = ("backbone.relu5", self.classifier.in_features)
        presets = densenet_presets(len(transitions) + 1)
        self._insert_plugins(plugin, positions, plugin_kwargs, anchors, presets)

    @staticmethod
    def convert_monai_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename a ``monai.networks.nets.DenseNet121`` checkpoint's keys to this class's.

        ``features.*`` -> ``backbone.*`` and ``class_layers.out.*`` -> ``classifier.*``; the result loads with
        :func:`~monai_wsol.networks.nets.load_plain_state_dict`.
        """
        out = {}
        for key, value in state_dict.items():
            if key.startswith("features."):
                out["backbone." + key[len("features.") :]] = value
            elif key.startswith("class_layers.out."):
                out["classifier." + key[len("class_layers.out.") :]] = value
            else:
                raise KeyError(f"unexpected key {key!r} in a MONAI DenseNet121 state dict.")
        return out
