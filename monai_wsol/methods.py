"""Registry of the WSOL methods compared in the benchmark, built so that a trainer runs each one the same way.

Each method is a :class:`MethodSpec`: the network, the per-sample training transforms to append, an optional
batch-level augmentation, the training forward, the loss and the CAM extractor (:mod:`monai_wsol.extractors`).
A trainer does::

    spec = build_method("adl", spatial_dims=2, in_channels=1, num_classes=2)
    train_tf = Compose([*base_transforms, *spec.train_transforms])     # dictionary transforms on "image"
    for batch in loader:
        loss = spec.training_loss(batch["image"], batch["label"])      # batch_fn -> forward_fn -> loss_fn
        # (the bounds: spec.training_loss(batch["image"], batch[spec.target_key], batch["label"]))
        loss.backward(); opt.step(); opt.zero_grad()
    logits, maps = spec.extractor(spec.net, images, None)               # (B, K), (B, 1, *spatial) in [0, 1]

Methods (:data:`METHODS`): ``cam`` (plain classifier), ``adl``, ``has`` (Hide-and-Seek), ``cutmix``, ``acol``,
``gradcam`` / ``gradcampp`` / ``layercam`` (post-hoc maps of the plain classifier), ``sfs1`` / ``sfs2`` (the
dual-suppression block, one / two blocks), and the bounds every WSOL figure is reported beside: ``supervised``
(the ceiling: a MONAI UNet trained on the GT masks) and ``prior`` (the floor: a map that never looks at the
image). Details, defaults and sources: ``docs/baselines.md``.

The bounds need the GT mask at training time: their ``train_transforms`` act on the ``"mask"`` key, which
makes :func:`monai_wsol.data.make_preprocessing` load it for the training stage (resized with
nearest-neighbour interpolation, flipped with the image); ``supervised`` trains on it
(``target_key="mask"``) and ``prior`` is fitted on it once before training (``fit``, which
:class:`~monai_wsol.engines.MethodTrainer` calls).

Labels: class indices (B,) or (B, 1), or soft / one-hot labels (B, K) (what CutMix produces);
:func:`monai_wsol.losses.classification_loss` takes either. Nets need K >= 2 outputs (a CAM per class).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.transforms import AsDiscreted, CutMix
from monai.utils import convert_to_tensor

from monai_wsol.extractors import CAMExtractor, ForwardCAM, GradCAMExtractor, LayerCAMExtractor
from monai_wsol.losses import acol_loss, classification_loss
from monai_wsol.networks.nets import CAMVGG16, CAMDenseNet121, CAMPlainCNN
from monai_wsol.networks.nets.acol import ACoLClassifier
from monai_wsol.networks.nets.bounds import (
    SEGMENTERS,
    DiceBCELoss,
    MaskPrior,
    SegmentationLocalizer,
    build_segmenter,
)
from monai_wsol.transforms.hide_and_seek import RandHideAndSeekd

__all__ = [
    "BACKBONES",
    "BOUNDS",
    "METHODS",
    "CutMixBatch",
    "MethodSpec",
    "available_methods",
    "build_method",
]

BACKBONES: tuple[str, ...] = ("cnn", "densenet121", "vgg16")


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) / (B, 1) class indices -> (B, K) float one-hot; (B, K) float labels are returned as float."""
    labels = convert_to_tensor(labels, track_meta=False)
    if labels.ndim == 2 and labels.shape[1] == num_classes and labels.dtype.is_floating_point:
        return labels.float()
    return F.one_hot(labels.reshape(-1).long(), num_classes).float()


class CutMixBatch:
    """Batch-level CutMix with MONAI's :class:`monai.transforms.CutMix`, returning soft labels.

    The image mixing is MONAI's (a box of relative side ``sqrt(1 - lam)``, ``lam ~ Beta(alpha, alpha)``,
    with a corner drawn uniformly and shared by the batch, cut by the image border; 2D or 3D; pairs by a
    random permutation). The labels are mixed here, by the *area actually pasted*:
    ``y_mix = sum_j P[i, j] y_j``, where ``P[i, j]`` is the fraction of sample i's voxels that come from
    sample j. This is the original CutMix's "adjust lambda to the exact cropping ratio". MONAI 1.6.1 cannot be
    used for class labels as is: ``CutMix.__call__(images, labels)`` pushes the labels through the *image*
    cropping, which for (B, K) labels replaces them wholesale by the partner's (``y[perm]``; MONAI issue
    #8137), and ``apply_on_labels`` uses the sampled ``lam``, which is wrong whenever the box is cut by the
    border.

    Args:
        num_classes: K, for one-hot encoding of index labels.
        alpha: Beta distribution parameter (1.0: uniform, the CutMix paper's choice).
        prob: probability of mixing a given batch (else images pass and labels are only one-hot encoded).
        seed: random seed (the same seed reproduces the same boxes and pairs).
    """

    def __init__(
        self, num_classes: int, alpha: float = 1.0, prob: float = 1.0, seed: int | None = None
    ) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"CutMixBatch: num_classes must be >= 2, got {num_classes}.")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"CutMixBatch: prob must be in [0, 1], got {prob}.")
        self.num_classes = int(num_classes)
        self.prob = float(prob)
        self.mixer = CutMix(batch_size=2, alpha=alpha)  # batch_size is reset to each batch's size
        self.mixer.set_random_state(seed)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> CutMixBatch:
        self.mixer.set_random_state(seed, state)
        return self

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, *spatial), labels (B,) / (B, 1) / (B, K) -> mixed images, soft labels (B, K)."""
        # MONAI 1.6.1's CutMix indexes a MetaTensor batch with a NumPy permutation, which MetaTensor's
        # metadata bookkeeping rejects; the mixed batch carries no per-image metadata anyway
        images = convert_to_tensor(images, track_meta=False)
        soft = _one_hot(labels, self.num_classes).to(images.device)
        b = images.shape[0]
        if b < 2 or self.mixer.R.rand() >= self.prob:
            return images, soft
        self.mixer.batch_size = b  # the last batch of an epoch may be smaller
        self.mixer.randomize(images)
        # The same boxes and pairs applied to a map of "which sample am I" name each mixed voxel's source.
        spatial = images.shape[2:]
        source = (
            torch.arange(b, dtype=torch.float32).reshape(b, 1, *([1] * len(spatial))).expand(b, 1, *spatial)
        )
        with warnings.catch_warnings():
            # MONAI 1.6.1 indexes its box mask with a list of slices, which torch flags as deprecated;
            # the result is still correct (tests/test_baselines.py checks the boxes), so keep logs clean
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            mixed = self.mixer(images, randomize=False)
            source = self.mixer(source.contiguous(), randomize=False)
        source = source.reshape(b, -1).round().long()
        pair_ids = source + torch.arange(b).unsqueeze(1) * b
        fractions = (
            torch.bincount(pair_ids.reshape(-1), minlength=b * b).reshape(b, b).float() / source.shape[1]
        )
        return mixed, fractions.to(soft.device) @ soft


def _plain_forward(net: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Any:
    return net(x)


@dataclass
class MethodSpec:
    """Everything a trainer and an evaluator need to run one method.

    Attributes:
        name: the registry name.
        net: the network (forward(x) -> logits (B, K) in eval mode).
        train_transforms: per-sample MONAI dictionary transforms to append to the training pipeline (the image
            key is the ``image_key`` option, default ``"image"``); training only.
        loss_fn: ``loss_fn(output, target) -> scalar``; ``output`` is what ``forward_fn`` returns.
        extractor: the method's :class:`~monai_wsol.extractors.CAMExtractor`:
            ``extractor(net, x, class_idx) -> (logits (B, K), maps (B, 1, *spatial))``, maps in [0, 1] at
            input resolution, computed in eval mode (the net is left as it was); ``class_idx`` None
            (predicted), an int, class indices (B,) or labels (B, K).
        batch_fn: optional batch-level augmentation ``(images, labels) -> (images, labels)`` (CutMix).
        forward_fn: the training forward ``forward_fn(net, x, labels) -> output`` (ACoL needs the labels).
        options: the resolved options (for logging / configs).
        target_key: the batch key the loss is computed against: ``"label"`` (the image-level class, every
            WSOL method) or ``"mask"`` (the GT mask, ``supervised``); ``forward_fn`` always gets the labels.
        fit: optional data-driven set-up run once before training, ``fit(items)`` on the training items
            (dicts with ``"image"``, ``"label"``, ``"mask"``, through the training preprocessing without
            its random transforms); ``prior``'s mean mask. :class:`~monai_wsol.engines.MethodTrainer` calls it
            when it starts.
    """

    name: str
    net: nn.Module
    train_transforms: list[Callable]
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    extractor: CAMExtractor
    batch_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    forward_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any] = _plain_forward
    options: dict[str, Any] = field(default_factory=dict)
    target_key: str = "label"
    fit: Callable[[Iterable[Mapping[str, Any]]], None] | None = None

    def __post_init__(self) -> None:
        if self.target_key != "label" and self.batch_fn is not None:
            raise ValueError(
                f"method {self.name!r}: a batch augmentation (batch_fn) mixes labels; it cannot be combined "
                f"with target_key={self.target_key!r}."
            )

    def training_loss(
        self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One training step's loss (call ``backward`` on it): batch_fn -> forward_fn -> loss_fn.

        Args:
            images: (B, C, *spatial).
            targets: the batch's ``target_key`` entry (class labels, or GT masks for ``supervised``).
            labels: the class labels when ``targets`` are not them (for forwards that read the labels).
        """
        if self.batch_fn is not None:
            images, targets = self.batch_fn(images, targets)
        forward_labels = targets if labels is None or self.target_key == "label" else labels
        return self.loss_fn(self.forward_fn(self.net, images, forward_labels), targets)


def _labels_forward(net: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Any:
    return net(x, labels=labels)


# name -> (registry plug-in, default positions per backbone, plug-in option names).
# "two" on DenseNet: after its last two dense blocks (denseblock3 and denseblock4 of DenseNet121)
_ADL_POSITIONS = {"cnn": "two", "densenet121": "two", "vgg16": ("conv3_3", "conv4_3", "conv5_3")}
_SFS_OPTIONS = ("cr", "t", "init", "g", "reduction_channels", "branches")
_PLUGINS: dict[str, tuple[str, Mapping[str, Any], tuple[str, ...]]] = {
    "adl": ("adl", _ADL_POSITIONS, ("drop_rate", "gamma")),
    "sfs1": ("dual_suppression", {"cnn": "one", "densenet121": "one", "vgg16": "one"}, _SFS_OPTIONS),
    "sfs2": ("dual_suppression", {"cnn": "two", "densenet121": "two", "vgg16": "two"}, _SFS_OPTIONS),
}
#: method name -> the options it accepts beyond the common ones (backbone, net_kwargs).
METHODS: dict[str, tuple[str, ...]] = {
    "cam": (),
    "adl": ("positions", *_PLUGINS["adl"][2]),
    "has": ("grid_size", "hide_prob", "fill_value", "prob", "image_key"),
    "cutmix": ("alpha", "prob", "seed"),
    "acol": ("erase_threshold", "hidden_channels"),
    "gradcam": (),
    "gradcampp": (),
    "layercam": ("layer_names", "gamma"),
    "sfs1": ("positions", *_SFS_OPTIONS),
    "sfs2": ("positions", *_SFS_OPTIONS),
    "supervised": ("segmenter", "segmenter_kwargs", "topk_fraction", "lambda_dice", "lambda_ce"),
    "prior": ("kind", "sigma"),
}
#: the bounds: methods that are not WSOL classifiers (``backbone`` / ``net_kwargs`` do not apply to them)
BOUNDS: tuple[str, ...] = ("supervised", "prior")


def available_methods() -> tuple[str, ...]:
    """The method names :func:`build_method` accepts."""
    return tuple(METHODS)


def _backbone(
    backbone: str,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    plugin: str | None = None,
    positions: str | Sequence[str] | None = None,
    plugin_kwargs: Mapping[str, Any] | None = None,
    net_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    kwargs: dict[str, Any] = dict(net_kwargs or {})
    if plugin is not None:
        kwargs.update(plugin=plugin, plugin_kwargs=dict(plugin_kwargs or {}))
        if positions is not None:
            kwargs["positions"] = positions
    if backbone == "cnn":
        return CAMPlainCNN(spatial_dims, in_channels, num_classes, **kwargs)
    if backbone == "densenet121":
        return CAMDenseNet121(spatial_dims, in_channels, num_classes, **kwargs)
    if backbone == "vgg16":
        if spatial_dims != 2:
            raise ValueError(
                f"backbone 'vgg16' is 2D only; got spatial_dims={spatial_dims} (use 'densenet121')."
            )
        return CAMVGG16(in_channels=in_channels, out_channels=num_classes, **kwargs)
    raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}.")


def build_method(
    name: str,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    backbone: str = "densenet121",
    net_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> MethodSpec:
    """Build method ``name`` on ``backbone``.

    Args:
        name: one of :func:`available_methods`.
        spatial_dims: 2 or 3 (``vgg16`` is 2D only; every method works in 3D on ``densenet121``).
        in_channels: image channels.
        num_classes: K >= 2 (``supervised``: 2, lesion / no lesion).
        backbone: ``"cnn"`` (:class:`~monai_wsol.networks.nets.CAMPlainCNN`, the bundle's default),
            ``"densenet121"`` or ``"vgg16"``; not used by the bounds (:data:`BOUNDS`), which have their own
            nets (so that one configuration, e.g. the benchmark's, serves every method).
        net_kwargs: extra arguments of the backbone class (e.g. ``{"pretrained": True}``,
            ``{"low_stride": True}``); not used by the bounds (``supervised`` takes ``segmenter_kwargs``).
        options: method options (see ``METHODS[name]`` and ``docs/baselines.md``); unknown ones raise.

    Returns:
        The :class:`MethodSpec`.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(available_methods())}.")
    unknown = sorted(set(options) - set(METHODS[name]))
    if unknown:
        raise ValueError(
            f"method {name!r} got unknown option(s) {unknown}; "
            f"it accepts: {', '.join(METHODS[name]) or 'none'}."
        )
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}.")
    if isinstance(num_classes, bool) or int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (one CAM per class), got {num_classes!r}.")
    common = dict(
        backbone=backbone,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=num_classes,
        net_kwargs=net_kwargs,
    )
    if name in BOUNDS:
        return _build_bound(name, spatial_dims, in_channels, int(num_classes), **options)
    resolved: dict[str, Any] = {"backbone": backbone, **options}

    if name in _PLUGINS:
        plugin, default_positions, option_names = _PLUGINS[name]
        positions = options.get("positions", default_positions[backbone])
        plugin_kwargs = {k: options[k] for k in option_names if k in options}
        net = _backbone(plugin=plugin, positions=positions, plugin_kwargs=plugin_kwargs, **common)
        resolved["positions"] = getattr(net, "positions", positions)
        return MethodSpec(name, net, [], classification_loss, ForwardCAM(), options=resolved)

    if name == "acol":
        acol_opts = {k: options[k] for k in ("erase_threshold", "hidden_channels") if k in options}
        net = ACoLClassifier(_backbone(**common), **acol_opts)
        return MethodSpec(
            name, net, [], acol_loss, ForwardCAM(), forward_fn=_labels_forward, options=resolved
        )

    net = _backbone(**common)
    if name == "has":
        has_opts = {"grid_size": 16, "hide_prob": 0.5, "fill_value": None, "prob": 1.0, "image_key": "image"}
        has_opts.update(options)
        key = has_opts.pop("image_key")
        resolved.update(has_opts, image_key=key)
        return MethodSpec(
            name,
            net,
            [RandHideAndSeekd(keys=key, **has_opts)],
            classification_loss,
            ForwardCAM(),
            options=resolved,
        )
    if name == "cutmix":
        batch_fn = CutMixBatch(num_classes, **options)
        return MethodSpec(
            name, net, [], classification_loss, ForwardCAM(), batch_fn=batch_fn, options=resolved
        )
    if name in ("gradcam", "gradcampp"):
        return MethodSpec(
            name,
            net,
            [],
            classification_loss,
            GradCAMExtractor(plusplus=name == "gradcampp"),
            options=resolved,
        )
    if name == "layercam":
        return MethodSpec(name, net, [], classification_loss, LayerCAMExtractor(**options), options=resolved)
    return MethodSpec(name, net, [], classification_loss, ForwardCAM(), options=resolved)  # "cam"


def _fit_mask_prior(net: MaskPrior, items: Iterable[Mapping[str, Any]]) -> None:
    def masks() -> Iterable[torch.Tensor]:
        for item in items:
            if item.get("mask") is None:
                raise KeyError(
                    "method 'prior': a training item has no 'mask'; the mean-mask prior needs the GT masks "
                    "of the training split (negatives: all-zero masks or none, see make_preprocessing)."
                )
            yield item["mask"]

    net.fit(masks())


def _build_bound(
    name: str, spatial_dims: int, in_channels: int, num_classes: int, **options: Any
) -> MethodSpec:
    """``supervised`` (ceiling) and ``prior`` (floor); see ``docs/baselines.md``, "Bounds"."""
    # the GT mask in the training batches, binary float: acting on "mask" makes make_preprocessing load it
    mask_transforms: list[Callable] = [AsDiscreted("mask", threshold=0.5)]
    if name == "supervised":
        if num_classes != 2:
            raise ValueError(
                f"method 'supervised' segments one lesion class: num_classes must be 2, got {num_classes}."
            )
        segmenter = options.get("segmenter", "unet")
        if segmenter not in SEGMENTERS:
            raise ValueError(f"unknown segmenter {segmenter!r}; valid segmenters: {', '.join(SEGMENTERS)}.")
        seg_kwargs = dict(options.get("segmenter_kwargs") or {})
        seg_net, divisor = build_segmenter(segmenter, spatial_dims, in_channels, **seg_kwargs)
        topk = float(options.get("topk_fraction", 0.001))
        net = SegmentationLocalizer(seg_net, spatial_dims, in_channels, divisor=divisor, topk_fraction=topk)
        loss = DiceBCELoss(options.get("lambda_dice", 1.0), options.get("lambda_ce", 1.0))
        resolved = {
            "segmenter": segmenter,
            "segmenter_kwargs": seg_kwargs,
            "topk_fraction": topk,
            "lambda_dice": float(loss.dice_ce.lambda_dice),
            "lambda_ce": float(loss.dice_ce.lambda_ce),
        }
        # the map is the lesion probability itself: no per-image min-max normalisation
        return MethodSpec(
            name, net, mask_transforms, loss, ForwardCAM(normalize=False), options=resolved, target_key="mask"
        )
    kind = options.get("kind", "mean")
    sigma = float(options.get("sigma", 0.25))
    net = MaskPrior(spatial_dims, in_channels, num_classes, kind=kind, sigma=sigma)
    resolved = {"kind": kind, **({"sigma": sigma} if kind == "center" else {})}
    if kind == "center":
        return MethodSpec(name, net, [], classification_loss, ForwardCAM(), options=resolved)
    return MethodSpec(
        name,
        net,
        mask_transforms,
        classification_loss,
        ForwardCAM(),
        options=resolved,
        fit=functools.partial(_fit_mask_prior, net),
    )
