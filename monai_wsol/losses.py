"""Training losses of the WSOL methods: cross-entropy for hard or soft labels, and ACoL's two-head sum.

Nets (ACoL) and the method registry both import from here, so neither depends on the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

__all__ = ["acol_loss", "classification_loss"]


def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for hard or soft labels.

    Args:
        logits: (B, K), K >= 2.
        target: class indices (B,) or (B, 1) (any integer or integral float dtype), or class probabilities
            (B, K) as floats (one-hot, or mixed by CutMix); each row of a soft target should sum to 1.

    Returns:
        The mean loss over the batch, a scalar.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"classification_loss: logits must be (B, K) with K >= 2, got {tuple(logits.shape)}."
        )
    target = convert_to_tensor(target, track_meta=False).to(logits.device)
    if target.shape == logits.shape and target.dtype.is_floating_point:
        return F.cross_entropy(logits, target.to(logits.dtype))  # soft-label cross-entropy
    target = target.reshape(-1)
    if target.numel() != logits.shape[0]:
        raise ValueError(
            f"classification_loss: target must be (B,), (B, 1) or (B, K) for logits {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}."
        )
    return F.cross_entropy(logits, target.long())


def acol_loss(
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Sequence[torch.Tensor], target: torch.Tensor
) -> torch.Tensor:
    """ACoL training loss: the sum of the classification losses of both heads.

    Args:
        output: ``(logits_a, logits_b)``, each (B, K), from a training-mode ACoL classifier (a single (B, K)
            tensor is also accepted, e.g. in eval mode).
        target: class indices (B,) / (B, 1) or soft labels (B, K).

    Returns:
        A scalar.
    """
    if isinstance(output, torch.Tensor):
        return classification_loss(output, target)
    return sum((classification_loss(o, target) for o in output), torch.zeros((), device=target.device))
