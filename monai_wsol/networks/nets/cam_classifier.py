"""The interface every localizing classifier of ``monai_wsol`` implements (other modules code against it).

A :class:`CAMClassifier` is ``backbone`` (an ``nn.Sequential`` ending with the CAM feature layer) ->
global average pooling -> ``classifier`` (``nn.Linear(C, K)``). With that structure the class activation map
of class k (docs/method.md, "3. From the trained network to a class and a location") is
``CAM_k = sum_c w_k[c] F[c]``, which :meth:`CAMClassifier.forward_cam` computes in the same graph as the
logits: batched, on the input's device, with no hooks and no backward pass (``monai.visualize.CAM`` needs
hooks and per-sample indices; here the CAM is one batched matrix product).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_wsol.networks.blocks.registry import get_plugin
from monai_wsol.networks.nets.insertion import insert_after, resolve_positions

__all__ = ["CAMClassifier", "ClassIndex", "resolve_class_idx"]

ClassIndex = int | str | Sequence[int] | torch.Tensor | None


def resolve_class_idx(class_idx: ClassIndex, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``class_idx`` into a LongTensor (B, k) of class indices, on ``logits``' device.

    Args:
        class_idx: ``None`` -> the top-1 predicted class (k=1); an ``int`` -> that class for every sample
            (k=1); a LongTensor (B,) -> one class per sample (k=1); a LongTensor (B, k) -> k classes per
            sample; a list/tuple of k ints -> those k classes for every sample; ``"all"`` -> every class
            (k=K).
        logits: (B, K).
    """
    b, k = logits.shape
    if class_idx is None:
        return logits.argmax(dim=1, keepdim=True)
    if isinstance(class_idx, str):
        if class_idx != "all":
            raise ValueError(f"class_idx string must be 'all', got {class_idx!r}.")
        return torch.arange(k, device=logits.device).expand(b, k)
    if isinstance(class_idx, bool):
        raise TypeError("class_idx must be None, an int, 'all' or an integer tensor, got a bool.")
    if isinstance(class_idx, int):
        idx = torch.full((b, 1), class_idx, dtype=torch.long, device=logits.device)
    elif isinstance(class_idx, (list, tuple)):
        if not class_idx or not all(isinstance(i, int) and not isinstance(i, bool) for i in class_idx):
            raise TypeError(f"class_idx list must hold at least one int, got {class_idx!r}.")
        idx = torch.tensor(class_idx, dtype=torch.long, device=logits.device).expand(b, len(class_idx))
    elif isinstance(class_idx, torch.Tensor):
        if class_idx.dtype.is_floating_point or class_idx.dtype.is_complex or class_idx.dtype == torch.bool:
            raise TypeError(f"class_idx tensor must have an integer dtype, got {class_idx.dtype}.")
        if class_idx.ndim == 1 and class_idx.shape[0] == b:
            idx = class_idx[:, None]
        elif class_idx.ndim == 2 and class_idx.shape[0] == b and class_idx.shape[1] >= 1:
            idx = class_idx
        else:
            raise ValueError(
                f"class_idx tensor must have shape ({b},) or ({b}, k), got {tuple(class_idx.shape)}."
            )
        idx = idx.to(device=logits.device, dtype=torch.long)
    else:
        raise TypeError(
            "class_idx must be None, an int, a list of ints, 'all' or an integer tensor, "
            f"got {type(class_idx).__name__}."
        )
    if bool(((idx < 0) | (idx >= k)).any()):
        raise ValueError(
            f"class_idx out of range: every index must be in [0, {k - 1}], got {idx.flatten().tolist()}."
        )
    return idx


class CAMClassifier(nn.Module):
    """Base class: ``backbone`` -> global average pooling -> ``classifier``, with CAM in the graph.

    Subclasses build ``self.backbone`` (an ``nn.Sequential`` whose output is the CAM feature map), set
    ``self.classifier`` (``nn.Linear(C, K)``) and call :meth:`_insert_plugins` with their position table.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        classifier: ``nn.Linear(C, K)`` applied after global average pooling of :meth:`features`.
        cam_layer_name: dotted name of the module whose output is :meth:`features` (for
            ``monai.visualize.GradCAM(nn_module=net, target_layers=net.cam_layer_name)``).
        plugin_names: dotted names of the inserted plug-ins (empty for the plain CAM baseline).
        positions: the position names the plug-ins were inserted at.
    """

    classifier: nn.Linear
    backbone: nn.Sequential

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.plugin_names: tuple[str, ...] = ()
        self.positions: tuple[str, ...] = ()

    @property
    def cam_layer_name(self) -> str:
        """Dotted name of the last module of ``backbone`` (its output is the CAM feature map)."""
        return f"backbone.{next(reversed(self.backbone._modules))}"

    def _insert_plugins(
        self,
        plugin: str | None,
        positions: str | Sequence[str],
        plugin_kwargs: Mapping[str, Any] | None,
        anchors: Mapping[str, tuple[str, int]],
        presets: Mapping[str, Sequence[str]],
    ) -> None:
        """Insert ``plugin`` after each anchor of ``positions``; ``plugin=None`` keeps the plain network.

        Args:
            plugin: a registry name (:func:`~monai_wsol.networks.blocks.registry.get_plugin`) or None.
            positions: preset name, position name or list of position names.
            plugin_kwargs: extra keyword arguments of the plug-in factory (e.g. ``{"cr": 0.8, "t": 0.4}``).
            anchors: position name -> (dotted path of the layer to follow, its channels), in network order.
            presets: preset name -> position names.
        """
        names = resolve_positions(positions, presets, list(anchors))  # checked even for the plain net
        if plugin is None:
            return
        factory = get_plugin(plugin)
        kwargs = dict(plugin_kwargs or {})
        inserted = []
        for name in names:
            anchor, channels = anchors[name]
            inserted.append(
                insert_after(self, anchor, f"plugin_{name}", factory(self.spatial_dims, channels, **kwargs))
            )
        self.plugin_names = tuple(inserted)
        self.positions = names

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input (B, {self.in_channels}, *spatial) "
                f"with {self.spatial_dims} spatial dims, got shape {tuple(x.shape)}."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The CAM feature map: (B, in_channels, *spatial) -> (B, C, *feature_spatial)."""
        self._check_input(x)
        return self.backbone(x)

    def pool_and_classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Global average pooling + ``classifier``: (B, C, *s) -> logits (B, K)."""
        return self.classifier(feats.flatten(2).mean(dim=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, *spatial) -> logits (B, K)."""
        return self.pool_and_classify(self.features(x))

    def cams_from_features(self, feats: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """Raw CAMs ``sum_c w_k[c] F[c]`` for LongTensor ``class_idx`` (B, k): (B, C, *s) -> (B, k, *s)."""
        weights = self.classifier.weight[class_idx]  # (B, k, C)
        b, c = feats.shape[:2]
        cams = torch.bmm(weights.to(feats.dtype), feats.reshape(b, c, -1))  # (B, k, prod(s))
        return cams.reshape(b, class_idx.shape[1], *feats.shape[2:])

    def forward_cam(
        self, x: torch.Tensor, class_idx: ClassIndex = None, upsample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and raw (not normalised) class activation maps in one forward pass.

        Args:
            x: (B, in_channels, *spatial).
            class_idx: which classes (see :func:`resolve_class_idx`): None (top-1 predicted), an int, a
                LongTensor (B,) or (B, k), a list of ints (the same classes for every sample), or ``"all"``.
            upsample: True -> CAMs resized to ``x``'s spatial size (bilinear in 2D, trilinear in 3D,
                ``align_corners=False``); False -> CAMs at the feature map's resolution.

        Returns:
            ``(logits (B, K), cams (B, k, *spatial))``.
        """
        feats = self.features(x)
        logits = self.pool_and_classify(feats)
        cams = self.cams_from_features(feats, resolve_class_idx(class_idx, logits))
        if upsample and tuple(cams.shape[2:]) != tuple(x.shape[2:]):
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            cams = F.interpolate(cams, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        return logits, cams
