"""Post-hoc localization maps (Grad-CAM, Grad-CAM++) of a trained classifier, via ``monai.visualize``.

``monai.visualize.GradCAM`` / ``GradCAMpp`` do the maths; this module only makes them safe to call from a
trainer or an evaluator, working around known behaviours of MONAI 1.6.1:

- they run a backward pass, so they fail inside ``torch.no_grad()`` / ``torch.inference_mode()`` (which ignite
  evaluators use): the call is wrapped in ``inference_mode(False)`` + ``enable_grad()`` on a fresh input copy;
- ``ModelWithHooks`` selects the class score with ``logits[:, class_idx]``, which for a batch of B samples
  gives a (B, B) matrix: Grad-CAM then mixes the gradients of the other samples' classes and Grad-CAM++ fails
  on the shape. A subclass overriding only ``class_score`` takes each sample's own score instead, so a batch
  runs in one forward/backward pass;
- it registers forward/backward hooks that it never removes, switches the target layer's ``inplace`` off,
  calls ``model.zero_grad()`` and ends with ``model.train()`` on the whole net (losing per-module modes such
  as frozen batch norm). Hooks, ``inplace``, parameter gradients and every module's training flag are restored
  here;
- its default post-processing maps (min, max) to (1, 0), i.e. it *inverts* the map. The identity is used
  instead, so larger means more class evidence, as for CAM; ``normalize=True`` adds a per-sample min-max to
  [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from monai.utils import convert_to_tensor
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks

from monai_wsol.transforms.functional import normalize_cam

__all__ = ["gradcam", "preserved_module_state"]


def _hook_dicts(module: nn.Module) -> dict[str, dict]:
    # every hook registry of a module is a dict attribute whose name contains "hooks"
    # (_forward_hooks, _backward_hooks, _forward_hooks_with_kwargs, ...), whatever the torch version
    return {k: v for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict)}


@contextmanager
def preserved_module_state(net: nn.Module) -> Iterator[None]:
    """Undo, on exit, what hook-based tools do to ``net``: hooks added, ``inplace`` flags changed,
    ``full backward hook`` flags set, parameter ``.grad`` overwritten, training flags changed."""
    modules = list(net.modules())
    training = [m.training for m in modules]
    inplace = [m.__dict__.get("inplace") for m in modules]
    full_bw = [m.__dict__.get("_is_full_backward_hook") for m in modules]
    hook_keys = [{name: set(d) for name, d in _hook_dicts(m).items()} for m in modules]
    params = list(net.parameters())
    grads = [p.grad for p in params]
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
        for p, g in zip(params, grads, strict=True):
            p.grad = g


class _PerSampleScore(ModelWithHooks):
    """MONAI's ``ModelWithHooks`` scoring each sample's own class, so a whole batch runs in one pass.

    MONAI's ``class_score`` is ``logits[:, class_idx].squeeze()``: with (B,) indices that is a (B, B) matrix
    whose sum back-propagates every sample's class into every sample. Here the score is
    ``logits[i, class_idx[i]]``, shaped (B, 1, *[1] * spatial_dims) so that Grad-CAM++'s
    ``score.exp() * grad`` broadcasts per sample; ``score.sum().backward()`` then gives each sample its own
    gradient (in eval mode the samples of a batch do not interact).
    """

    def __init__(self, nn_module: nn.Module, target_layer: str, spatial_dims: int) -> None:
        super().__init__(nn_module, target_layer, register_forward=True, register_backward=True)
        self.spatial_dims = spatial_dims

    def class_score(self, logits: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:  # type: ignore
        idx = torch.as_tensor(class_idx, device=logits.device).reshape(-1, 1).long()
        if bool(((idx < 0) | (idx >= logits.shape[1])).any()):
            raise ValueError(
                f"gradcam: class_idx must be in [0, {logits.shape[1] - 1}], got {idx.flatten().tolist()}."
            )
        return logits.gather(1, idx).reshape(-1, 1, *([1] * self.spatial_dims))


def _class_indices(
    class_idx: int | torch.Tensor | None, batch: int, k: int | None = None
) -> torch.Tensor | None:
    """None, an int or (B,) indices -> None or a LongTensor (B,)."""
    if class_idx is None:
        return None
    idx = torch.as_tensor(class_idx).reshape(-1).long()
    if idx.numel() == 1:
        return idx.expand(batch).clone()
    if idx.numel() != batch:
        raise ValueError(f"gradcam: class_idx has {idx.numel()} entries for a batch of {batch}.")
    return idx


def gradcam(
    net: nn.Module,
    x: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    plusplus: bool = False,
    layer_name: str | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Grad-CAM (or Grad-CAM++) maps of ``net`` for a batch, at input resolution.

    Args:
        net: a classifier returning logits (B, K); its ``cam_layer_name`` attribute names the conv layer whose
            activations and gradients are used (or pass ``layer_name``).
        x: input batch (B, C_in, *spatial), 2D or 3D.
        class_idx: the class to explain: None (the predicted class of each sample), one int for all, or one
            per sample (B,).
        plusplus: use Grad-CAM++ instead of Grad-CAM.
        layer_name: overrides ``net.cam_layer_name``.
        normalize: min-max normalise each map to [0, 1].

    Returns:
        (B, 1, *spatial) float maps (ReLU-ed, so >= 0), upsampled (bi/trilinearly) to the input size,
        detached.
        The net is left as it was: no hooks added, same training flags, same parameter gradients.
    """
    name = layer_name if layer_name is not None else getattr(net, "cam_layer_name", None)
    if not isinstance(name, str):
        raise ValueError("gradcam: net has no `cam_layer_name`; pass layer_name=<module name>.")
    if name not in dict(net.named_modules()):
        raise ValueError(f"gradcam: layer {name!r} is not a module of the net.")
    x_t = convert_to_tensor(x, track_meta=False)
    if x_t.ndim < 3:
        raise ValueError(f"gradcam: x must be (B, C, *spatial), got shape {tuple(x_t.shape)}.")
    classes = _class_indices(class_idx, x_t.shape[0])
    cam_cls = GradCAMpp if plusplus else GradCAM
    with preserved_module_state(net), torch.inference_mode(False), torch.enable_grad():
        hooked = _PerSampleScore(net, name, spatial_dims=x_t.ndim - 2)
        cam = cam_cls(nn_module=hooked, target_layers=name, postprocessing=lambda m: m)
        # a fresh, grad-requiring copy so that the backward pass exists even if x is an inference tensor or
        # every parameter is frozen
        x_in = x_t.clone().requires_grad_(True)
        out = cam(x_in, class_idx=None if classes is None else classes.to(x_in.device)).detach()
    return normalize_cam(out, spatial_dims=out.ndim - 2) if normalize else out
