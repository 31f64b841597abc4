"""MONAI's ``SupervisedTrainer`` running any WSOL method of :mod:`monai_wsol.methods`.

A method (:class:`~monai_wsol.methods.MethodSpec`) differs from plain classification in three places only, and
each maps onto a hook MONAI's trainer already has:

- a batch-level augmentation (CutMix mixes images and returns soft labels): :class:`MethodBatch`, the
  trainer's ``prepare_batch``;
- a training forward that needs the labels (ACoL erases head A's map of the GT class): :class:`MethodInferer`,
  the trainer's ``inferer``, which receives the labels from :class:`MethodBatch`;
- its loss (ACoL sums its two heads' losses): the trainer's ``loss_function``.

Everything else (optimiser step, AMP, gradient accumulation, handlers, DDP) is MONAI's, so the bundle's
``train.json`` and the benchmark run every method through the same loop. A forward that returns more than the
logits (ACoL's two heads) is reduced to the logits once the loss is computed, before the post-processing and
the metrics read ``pred``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch, default_prepare_batch
from monai.inferers import Inferer
from monai.utils import CommonKeys

from monai_wsol.methods import MethodSpec

__all__ = ["MethodBatch", "MethodInferer", "MethodTrainer", "logits_of", "run_method_training"]


def logits_of(output: Any) -> torch.Tensor:
    """The classification logits (B, K) of a training forward's output.

    When the forward returns several heads, the first one.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Sequence) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"a training forward must return logits or a sequence of them, got {type(output).__name__}."
    )


class MethodBatch(PrepareBatch):
    """``prepare_batch`` of a method: image and label to the device, then the method's batch augmentation.

    Returns ``(images, targets, (), {"labels": targets})`` so that :class:`MethodInferer` can hand the
    (possibly mixed) labels to forwards that need them.

    Args:
        method: the method; its ``batch_fn`` (``(images, labels) -> (images, labels)``) may be ``None``.
    """

    def __init__(self, method: MethodSpec) -> None:
        self.batch_fn = method.batch_fn

    def set_random_state(self, seed: int | None = None, state: Any = None) -> MethodBatch:
        """Reseed the batch augmentation (see :class:`~monai_wsol.engines.EpochSeed`)."""
        if self.batch_fn is not None and hasattr(self.batch_fn, "set_random_state"):
            self.batch_fn.set_random_state(seed, state)
        return self

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, Any]]:
        images, labels = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if labels is None:
            raise ValueError("training batches need a 'label' (the image-level class).")
        if self.batch_fn is not None:
            images, labels = self.batch_fn(images, labels)
        return images, labels, (), {"labels": labels}


class MethodInferer(Inferer):
    """The trainer's inferer: the method's training forward ``forward_fn(network, images, labels)``."""

    def __init__(self, method: MethodSpec) -> None:
        super().__init__()
        self.forward_fn = method.forward_fn

    def __call__(
        self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, labels: Any = None, **kwargs: Any
    ) -> Any:
        return self.forward_fn(network, inputs, labels)


class MethodTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose batch preparation, forward and loss are those of ``method``.

    Args:
        method: the method (:func:`monai_wsol.methods.build_method`).
        loss_function: ``None`` (default) for the method's loss; a replacement ``loss(output, target)`` must
            accept the method's training output (e.g. class weights for plain classification).
        args, kwargs: those of :class:`~monai.engines.SupervisedTrainer`. ``network`` defaults to
            ``method.net`` (pass the device-placed or DDP-wrapped module explicitly); ``prepare_batch`` and
            ``inferer`` are the method's and must not be given.
    """

    def __init__(self, *args: Any, method: MethodSpec, loss_function: Any = None, **kwargs: Any) -> None:
        for name in ("prepare_batch", "inferer"):
            if name in kwargs:
                raise TypeError(
                    f"MethodTrainer: '{name}' comes from the method {method.name!r}; do not pass it."
                )
        kwargs.setdefault("network", method.net)
        super().__init__(
            *args,
            prepare_batch=MethodBatch(method),
            inferer=MethodInferer(method),
            loss_function=method.loss_fn if loss_function is None else loss_function,
            **kwargs,
        )
        self.method = method
        self.add_event_handler(IterationEvents.LOSS_COMPLETED, self._keep_logits)

    @staticmethod
    def _keep_logits(engine: MethodTrainer) -> None:
        # the loss has read the full output; post-processing and metrics see the logits
        engine.state.output[CommonKeys.PRED] = logits_of(engine.state.output[CommonKeys.PRED])


def run_method_training(
    method: MethodSpec,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    epochs: int,
    ckpt_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    seed: int = 0,
    randomizables: Sequence[Any] = (),
) -> MethodTrainer:
    """Train ``method`` with :class:`MethodTrainer` from Python (the bundle's ``train.json`` wires the same).

    Every epoch is reseeded from ``seed + epoch`` (:class:`~monai_wsol.engines.EpochSeed`: global RNGs, the
    method's batch augmentation and ``randomizables``, e.g. the loader's transform), a checkpoint of the
    model, optimizer, scheduler and trainer is written atomically after each epoch, and a call on a folder
    that holds one resumes from it, so an interrupted run ends with the weights of an uninterrupted one.

    Returns:
        the trainer after its run (``trainer.network`` holds the trained weights).
    """
    from monai.handlers import CheckpointLoader, LrScheduleHandler

    from monai_wsol.engines.handlers import AtomicCheckpointSaver, EpochSeed
    from monai_wsol.engines.training import find_last_checkpoint

    net = method.net.to(device)
    trainer = MethodTrainer(
        device=torch.device(device),
        max_epochs=int(epochs),
        train_data_loader=loader,
        network=net,
        optimizer=optimizer,
        method=method,
        train_handlers=[
            EpochSeed(seed, [*randomizables, method.batch_fn]),
            LrScheduleHandler(lr_scheduler, print_lr=False),
        ],
        amp=False,
    )
    save_dict = {"model": net, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "trainer": trainer}
    last = find_last_checkpoint(ckpt_dir)
    if last is not None:
        CheckpointLoader(last, save_dict, map_location=torch.device(device)).attach(trainer)
    AtomicCheckpointSaver(str(ckpt_dir), save_dict, save_interval=1, n_saved=1, epoch_level=True).attach(
        trainer
    )
    trainer.run()
    return trainer
