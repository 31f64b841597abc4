"""CAM extractors: from a trained classifier and a batch to class logits and localization maps in [0, 1].

One base class, :class:`CAMExtractor` (modelled on torchcam's ``_CAM``), owns everything around a map so that
every caller (method registry, benchmark, ignite evaluator, MONAI Label inferer) gets the same maps:

- the net runs in eval mode, and every module's mode, ``inplace`` flag, hook, parameter ``.grad`` and
  ``requires_grad`` is put back afterwards, also when the extraction raises (:func:`preserved_module_state`);
- forward CAMs run without autograd; gradient-based ones run with it, even inside ``torch.no_grad()`` or
  ``torch.inference_mode()`` (which ignite evaluators use);
- class selection: ``None`` (each sample's predicted class), an ``int`` (that class for every sample), class
  indices ``(B,)`` / ``(B, 1)`` (one class per sample, e.g. the labels), or one-hot / soft labels ``(B, K)``
  (their argmax per sample);
- optional flip test-time augmentation (``flip_axes``): the maps of the flipped inputs, flipped back, are
  averaged with the map of the input (and so are the logits), before normalisation;
- upsampling to the input's spatial size (bilinear in 2D, trilinear in 3D, ``align_corners=False``), then a
  per-sample min-max normalisation to [0, 1] (:func:`normalize_maps`, the package's one CAM normalisation);
- a ``MetaTensor`` input gives ``MetaTensor`` maps carrying its metadata: the maps are on the input grid, so
  the input's affine is theirs.

Subclasses only compute ``(logits, raw maps)``: :class:`ForwardCAM` (the net's in-graph ``forward_cam``: CAM
nets, ACoL, any net with that method), :class:`GradCAMExtractor` (Grad-CAM / Grad-CAM++ of
``monai.visualize``) and :class:`LayerCAMExtractor` (LayerCAM, fused over several layers).
:class:`SliceBySliceExtractor` runs any of them through a volume with a 2D net (one map
volume, normalised as a whole) and :class:`SlidingWindowExtractor` through a volume larger than its input
(MONAI's sliding windows, the raw maps stitched, then normalised once). :func:`get_extractor` builds one by
name (``"cam"``, ``"gradcam"``, ``"gradcampp"``, ``"layercam"``) so that configs can name it::

    extractor = get_extractor("gradcampp")
    logits, maps = extractor(net, images, class_idx=labels)  # (B, K), (B, 1, *spatial) in [0, 1]
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks

from monai_wsol.transforms.functional import normalize_cam

__all__ = [
    "EXTRACTORS",
    "CAMExtractor",
    "ClassSelection",
    "ForwardCAM",
    "GradCAMExtractor",
    "LayerCAMExtractor",
    "SliceBySliceExtractor",
    "SlidingWindowExtractor",
    "available_extractors",
    "get_extractor",
    "inference_extractor",
    "normalize_maps",
    "preserved_module_state",
    "resolve_class_selection",
]

#: what a caller may pass as ``class_idx``: None, an int, (B,) / (B, 1) indices or (B, K) one-hot / soft
# labels
ClassSelection = int | Sequence[int] | np.ndarray | torch.Tensor | None


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map to [0, 1] over its spatial axes: (B, k, *spatial) -> the same shape.

    Every (sample, channel) map is normalised on its own; a constant map becomes zeros. Float64 stays float64,
    any other dtype becomes float32.
    """
    return normalize_cam(maps, spatial_dims=maps.ndim - 2)


def _hook_dicts(module: nn.Module) -> dict[str, dict]:
    # every hook registry of a module is a dict attribute whose name contains "hooks"
    # (_forward_hooks, _backward_hooks, _forward_hooks_with_kwargs, ...), whatever the torch version
    return {k: v for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict)}


@contextlib.contextmanager
def preserved_module_state(net: nn.Module) -> Iterator[None]:
    """Undo, on exit (normal or not), what hook-based tools do to ``net``.

    Restored: every module's training flag, ``inplace`` flag and ``_is_full_backward_hook`` flag; hooks added
    to any module's hook registries are removed; every parameter's ``.grad`` and ``requires_grad``. Inside the
    block the parameters' ``.grad`` is ``None``, so a backward pass there accumulates into fresh tensors and
    never into the caller's gradients.
    """
    modules = list(net.modules())
    training = [m.training for m in modules]
    inplace = [m.__dict__.get("inplace") for m in modules]
    full_bw = [m.__dict__.get("_is_full_backward_hook") for m in modules]
    hook_keys = [{name: set(d) for name, d in _hook_dicts(m).items()} for m in modules]
    params = list(net.parameters())
    grads = [p.grad for p in params]
    requires_grad = [p.requires_grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for m, tr, inp, fb, keys in zip(modules, training, inplace, full_bw, hook_keys, strict=True):
            m.training = tr
            if inp is not None:
                m.__dict__["inplace"] = inp
            if "_is_full_backward_hook" in m.__dict__:
                m.__dict__["_is_full_backward_hook"] = fb
            for name, d in _hook_dicts(m).items():
                for key in set(d) - keys.get(name, set()):
                    del d[key]
        for p, g, rg in zip(params, grads, requires_grad, strict=True):
            p.requires_grad_(rg)
            p.grad = g


def resolve_class_selection(class_idx: ClassSelection, batch: int) -> torch.Tensor | None:
    """One class per sample: ``class_idx`` -> ``None`` (predicted class) or a LongTensor (B,).

    Args:
        class_idx: ``None``; an ``int`` (or a one-entry array) for every sample; class indices (B,) or (B, 1)
            (integer, or integral floats as label tensors often are); one-hot or soft labels (B, K), K >= 2,
            reduced to their argmax per sample.
        batch: B.

    Raises:
        TypeError: a bool, bool tensor or complex tensor.
        ValueError: a shape that does not give one class per sample, or non-integral float indices.
    """
    if class_idx is None:
        return None
    if isinstance(class_idx, bool):
        raise TypeError("class_idx must be None, an int, class indices (B,) or labels (B, K); got a bool.")
    idx = class_idx.as_tensor() if isinstance(class_idx, MetaTensor) else torch.as_tensor(class_idx)
    if idx.dtype == torch.bool or idx.is_complex():
        raise TypeError(f"class_idx must hold class indices or label scores, got dtype {idx.dtype}.")
    if idx.ndim == 2 and idx.shape[1] > 1:
        if idx.shape[0] != batch:
            raise ValueError(f"class_idx labels (B, K) have {idx.shape[0]} rows for a batch of {batch}.")
        return idx.argmax(dim=1)
    if idx.ndim > 2:
        raise ValueError(f"class_idx must be (B,), (B, 1) or (B, K), got shape {tuple(idx.shape)}.")
    idx = idx.reshape(-1)
    if idx.dtype.is_floating_point and not bool((idx == idx.round()).all()):
        raise ValueError(f"class_idx float indices must be integral, got {idx.tolist()}.")
    idx = idx.long()
    if idx.numel() == 1:
        return idx.expand(batch).clone()
    if idx.numel() != batch:
        raise ValueError(f"class_idx has {idx.numel()} entries for a batch of {batch}.")
    return idx


def _flip_axes(flip_axes: Sequence[int]) -> tuple[int, ...]:
    axes = [int(a) for a in flip_axes]
    if len(set(axes)) != len(axes) or any(a < 0 or a > 2 for a in axes):
        raise ValueError(f"flip_axes must be distinct spatial axes in 0..2, got {list(flip_axes)}.")
    return tuple(axes)


class CAMExtractor(ABC):
    """Base class: eval mode and state restoration, autograd mode, class selection, upsampling, normalisation.

    Subclasses implement :meth:`_extract` (logits and raw maps of the selected classes) and set
    :attr:`needs_grad` when they back-propagate.

    Args:
        normalize: min-max normalise each map to [0, 1] (default). ``False`` returns the raw (upsampled) maps,
            for callers that normalise several calls' maps jointly with :func:`normalize_maps`.
        flip_axes: flip test-time augmentation: for each spatial axis listed (0 = the first spatial axis), the
            input flipped along it is run too, its raw map flipped back; the raw maps (at the input's size)
            and the logits are averaged over the ``1 + len(flip_axes)`` passes. Empty (default): one pass.
    """

    #: whether :meth:`_extract` back-propagates (then it runs under ``enable_grad``, else under ``no_grad``)
    needs_grad: ClassVar[bool] = False

    def __init__(self, normalize: bool = True, flip_axes: Sequence[int] = ()) -> None:
        self.normalize = bool(normalize)
        self.flip_axes = _flip_axes(flip_axes)

    def __repr__(self) -> str:
        flips = f", flip_axes={self.flip_axes}" if self.flip_axes else ""
        return f"{type(self).__name__}(normalize={self.normalize}{flips})"

    def with_flip_axes(self, flip_axes: Sequence[int]) -> CAMExtractor:
        """A copy of this extractor with flip test-time augmentation along ``flip_axes`` (see the class)."""
        out = copy.copy(self)
        out.flip_axes = _flip_axes(flip_axes)
        return out

    def __call__(
        self, net: nn.Module, x: torch.Tensor, class_idx: ClassSelection = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and one localization map per sample.

        Args:
            net: the classifier (not a DDP/DataParallel wrapper: pass its ``.module``). Left as it was.
            x: input batch (B, C, *spatial), 2D or 3D; a ``MetaTensor`` gives ``MetaTensor`` maps with its
                metadata.
            class_idx: the class whose map is computed, see :func:`resolve_class_selection`.

        Returns:
            ``(logits (B, K), maps (B, 1, *spatial))``, detached, float32 (float64 stays float64); the maps
            are at the input's spatial size and, with ``normalize``, in [0, 1] with per-sample max 1 (zeros
            for a constant map).
        """
        x_plain = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
        if x_plain.ndim not in (4, 5):
            raise ValueError(
                f"{type(self).__name__}: x must be (B, C, *spatial) with 2 or 3 spatial dims, "
                f"got shape {tuple(x_plain.shape)}."
            )
        classes = resolve_class_selection(class_idx, x_plain.shape[0])
        if classes is not None:
            classes = classes.to(x_plain.device)
        # gradient-based maps need autograd even when called under no_grad / inference_mode (evaluators)
        grad_mode = _grad_enabled if self.needs_grad else torch.no_grad
        if any(a >= x_plain.ndim - 2 for a in self.flip_axes):
            raise ValueError(
                f"{type(self).__name__}: flip_axes {self.flip_axes} for an input with {x_plain.ndim - 2} "
                "spatial dims."
            )
        spatial = tuple(x_plain.shape[2:])
        passes: list[tuple[torch.Tensor, torch.Tensor]] = []
        with preserved_module_state(net):
            net.eval()
            for axis in (None, *self.flip_axes):
                dims = () if axis is None else (axis + 2,)
                with grad_mode():
                    logits, maps = self._extract(net, x_plain.flip(dims) if dims else x_plain, classes)
                logits, maps = _as_float(logits.detach()), _as_float(maps.detach())
                self._check_outputs(logits, maps, class_idx, x_plain.shape[0])
                maps = self.upsample(maps, spatial)
                passes.append((logits, maps.flip(dims) if dims else maps))
        logits = torch.stack([p[0] for p in passes]).mean(0) if len(passes) > 1 else passes[0][0]
        maps = torch.stack([p[1] for p in passes]).mean(0) if len(passes) > 1 else passes[0][1]
        return self._finish(logits, maps, x)

    def _finish(
        self, logits: torch.Tensor, maps: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise the maps (when ``normalize``) and give them ``x``'s metadata when it is a ``MetaTensor``
        (the batch's affines and ``is_batch``, so that decollation gives each map its image's)."""
        maps = maps.as_tensor() if isinstance(maps, MetaTensor) else maps
        if self.normalize:
            maps = normalize_maps(maps)
        if isinstance(x, MetaTensor):
            maps = MetaTensor(maps)
            maps.copy_meta_from(x)
        return logits, maps

    @staticmethod
    def upsample(maps: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """(B, k, *s) -> (B, k, *spatial_size): bilinear (2D) / trilinear (3D), ``align_corners=False``."""
        if tuple(maps.shape[2:]) == tuple(spatial_size):
            return maps
        mode = "bilinear" if len(spatial_size) == 2 else "trilinear"
        return F.interpolate(maps, size=tuple(spatial_size), mode=mode, align_corners=False)

    @abstractmethod
    def _extract(
        self, net: nn.Module, x: torch.Tensor, class_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``net`` in eval mode, ``x`` (B, C, *spatial) a plain tensor, ``class_idx`` None or LongTensor (B,)
        -> ``(logits (B, K), raw maps (B, 1, *s))`` at any resolution ``s``."""

    def _check_outputs(
        self, logits: torch.Tensor, maps: torch.Tensor, class_idx: ClassSelection, batch: int
    ) -> None:
        name = type(self).__name__
        if logits.ndim != 2 or logits.shape[0] != batch:
            raise ValueError(f"{name}: the net must return logits (B, K), got {tuple(logits.shape)}.")
        if maps.ndim < 4 or maps.shape[:2] != (batch, 1):
            raise ValueError(f"{name}: expected one map per sample (B, 1, *s), got {tuple(maps.shape)}.")
        shape = tuple(getattr(class_idx, "shape", ()))
        if len(shape) == 2 and shape[1] > 1 and shape[1] != logits.shape[1]:
            # (B, K) labels were reduced by argmax before the forward pass; their K must be the net's
            raise ValueError(f"{name}: labels {shape} for a net with {logits.shape[1]} classes.")


@contextlib.contextmanager
def _grad_enabled() -> Iterator[None]:
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


class ForwardCAM(CAMExtractor):
    """Maps from the net's own ``forward_cam(x, class_idx, upsample)`` (one forward pass, no hooks, no grad).

    Works for the CAM nets of :mod:`monai_wsol.networks.nets` (CAM = ``sum_c w_k[c] F[c]``), ACoL (its fused
    map) and any net with that method returning ``(logits (B, K), maps (B, 1, *s))`` for (B,) class indices.
    """

    def _extract(
        self, net: nn.Module, x: torch.Tensor, class_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        forward_cam = getattr(net, "forward_cam", None)
        if not callable(forward_cam):
            raise TypeError(
                f"ForwardCAM needs a net with forward_cam(x, class_idx, upsample); got {type(net).__name__} "
                "(unwrap DistributedDataParallel / DataParallel first)."
            )
        return forward_cam(x, class_idx=class_idx, upsample=False)


class _PerSampleScore(ModelWithHooks):
    """MONAI's ``ModelWithHooks`` scoring each sample's own class, so a whole batch runs in one pass.

    MONAI's ``class_score`` is ``logits[:, class_idx].squeeze()``: with (B,) indices that is a (B, B) matrix
    whose sum back-propagates every sample's class into every sample (and Grad-CAM++ fails on its shape).
    Here the score is ``logits[i, class_idx[i]]``, shaped (B, 1, *[1] * spatial_dims) so that Grad-CAM++'s
    ``score.exp() * grad`` broadcasts per sample; ``score.sum().backward()`` then gives each sample its own
    gradient (in eval mode the samples of a batch do not interact). The logits of the pass are kept, so the
    extractor returns them without a second forward.
    """

    def __init__(self, nn_module: nn.Module, target_layer: str, spatial_dims: int) -> None:
        super().__init__(nn_module, target_layer, register_forward=True, register_backward=True)
        self.spatial_dims = spatial_dims
        self.logits: torch.Tensor | None = None

    def class_score(self, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:  # type: ignore
        idx = torch.as_tensor(class_idx, device=logits.device).reshape(-1, 1).long()
        if bool(((idx < 0) | (idx >= logits.shape[1])).any()):
            raise ValueError(
                f"GradCAMExtractor: class_idx must be in [0, {logits.shape[1] - 1}], "
                f"got {idx.flatten().tolist()}."
            )
        return logits.gather(1, idx).reshape(-1, 1, *([1] * self.spatial_dims))

    def __call__(self, x: torch.Tensor, class_idx: Any = None, retain_graph: bool = False, **kwargs: Any):
        logits, acti, grad = super().__call__(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
        self.logits = logits.detach()
        return logits, acti, grad


class GradCAMExtractor(CAMExtractor):
    """Grad-CAM (or Grad-CAM++) maps, computed by ``monai.visualize.GradCAM`` / ``GradCAMpp``.

    MONAI does the maths (``compute_map``: ReLU of the gradient-weighted activations of one layer); this class
    makes it safe and batched, working around MONAI 1.6.1's behaviours: its hooks are never removed, the
    target layer's ``inplace`` is switched off, ``model.zero_grad()`` is called and the net ends in
    ``model.train()`` (all undone by :func:`preserved_module_state`); the class score of a batch mixes samples
    (fixed by scoring each sample's own class, so a batch is one forward/backward pass); and its default
    post-processing inverts the map (not used: the base class upsamples and normalises, larger = more class
    evidence, as for CAM). The backward pass needs a grad-requiring input, so a fresh copy of ``x`` is used:
    it works with every parameter frozen and inside ``no_grad`` / ``inference_mode``.

    Args:
        plusplus: Grad-CAM++ instead of Grad-CAM.
        layer_name: the module whose activations and gradients are used; default ``net.cam_layer_name``.
        normalize: see :class:`CAMExtractor`.
    """

    needs_grad = True

    def __init__(self, plusplus: bool = False, layer_name: str | None = None, normalize: bool = True) -> None:
        super().__init__(normalize=normalize)
        self.plusplus = bool(plusplus)
        self.layer_name = layer_name

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(plusplus={self.plusplus}, layer_name={self.layer_name!r}, "
            f"normalize={self.normalize})"
        )

    def _extract(
        self, net: nn.Module, x: torch.Tensor, class_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.layer_name if self.layer_name is not None else getattr(net, "cam_layer_name", None)
        if not isinstance(name, str):
            raise ValueError(
                "GradCAMExtractor: the net has no `cam_layer_name`; pass layer_name=<module name>."
            )
        if name not in dict(net.named_modules()):
            raise ValueError(f"GradCAMExtractor: layer {name!r} is not a module of the net.")
        hooked = _PerSampleScore(net, name, spatial_dims=x.ndim - 2)
        cam = (GradCAMpp if self.plusplus else GradCAM)(nn_module=hooked, target_layers=name)
        # fresh copies: x must require grad for the backward pass to exist (even with every parameter frozen),
        # and neither may be an inference tensor, which autograd cannot save
        classes = None if class_idx is None else class_idx.clone()
        maps = cam.compute_map(x.clone().requires_grad_(True), class_idx=classes)
        assert hooked.logits is not None  # set by the forward pass compute_map just ran
        return hooked.logits, maps


class LayerCAMExtractor(CAMExtractor):
    """LayerCAM (Jiang et al., IEEE TIP 2021): each location's activations weighted by their own positive
    gradients, fused over several layers.

    For a layer with activations ``A`` (B, C, *s) and the class score ``y``, the layer's map is
    ``ReLU(sum_c ReLU(dy/dA_c) * A_c)``: a per-location weight, where Grad-CAM averages the gradient over the
    whole map. Each layer's map is min-max normalised per sample, scaled by ``tanh(gamma * map)`` (the paper's
    Eq. 9, which lifts the weak but fine maps of shallow layers; torchcam scales every layer alike, as here),
    upsampled to the finest layer's grid and fused by the element-wise maximum. A shallow layer brings the
    resolution the last layer's stride loses.

    The extractor owns its forward hooks (registered for the one pass, removed after it, also on error) and
    back-propagates from a fresh copy of the input, so it works with frozen parameters and inside ``no_grad``
    / ``inference_mode``.

    Args:
        layer_names: the modules whose outputs are used; default ``net.stage_layer_names`` (the plain CNN's
            last convolution of each stage) or else ``[net.cam_layer_name]`` (one layer).
        gamma: the tanh scaling of each layer's normalised map (2, the paper's).
        normalize: see :class:`CAMExtractor`.
    """

    needs_grad = True

    def __init__(
        self, layer_names: Sequence[str] | None = None, gamma: float = 2.0, normalize: bool = True
    ) -> None:
        super().__init__(normalize=normalize)
        if layer_names is not None and (isinstance(layer_names, str) or not list(layer_names)):
            raise ValueError(f"LayerCAMExtractor: layer_names must be a non-empty list, got {layer_names!r}.")
        self.layer_names = None if layer_names is None else [str(n) for n in layer_names]
        if not float(gamma) > 0:
            raise ValueError(f"LayerCAMExtractor: gamma must be > 0, got {gamma!r}.")
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layer_names={self.layer_names!r}, gamma={self.gamma}, "
            f"normalize={self.normalize})"
        )

    def _layers(self, net: nn.Module) -> dict[str, nn.Module]:
        """The hooked layers by name, in the order given (checked to be modules of ``net``)."""
        names = self.layer_names
        if names is None:
            names = list(getattr(net, "stage_layer_names", None) or [getattr(net, "cam_layer_name", None)])
        modules = dict(net.named_modules())
        for name in names:
            if not isinstance(name, str) or name not in modules:
                raise ValueError(
                    f"LayerCAMExtractor: layer {name!r} is not a module of {type(net).__name__}; pass "
                    "layer_names=[<module name>, ...]."
                )
        return {name: modules[name] for name in names}

    def _extract(
        self, net: nn.Module, x: torch.Tensor, class_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layers = self._layers(net)
        outputs: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                outputs[name] = output

            return hook

        handles = [module.register_forward_hook(keep(name)) for name, module in layers.items()]
        try:
            logits = net(x.clone().requires_grad_(True))
        finally:
            for handle in handles:
                handle.remove()
        # a fresh copy: an index made under inference_mode cannot be saved for the backward pass
        classes = logits.argmax(1) if class_idx is None else class_idx.clone().to(logits.device).long()
        if bool(((classes < 0) | (classes >= logits.shape[1])).any()):
            raise ValueError(
                f"LayerCAMExtractor: class_idx must be in [0, {logits.shape[1] - 1}], got {classes.tolist()}."
            )
        score = logits.gather(1, classes.reshape(-1, 1)).sum()  # samples do not interact in eval mode
        activations = [outputs[name] for name in layers]
        grads = torch.autograd.grad(score, activations)
        maps = []
        for act, grad in zip(activations, grads, strict=True):
            layer_map = F.relu((F.relu(grad) * act).sum(1, keepdim=True))
            maps.append(torch.tanh(self.gamma * normalize_maps(layer_map.float())))
        finest = max((m.shape[2:] for m in maps), key=lambda shape: int(np.prod(shape)))
        fused = torch.stack([self.upsample(m, finest) for m in maps]).amax(0)
        return logits.detach(), fused


class _PartwiseExtractor(CAMExtractor):
    """Base of the extractors that run a wrapped extractor over parts of a volume (slices, windows) and
    assemble one map: the wrapped extractor's raw copy (``part_extractor``, whose own ``normalize`` is not
    used, since the parts' maps are normalised together), its flip axes and autograd need, the lesion class
    whose most probable part gives the volume's logits."""

    def __init__(self, extractor: CAMExtractor | str, positive_class: int, normalize: bool) -> None:
        inner = get_extractor(extractor)
        super().__init__(normalize=normalize)
        if isinstance(positive_class, bool) or not isinstance(positive_class, int) or positive_class < 0:
            raise ValueError(
                f"positive_class must be a non-negative int class index, got {positive_class!r}."
            )
        self.positive_class = positive_class
        self.part_extractor = copy.copy(inner)
        self.part_extractor.normalize = False
        self.needs_grad = inner.needs_grad  # type: ignore[misc]
        self.flip_axes = inner.flip_axes

    def with_flip_axes(self, flip_axes: Sequence[int]) -> _PartwiseExtractor:
        """A copy whose parts run with flip test-time augmentation along ``flip_axes`` (axes of a part)."""
        out = copy.copy(self)
        out.part_extractor = self.part_extractor.with_flip_axes(flip_axes)
        out.flip_axes = out.part_extractor.flip_axes
        return out

    def _classes(self, class_idx: ClassSelection, batch: int, part: str) -> torch.Tensor:
        classes = resolve_class_selection(class_idx, batch)
        if classes is None:
            raise ValueError(
                f"{type(self).__name__}: a volume's predicted class is known only after all its {part}; "
                "give the class whose maps to compute (an int, e.g. the lesion class, or one per volume)."
            )
        return classes

    def _most_positive(self, part_logits: torch.Tensor) -> torch.Tensor:
        """``(B, P, K)`` logits of each volume's parts -> ``(B,)`` index of the part most likely positive."""
        if self.positive_class >= part_logits.shape[-1]:
            raise ValueError(
                f"{type(self).__name__}: positive_class={self.positive_class} for a net with "
                f"{part_logits.shape[-1]} classes."
            )
        return torch.softmax(part_logits, dim=-1)[..., self.positive_class].argmax(dim=1)

    def _extract(
        self, net: nn.Module, x: torch.Tensor, class_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.part_extractor._extract(net, x, class_idx)


class SliceBySliceExtractor(_PartwiseExtractor):
    """A 2D net's extractor run through volumes slice by slice: one CAM volume, one class score per volume.

    A volume ``(B, C, X, Y, Z)`` is cut along ``slice_axis`` (an array axis of the volume; ``-1``/``2`` is
    the slice axis of NIfTI files and of MONAI's DICOM series reader) into 2D slices, which go through the
    wrapped extractor ``slice_batch`` at a time. Each slice's raw map is upsampled to the slice and the maps
    are stacked back along ``slice_axis``; the volume's map is then min-max normalised **as a whole**, so a
    slice without a lesion keeps low values instead of being stretched to [0, 1] on its own. The volume's
    logits are those of its slice with the highest probability of ``positive_class`` (a volume holds a lesion
    when one of its slices does). Flip test-time augmentation is the wrapped extractor's, along the axes of
    the slice. A 2D batch ``(B, C, X, Y)`` goes to the wrapped extractor unchanged.

    Args:
        extractor: the 2D extractor (an instance or a name of :func:`get_extractor`); its own ``normalize``
            is not used.
        slice_axis: the volume's array axis the slices are cut along (0, 1, 2, or -1 for the last).
        positive_class: the lesion class, whose per-slice probability picks the slice that gives the volume's
            logits.
        slice_batch: slices per call of the wrapped extractor (bounds memory).
        normalize: see :class:`CAMExtractor`.

    Volumes need a class per sample (an ``int`` or per-sample indices): the predicted class of a volume is
    only known once every slice has run, so ``class_idx=None`` is refused for them.
    """

    def __init__(
        self,
        extractor: CAMExtractor | str = "cam",
        slice_axis: int = -1,
        positive_class: int = 1,
        slice_batch: int = 16,
        normalize: bool = True,
    ) -> None:
        super().__init__(extractor, positive_class, normalize)
        if isinstance(slice_axis, bool) or slice_axis not in (-1, 0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1, 2 or -1 (a volume's array axis), got {slice_axis!r}.")
        if isinstance(slice_batch, bool) or not isinstance(slice_batch, int) or slice_batch < 1:
            raise ValueError(f"slice_batch must be a positive int, got {slice_batch!r}.")
        self.slice_axis = int(slice_axis) % 3
        self.slice_batch = slice_batch

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.part_extractor!r}, slice_axis={self.slice_axis}, "
            f"positive_class={self.positive_class}, slice_batch={self.slice_batch}, "
            f"normalize={self.normalize})"
        )

    def __call__(
        self, net: nn.Module, x: torch.Tensor, class_idx: ClassSelection = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, K), maps (B, 1, *spatial))`` of a 2D batch or of volumes; see the class docstring."""
        logits, maps, _ = self.extract(net, x, class_idx)
        return logits, maps

    def extract(
        self, net: nn.Module, x: torch.Tensor, class_idx: ClassSelection = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As :meth:`__call__`, plus the per-slice logits ``(B, S, K)`` of volumes (``None`` for a 2D batch),
        ``S`` slices along ``slice_axis``."""
        x_plain = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
        if x_plain.ndim == 4:
            return (*self._finish(*self.part_extractor(net, x_plain, class_idx), x), None)
        if x_plain.ndim != 5:
            raise ValueError(
                f"{type(self).__name__}: x must be a 2D batch (B, C, X, Y) or volumes (B, C, X, Y, Z), "
                f"got shape {tuple(x_plain.shape)}."
            )
        batch = x_plain.shape[0]
        classes = self._classes(class_idx, batch, "slices")
        # (B, C, X, Y, Z) -> (B * S, C, *in-plane), slice-major within each volume
        moved = x_plain.movedim(self.slice_axis + 2, 1)
        n_slices, in_plane = moved.shape[1], tuple(moved.shape[3:])
        slices = moved.reshape(batch * n_slices, x_plain.shape[1], *in_plane)
        slice_classes = classes.to(x_plain.device).repeat_interleave(n_slices)
        logits_parts, map_parts = [], []
        for start in range(0, batch * n_slices, self.slice_batch):
            stop = start + self.slice_batch
            logits, maps = self.part_extractor(net, slices[start:stop], slice_classes[start:stop])
            logits_parts.append(logits)
            map_parts.append(maps)
        slice_logits = torch.cat(logits_parts).reshape(batch, n_slices, -1)  # (B, S, K)
        best = self._most_positive(slice_logits)
        logits = slice_logits[torch.arange(batch, device=slice_logits.device), best]
        maps = torch.cat(map_parts).reshape(batch, n_slices, 1, *in_plane).movedim(1, self.slice_axis + 2)
        return (*self._finish(logits, maps, x), slice_logits)


class SlidingWindowExtractor(_PartwiseExtractor):
    """A 3D net's extractor over a volume larger than its input: MONAI's sliding windows, one CAM volume.

    Each window (``roi_size``, overlapping by ``overlap``) goes through the wrapped extractor, whose **raw**
    map (upsampled to the window) is stitched by :func:`monai.inferers.sliding_window_inference` with MONAI's
    importance weighting (``mode``: ``"gaussian"`` weights window centres over their borders, where the
    receptive field is cut; ``"constant"`` averages); the stitched volume is then min-max normalised once, so
    the maps of different windows keep their relative scale (the raw CAM of one net is one linear read-out of
    its features, comparable across windows). The volume's logits are those of its window with the highest
    probability of ``positive_class`` (a volume holds a lesion when one of its windows does). A volume no
    larger than ``roi_size`` along every axis goes to the wrapped extractor unchanged (MONAI would pad it).

    Args:
        extractor: the extractor of one window (an instance or a name of :func:`get_extractor`).
        roi_size: the window size (the net's training input size is the natural choice).
        overlap: the windows' overlap, a fraction of ``roi_size``.
        mode: ``"gaussian"`` or ``"constant"`` (MONAI's ``BlendMode``).
        sw_batch_size: windows per call of the wrapped extractor.
        positive_class: the lesion class, whose per-window probability picks the window that gives the
            volume's logits.
        normalize: see :class:`CAMExtractor`.

    The windows run volume by volume, so per-window logits stay with their volume; as for
    :class:`SliceBySliceExtractor`, ``class_idx=None`` is refused for volumes larger than ``roi_size``.
    """

    def __init__(
        self,
        extractor: CAMExtractor | str = "cam",
        roi_size: Sequence[int] | int = 96,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sw_batch_size: int = 1,
        positive_class: int = 1,
        normalize: bool = True,
    ) -> None:
        super().__init__(extractor, positive_class, normalize)
        if mode not in ("gaussian", "constant"):
            raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}.")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
        self.roi_size = roi_size
        self.overlap, self.mode, self.sw_batch_size = float(overlap), mode, int(sw_batch_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.part_extractor!r}, roi_size={self.roi_size}, "
            f"overlap={self.overlap}, mode={self.mode!r}, positive_class={self.positive_class}, "
            f"normalize={self.normalize})"
        )

    def _roi(self, spatial_dims: int) -> tuple[int, ...]:
        roi = (self.roi_size,) * spatial_dims if isinstance(self.roi_size, int) else tuple(self.roi_size)
        if len(roi) != spatial_dims or any(int(r) < 1 for r in roi):
            raise ValueError(f"roi_size {self.roi_size} for an input with {spatial_dims} spatial dims.")
        return tuple(int(r) for r in roi)

    def __call__(
        self, net: nn.Module, x: torch.Tensor, class_idx: ClassSelection = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, K), maps (B, 1, *spatial))``; see the class docstring."""
        from monai.inferers import sliding_window_inference

        x_plain = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
        roi = self._roi(x_plain.ndim - 2)
        if all(s <= r for s, r in zip(x_plain.shape[2:], roi, strict=True)):
            logits, maps = self.part_extractor(net, x_plain, class_idx)
            return self._finish(logits, maps, x)
        batch = x_plain.shape[0]
        classes = self._classes(class_idx, batch, "windows")
        logits_out, maps_out = [], []
        for b in range(batch):
            window_logits: list[torch.Tensor] = []

            def predictor(windows: torch.Tensor, _b: int = b, _logits: list = window_logits) -> torch.Tensor:
                cls = classes[_b : _b + 1].expand(windows.shape[0]).to(windows.device)
                logits, maps = self.part_extractor(net, windows, cls)
                _logits.append(logits)
                return maps

            stitched = sliding_window_inference(
                x_plain[b : b + 1], roi, self.sw_batch_size, predictor, overlap=self.overlap, mode=self.mode
            )
            all_logits = torch.cat(window_logits)  # (windows, K)
            best = int(self._most_positive(all_logits[None])[0])
            logits_out.append(all_logits[best : best + 1])
            maps_out.append(stitched.as_tensor() if isinstance(stitched, MetaTensor) else stitched)
        return self._finish(torch.cat(logits_out), torch.cat(maps_out).float(), x)


#: extractor name -> factory (keyword arguments: ``normalize``, and ``layer_name`` for the Grad-CAMs)
EXTRACTORS: dict[str, Callable[..., CAMExtractor]] = {
    "cam": ForwardCAM,
    "gradcam": partial(GradCAMExtractor, plusplus=False),
    "gradcampp": partial(GradCAMExtractor, plusplus=True),
    "layercam": LayerCAMExtractor,
}


def available_extractors() -> tuple[str, ...]:
    """The names :func:`get_extractor` accepts."""
    return tuple(EXTRACTORS)


def get_extractor(extractor: str | CAMExtractor = "cam", **kwargs: Any) -> CAMExtractor:
    """An extractor by name (``"cam"``, ``"gradcam"``, ``"gradcampp"``) with ``kwargs``, or ``extractor``
    itself when it already is one (then ``kwargs`` must be empty)."""
    if isinstance(extractor, CAMExtractor):
        if kwargs:
            raise ValueError(f"get_extractor: options {sorted(kwargs)} given with an extractor instance.")
        return extractor
    if extractor not in EXTRACTORS:
        raise ValueError(
            f"unknown CAM extractor {extractor!r}; valid extractors: {', '.join(available_extractors())}."
        )
    return EXTRACTORS[extractor](**kwargs)


def inference_extractor(
    extractor: str | CAMExtractor = "cam",
    flip_axes: Sequence[int] = (),
    spatial_dims: int = 2,
    slice_axis: int | None = None,
    positive_class: int | str = 1,
    slice_batch: int = 16,
    roi_size: Sequence[int] | int | None = None,
    overlap: float = 0.25,
) -> CAMExtractor:
    """The extractor of the bundle's inference and evaluation: ``extractor`` (e.g. a method's) with flip
    test-time augmentation along ``flip_axes`` (none when empty), wrapped in a :class:`SliceBySliceExtractor`
    along ``slice_axis`` for a 2D net (``spatial_dims=2``) unless ``slice_axis`` is ``None``, or in a
    :class:`SlidingWindowExtractor` of ``roi_size`` windows for a 3D net when ``roi_size`` is given.

    ``positive_class`` is the lesion class that picks a volume's slice (a class-selection name such as
    ``"label"`` or ``"pred"`` falls back to class 1, the lesion class of a present/absent classifier).
    """
    out = get_extractor(extractor)
    if flip_axes:
        out = out.with_flip_axes(flip_axes)
    positive = (
        positive_class if isinstance(positive_class, int) and not isinstance(positive_class, bool) else 1
    )
    if spatial_dims == 2 and slice_axis is not None:
        out = SliceBySliceExtractor(
            out, slice_axis=slice_axis, positive_class=positive, slice_batch=slice_batch
        )
    elif spatial_dims == 3 and roi_size is not None:
        out = SlidingWindowExtractor(out, roi_size=roi_size, overlap=overlap, positive_class=positive)
    return out
