"""The bounds of every localization figure, as nets with the ``forward_cam`` interface of the CAM classifiers.

- :class:`SegmentationLocalizer` (the *ceiling*, method ``supervised``): a segmentation network (MONAI's
  ``UNet`` or ``BasicUNet``) with one output channel, the lesion logit, trained on the GT masks
  (:class:`DiceBCELoss`). Its map is the lesion probability (sigmoid of the output) and its class logits come
  from that map, so accuracy and AUC are defined.
- :class:`MaskPrior` (the *floor*, method ``prior``): a map that never looks at the image: the mean GT mask of
  the training split (:meth:`MaskPrior.fit`, stored as the buffer ``prior`` so the checkpoint holds it) or a
  centred Gaussian; its class logits are a learned constant (uninformative).

Both implement ``forward_cam(x, class_idx=None, upsample=True) -> (logits (B, K), maps (B, k, *spatial))``
like :class:`~monai_wsol.networks.nets.CAMClassifier`, so :class:`~monai_wsol.extractors.ForwardCAM`, the
evaluators, the bundle and the MONAI Label inferer use them unchanged. ``docs/baselines.md`` ("Bounds")
documents the choices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet, UNet

from monai_wsol.losses import classification_loss
from monai_wsol.networks.nets.cam_classifier import ClassIndex, resolve_class_idx

__all__ = [
    "SEGMENTERS",
    "DiceBCELoss",
    "MaskPrior",
    "SegmentationLocalizer",
    "build_segmenter",
]

#: segmentation networks of the ``supervised`` method (MONAI's)
SEGMENTERS: tuple[str, ...] = ("unet", "basicunet")

#: default arguments of MONAI's ``UNet`` (the MONAI tutorials' configuration: 5 levels, 2 residual units)
UNET_DEFAULTS: dict[str, Any] = {
    "channels": (16, 32, 64, 128, 256),
    "strides": (2, 2, 2, 2),
    "num_res_units": 2,
}


def _check_dims(spatial_dims: int, in_channels: int) -> None:
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")


def build_segmenter(
    name: str, spatial_dims: int, in_channels: int, **kwargs: Any
) -> tuple[nn.Module, tuple[int, ...]]:
    """A MONAI segmentation network with one output channel, and the factor its input sides must divide by.

    Args:
        name: ``"unet"`` (:class:`monai.networks.nets.UNet`, defaults :data:`UNET_DEFAULTS`, MONAI's other
            defaults: instance norm, PReLU) or ``"basicunet"`` (:class:`monai.networks.nets.BasicUNet`, its
            defaults: features ``(32, 32, 64, 128, 256, 32)``, 4 poolings).
        spatial_dims, in_channels: of the input.
        kwargs: more arguments of the MONAI class (override the defaults; not ``out_channels``).

    Returns:
        ``(network, divisor)``; ``divisor`` (one per spatial dim) is the product of the downsampling strides.
    """
    if "out_channels" in kwargs:
        raise ValueError("the segmenter has one output channel (the lesion logit); do not set out_channels.")
    if name == "unet":
        cfg = {**UNET_DEFAULTS, **kwargs}
        net = UNet(spatial_dims, in_channels, 1, **cfg)
        per_level = [np.broadcast_to(np.asarray(s, dtype=np.int64), (spatial_dims,)) for s in cfg["strides"]]
        divisor = np.prod(per_level, axis=0) if per_level else np.ones(spatial_dims, dtype=np.int64)
        return net, tuple(int(d) for d in divisor)
    if name == "basicunet":
        net = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, **kwargs)
        return net, (16,) * spatial_dims  # four 2x max-poolings
    raise ValueError(f"unknown segmenter {name!r}; valid segmenters: {', '.join(SEGMENTERS)}.")


def _resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)


class SegmentationLocalizer(nn.Module):
    """The fully supervised ceiling: a one-channel segmentation network whose map is the lesion probability.

    Class logits (B, 2) come from the map: with ``s`` the mean of the ``topk_fraction`` highest lesion
    probabilities of an image (at least one voxel; a max robust to a few hot voxels, the default 0.1 % below
    the smallest lesion of the embedded default data), ``logits = [log(1 - s), log(s)]`` (lesion class
    last), so that the softmax is ``[1 - s, s]``.

    Inputs of any size are zero-padded to a multiple of the network's total stride and the output is
    cropped back, so the net runs on images on their own grid (the ``evaluate`` stage) as well as at the
    training size.

    Args:
        segmenter: a network ``(B, C, *spatial) -> (B, 1, *spatial)`` lesion logits.
        spatial_dims, in_channels: of the input.
        divisor: the factor every input side is padded to a multiple of (int or one per spatial dim).
        topk_fraction: fraction of the voxels whose mean probability is the image's lesion score.

    ``forward(x)``: eval mode -> logits (B, 2); training mode -> ``(logits (B, 2), lesion logits (B, 1,
    *spatial))`` (the loss, :class:`DiceBCELoss`, reads the second).
    """

    num_classes = 2
    lesion_class = 1

    def __init__(
        self,
        segmenter: nn.Module,
        spatial_dims: int,
        in_channels: int,
        divisor: int | Sequence[int] = 1,
        topk_fraction: float = 0.001,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims, in_channels)
        if not 0.0 < float(topk_fraction) <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction!r}.")
        self.segmenter = segmenter
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        div = np.broadcast_to(np.asarray(divisor, dtype=np.int64), (spatial_dims,))
        if (div < 1).any():
            raise ValueError(f"divisor must be >= 1, got {divisor!r}.")
        self.divisor = tuple(int(d) for d in div)
        self.topk_fraction = float(topk_fraction)

    def extra_repr(self) -> str:
        return f"divisor={self.divisor}, topk_fraction={self.topk_fraction}"

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion logits (B, 1, *spatial) at the input's size."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input (B, {self.in_channels}, *spatial) with "
                f"{self.spatial_dims} spatial dims, got shape {tuple(x.shape)}."
            )
        size = tuple(x.shape[2:])
        extra = [(-s) % d for s, d in zip(size, self.divisor, strict=True)]
        if any(extra):
            pad: list[int] = []
            for e in reversed(extra):  # F.pad wants the last dim first
                pad += [e // 2, e - e // 2]
            out = self.segmenter(F.pad(x, pad))
            crop = tuple(slice(e // 2, e // 2 + s) for e, s in zip(extra, size, strict=True))
            return out[(slice(None), slice(None), *crop)]
        return self.segmenter(x)

    def lesion_score(self, prob: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial) probabilities -> (B,) mean of the ``topk_fraction`` largest."""
        flat = prob.flatten(1).float()
        k = max(1, int(round(self.topk_fraction * flat.shape[1])))
        return flat.topk(k, dim=1).values.mean(dim=1)

    def class_logits(self, prob: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial) probabilities -> logits (B, 2) = ``[log(1 - s), log(s)]``."""
        s = self.lesion_score(prob).clamp(1e-6, 1.0 - 1e-6)
        return torch.stack([torch.log1p(-s), torch.log(s)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        seg = self.segment(x)
        logits = self.class_logits(torch.sigmoid(seg))
        return (logits, seg) if self.training else logits

    def forward_cam(
        self, x: torch.Tensor, class_idx: ClassIndex = None, upsample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and maps with the contract of ``CAMClassifier.forward_cam``.

        The lesion class's map is the lesion probability, the other class's its complement; the maps are at
        the input's size whatever ``upsample``.
        """
        prob = torch.sigmoid(self.segment(x).float())
        logits = self.class_logits(prob)
        idx = resolve_class_idx(class_idx, logits)  # (B, k)
        is_lesion = (idx == self.lesion_class).reshape(*idx.shape, *([1] * self.spatial_dims))
        return logits, torch.where(is_lesion, prob, 1.0 - prob)


class DiceBCELoss(nn.Module):
    """The ``supervised`` method's loss: MONAI's ``DiceCELoss`` on the lesion logit (sigmoid Dice + BCE).

    Dice is computed over the whole batch (``batch=True``), so images with an all-zero mask (negatives) add to
    its false positives instead of each scoring a degenerate 0/0 Dice.

    Called on a training output ``(logits, lesion logits)`` with the masks (B, 1, *spatial) as target, or on
    lesion logits directly. Called on class logits (B, K) alone (what the bundle's ``val_loss`` metric passes,
    with the class labels) it is the cross-entropy of those map-derived logits.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(sigmoid=True, batch=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)

    def forward(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, Sequence) and not isinstance(output, torch.Tensor):
            output = output[1]
        if output.ndim == 2:
            return classification_loss(output, target)
        target = torch.as_tensor(target).to(device=output.device, dtype=output.dtype)
        if target.shape != output.shape:
            raise ValueError(
                f"DiceBCELoss: lesion logits {tuple(output.shape)} and masks {tuple(target.shape)} differ; "
                "the target must be the GT masks (B, 1, *spatial)."
            )
        return self.dice_ce(output, target)


class MaskPrior(nn.Module):
    """The data-free floor: a localization map that does not depend on the image.

    Args:
        spatial_dims: 2 or 3.
        in_channels: of the input (only checked).
        num_classes: K; the logits are the learned constant ``class_bias`` (K,), the same for every image,
            so accuracy is at best the majority-class rate and the AUC is 0.5: reported, but meaningless.
        kind: ``"mean"``: the mean GT mask of the training images at the network's input size, set by
            :meth:`fit` and stored in the buffer ``prior`` (1, 1, *spatial) (empty until fitted; a
            checkpoint of any size loads into a fresh net). ``"center"``: a centred Gaussian computed at each
            input's size.
        sigma: for ``"center"``, the standard deviation as a fraction of each side (default 0.25: the map
            falls to ``exp(-2) ~ 0.14`` at the middle of each border, so it spans the field of view the way
            a "lesions are somewhere central" guess would).

    The map for a larger or smaller input is the stored one resized (bilinear / trilinear), the way a map at
    the network's input size is brought back to an image's own grid.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        num_classes: int = 2,
        kind: str = "mean",
        sigma: float = 0.25,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims, in_channels)
        if kind not in ("mean", "center"):
            raise ValueError(f"MaskPrior: kind must be 'mean' or 'center', got {kind!r}.")
        if not float(sigma) > 0:
            raise ValueError(f"MaskPrior: sigma must be > 0, got {sigma!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.kind = kind
        self.sigma = float(sigma)
        self.class_bias = nn.Parameter(torch.zeros(int(num_classes)))
        if kind == "mean":
            self.register_buffer("prior", torch.zeros(0))

    def extra_repr(self) -> str:
        extra = f", sigma={self.sigma}" if self.kind == "center" else f", prior={tuple(self.prior.shape)}"
        return f"spatial_dims={self.spatial_dims}, kind={self.kind!r}{extra}"

    @property
    def fitted(self) -> bool:
        """Whether the map is defined (always for ``"center"``; after :meth:`fit` for ``"mean"``)."""
        return self.kind == "center" or self.prior.numel() > 0

    @torch.no_grad()
    def fit(self, masks: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Set the mean-mask prior to the voxel-wise mean of ``masks`` (summed in float64).

        Args:
            masks: GT masks on one grid, each (1, *spatial) (channel first, as the preprocessing gives them),
                or a tensor (N, 1, *spatial); values > 0.5 are the lesion (negatives: all zero).

        Returns:
            the prior (1, 1, *spatial), float32.
        """
        if self.kind != "mean":
            raise RuntimeError(f"MaskPrior(kind={self.kind!r}) has nothing to fit.")
        total: torch.Tensor | None = None
        count = 0
        for mask in masks:
            m = torch.as_tensor(mask).detach()
            m = m.as_tensor() if hasattr(m, "as_tensor") else m
            if m.ndim == self.spatial_dims:
                m = m.unsqueeze(0)
            if m.ndim != self.spatial_dims + 1 or m.shape[0] != 1:
                raise ValueError(
                    f"MaskPrior.fit: each mask must be (1, *spatial) with {self.spatial_dims} spatial dims, "
                    f"got {tuple(m.shape)}."
                )
            m = (m.cpu() > 0.5).to(torch.float64)
            if total is None:
                total = torch.zeros_like(m)
            elif m.shape != total.shape:
                raise ValueError(
                    f"MaskPrior.fit: masks on different grids ({tuple(total.shape[1:])} and "
                    f"{tuple(m.shape[1:])}); resize them to the network's input size (spatial_size)."
                )
            total += m
            count += 1
        if total is None:
            raise ValueError("MaskPrior.fit: no mask was given.")
        mean = (total / count).to(torch.float32).unsqueeze(0)
        # in place: the buffer keeps its identity (DDP holds references to the module's buffers)
        self.prior.resize_(mean.shape).copy_(mean.to(self.prior.device))
        return self.prior

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        key = prefix + "prior"
        if self.kind == "mean" and key in state_dict:
            with torch.no_grad():
                self.prior.resize_(state_dict[key].shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def center_map(self, size: Sequence[int], device: Any = None) -> torch.Tensor:
        """The centred Gaussian (1, 1, *size), peak 1 at the centre (voxel centres at ``(i + 0.5) / n``)."""
        grids = torch.meshgrid(
            *[((torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n - 0.5) for n in size],
            indexing="ij",
        )
        r2 = sum(g**2 for g in grids)
        return torch.exp(-r2 / (2.0 * self.sigma**2)).reshape(1, 1, *size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Constant logits (B, K) (only the batch size of ``x`` is read)."""
        return self.class_bias.unsqueeze(0).expand(x.shape[0], -1)

    def forward_cam(
        self, x: torch.Tensor, class_idx: ClassIndex = None, upsample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Constant logits and the prior map (the same for every class and image), contract of
        ``CAMClassifier.forward_cam``; ``upsample=False`` leaves the mean mask at its stored size."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"MaskPrior expects input (B, C, *spatial) with {self.spatial_dims} spatial dims, "
                f"got shape {tuple(x.shape)}."
            )
        logits = self.forward(x)
        idx = resolve_class_idx(class_idx, logits)  # validated; every class has the same map
        size = tuple(x.shape[2:])
        if self.kind == "center":
            prior = self.center_map(size, device=x.device)
        else:
            if not self.fitted:
                raise RuntimeError(
                    "MaskPrior(kind='mean') is not fitted: call fit(masks) (the trainer does it at the start "
                    "of training) or load a trained checkpoint."
                )
            prior = _resize(self.prior, size) if upsample else self.prior
        prior = prior.to(device=x.device, dtype=torch.float32)
        return logits, prior.expand(x.shape[0], idx.shape[1], *prior.shape[2:])
