"""Adversarial Complementary Learning (ACoL), Zhang et al., CVPR 2018 (https://arxiv.org/abs/1804.06962).

Two classifier heads share a backbone's final feature map F (B, C, *s). Head A maps F to class maps (B, K,
*s); their global average gives logits A. The class map of the target class (the ground truth in training, the
prediction otherwise) is min-max normalised per sample, and F is erased (set to 0) where it is >= the erase
threshold. Head B sees the erased features, so it must find the object's *other* parts. Both heads are trained
with the classification loss (:func:`monai_wsol.losses.acol_loss` sums them). The localization map is the
element-wise **max** of the two heads' normalised class maps: the paper fuses them by the maximum at each
location, because the two maps are complementary (B is zero-ish exactly where A fired), so a sum would
double-count the overlap and a mean would halve regions seen by one head only.

Reference checked: ``clovaai/wsolevaluation`` (``wsol/method/acol.py``, ``VggAcol`` in ``wsol/vgg.py``): heads
conv3x3(C->1024)-ReLU-conv3x3(1024->1024)-ReLU-conv1x1(1024->K), erasure from head A's detached, min-max
normalised class map, ``>=`` threshold, CAM = max of the normalised maps, classification from head A.
Deviations: the hidden width is a parameter (default 512 instead of 1024, to keep a CPU benchmark affordable;
set 1024 to reproduce), and wsolevaluation's extra 3x3 average pooling of F before the heads is not applied.
Works in 2D and 3D (the heads use ``spatial_dims`` convolutions).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

from monai_wsol.extractors import normalize_maps, resolve_class_selection
from monai_wsol.losses import acol_loss  # its loss, exported with the net by monai_wsol.networks.nets
from monai_wsol.networks.nets.cam_classifier import ClassIndex, resolve_class_idx

__all__ = ["ACoLClassifier", "acol_loss", "class_map_head"]


def class_map_head(
    spatial_dims: int, in_channels: int, hidden_channels: int, num_classes: int
) -> nn.Sequential:
    """ACoL head conv3x3-ReLU-conv3x3-ReLU-conv1x1: (B, in_channels, *s) -> class maps (B, K, *s)."""
    conv = Conv[Conv.CONV, spatial_dims]
    return nn.Sequential(
        conv(in_channels, hidden_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        conv(hidden_channels, hidden_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        conv(hidden_channels, num_classes, kernel_size=1),
    )


def _select_class(maps: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, K, *s) maps, (B,) class indices -> (B, 1, *s)."""
    return maps[torch.arange(maps.shape[0], device=maps.device), idx].unsqueeze(1)


class ACoLClassifier(nn.Module):
    """ACoL on top of a CAM network's feature extractor.

    Args:
        backbone_net: a network with ``features(x) -> (B, C, *s)`` and a ``classifier`` ``nn.Linear(C, K)``
            (the nets of :mod:`monai_wsol.networks.nets`); its ``classifier`` is *not* used, only its sizes.
        erase_threshold: erase F where head A's normalised class map is >= this, in (0, 1]. Default 0.6.
        hidden_channels: width of each head's 3x3 convolutions. Default 512 (the paper and wsolevaluation
            use 1024).
        spatial_dims: spatial dims of the input; default ``backbone_net.spatial_dims``.

    Attributes:
        cam_layer_name: ``"head_a.3"``, head A's last hidden ReLU (for Grad-CAM, if wanted).
    """

    cam_layer_name = "head_a.3"

    def __init__(
        self,
        backbone_net: nn.Module,
        erase_threshold: float = 0.6,
        hidden_channels: int = 512,
        spatial_dims: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone_net, "features", None)):
            raise ValueError("ACoLClassifier: backbone_net must have a features(x) method.")
        classifier = getattr(backbone_net, "classifier", None)
        if not isinstance(classifier, nn.Linear):
            raise ValueError("ACoLClassifier: backbone_net.classifier must be an nn.Linear(C, K).")
        spatial_dims = (
            spatial_dims if spatial_dims is not None else getattr(backbone_net, "spatial_dims", None)
        )
        if spatial_dims not in (2, 3):
            raise ValueError(f"ACoLClassifier: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if not 0.0 < erase_threshold <= 1.0:
            raise ValueError(f"ACoLClassifier: erase_threshold must be in (0, 1], got {erase_threshold}.")
        if int(hidden_channels) < 1:
            raise ValueError(f"ACoLClassifier: hidden_channels must be >= 1, got {hidden_channels}.")
        self.backbone = backbone_net
        self.spatial_dims = int(spatial_dims)
        self.erase_threshold = float(erase_threshold)
        self.in_channels = classifier.in_features
        self.num_classes = classifier.out_features
        self.head_a = class_map_head(
            self.spatial_dims, self.in_channels, int(hidden_channels), self.num_classes
        )
        self.head_b = class_map_head(
            self.spatial_dims, self.in_channels, int(hidden_channels), self.num_classes
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's final feature map: (B, C_in, *spatial) -> (B, C, *s)."""
        return self.backbone.features(x)

    def _head_a(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head A: features (B, C, *s) -> class maps (B, K, *s) and logits (B, K)."""
        maps_a = self.head_a(feat)
        return maps_a, maps_a.flatten(2).mean(dim=2)

    def _head_b(self, feat: torch.Tensor, maps_a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Head B on ``feat`` erased where head A's normalised map of class ``idx`` (B,) is >= the threshold.

        Returns head B's class maps (B, K, *s).
        """
        # the erasing mask is a constant for head B (no gradient through the threshold), as in the reference
        attention = normalize_maps(_select_class(maps_a, idx).detach())
        return self.head_b(feat * (attention < self.erase_threshold).to(feat.dtype))

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C_in, *spatial).

        Training: returns ``(logits_a, logits_b)``, each (B, K); head B's erasure uses ``labels`` (class
        indices (B,) / (B, 1) or one-hot / soft (B, K)) when given, else head A's prediction. Use
        :func:`acol_loss`.
        Eval: returns head A's logits (B, K) (head B only matters for the maps, so it is not run).
        """
        feat = self.features(x)
        maps_a, logits_a = self._head_a(feat)
        if not self.training:
            return logits_a
        idx = (
            logits_a.argmax(dim=1)
            if labels is None
            else resolve_class_selection(labels, x.shape[0]).to(x.device)
        )
        logits_b = self._head_b(feat, maps_a, idx).flatten(2).mean(dim=2)
        return logits_a, logits_b

    def forward_cam(
        self, x: torch.Tensor, class_idx: ClassIndex = None, upsample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head A's logits and the fused ACoL maps, with the contract of ``CAMClassifier.forward_cam``.

        Args:
            x: (B, C_in, *spatial).
            class_idx: None (top-1 of head A), an int, a LongTensor (B,) or (B, k), or ``"all"``
                (see :func:`~monai_wsol.networks.nets.resolve_class_idx`). Head B's erasure uses the same
                class.
            upsample: resize the maps (bi/trilinear, ``align_corners=False``) to the input's spatial size.

        Returns:
            ``(logits (B, K), cams (B, k, *spatial))``; each map is the max over the two heads of their
            per-sample min-max normalised class map (:func:`~monai_wsol.extractors.normalize_maps`), so it
            lies in [0, 1] (unlike the raw CAM of a plain net).
        """
        feat = self.features(x)
        maps_a, logits_a = self._head_a(feat)
        idx = resolve_class_idx(class_idx, logits_a)  # (B, k)
        cams = []
        for j in range(idx.shape[1]):
            maps_b = self._head_b(feat, maps_a, idx[:, j])
            cams.append(
                torch.maximum(
                    normalize_maps(_select_class(maps_a, idx[:, j])),
                    normalize_maps(_select_class(maps_b, idx[:, j])),
                )
            )
        cam = torch.cat(cams, dim=1)
        if upsample and cam.shape[2:] != x.shape[2:]:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        return logits_a, cam
