"""MONAI's ``SupervisedTrainer`` running any WSOL method of :mod:`monai_wsol.methods`.

A method (:class:`~monai_wsol.methods.MethodSpec`) differs from plain classification in three places only, and
each maps onto a hook MONAI's trainer already has:

- a batch-level augmentation (CutMix mixes images and returns soft labels): :class:`MethodBatch`, the
  trainer's ``prepare_batch``;
- a training forward that needs the labels (ACoL erases head A's map of the GT class): :class:`MethodInferer`,
  the trainer's ``inferer``, which receives the labels from :class:`MethodBatch`;
- its loss (ACoL sums its two heads' losses): the trainer's ``loss_function``.

Two more serve the bounds of :mod:`monai_wsol.methods` (``supervised``, ``prior``): the loss target may be
another batch key than the label (``MethodSpec.target_key``: the GT ``mask`` for ``supervised``;
:class:`MethodBatch` hands it to the loss and the class labels to the forward, and the output's ``label`` is
the class label again once the loss is computed, for the metrics); and a method may be fitted on the
training data once before the first iteration (``MethodSpec.fit``: ``prior``'s mean mask), which
:class:`MethodTrainer` does when it starts, on :func:`training_items` (the training preprocessing without
its random transforms).

Training on patches (``bag_size`` > 1: the training preprocessing cut each volume into ``bag_size`` random
patches, :func:`~monai_wsol.data.make_preprocessing`'s ``patch_size``) is multiple-instance learning with the
rule of sliding-window inference: a bag's logits are those of its patch most likely to hold a lesion (lowest
probability of class 0), and the loss compares them with the volume's label. :class:`MethodBatch` checks that
a bag's patches share one label and keeps one per bag; :class:`MethodInferer` pools the forward's logits.

Everything else (optimiser step, AMP, gradient accumulation, handlers, DDP) is MONAI's, so the bundle's
``train.json`` and the benchmark run every method through the same loop. A forward that returns more than the
logits (ACoL's two heads) is reduced to the logits once the loss is computed, before the post-processing and
the metrics read ``pred``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch, default_prepare_batch
from monai.inferers import Inferer
from monai.transforms import Compose, Randomizable
from monai.utils import CommonKeys, convert_to_tensor

from monai_wsol.methods import MethodSpec

__all__ = [
    "MethodBatch",
    "MethodInferer",
    "MethodTrainer",
    "bag_logits",
    "logits_of",
    "run_method_training",
    "training_items",
]

logger = logging.getLogger(__name__)


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


def bag_logits(logits: torch.Tensor, bag_size: int) -> torch.Tensor:
    """``(B * bag_size, K)`` logits of consecutive bags of patches -> ``(B, K)``: each bag's patch most
    likely to hold a lesion (the lowest softmax probability of class 0, "no lesion"; the first on ties)."""
    if logits.ndim != 2 or logits.shape[0] % bag_size:
        raise ValueError(f"logits of shape {tuple(logits.shape)} are not bags of {bag_size} patches.")
    bags = logits.reshape(-1, bag_size, logits.shape[1])
    best = torch.softmax(bags.detach().float(), dim=-1)[..., 0].argmin(dim=1)
    return bags[torch.arange(bags.shape[0], device=bags.device), best]


def _check_bags(method: MethodSpec, bag_size: int) -> int:
    bag_size = int(bag_size)
    if bag_size < 1:
        raise ValueError(f"bag_size (patches per image) must be >= 1, got {bag_size}.")
    if bag_size > 1 and (
        method.batch_fn is not None or method.target_key != CommonKeys.LABEL or method.fit is not None
    ):
        raise ValueError(
            f"method {method.name!r} cannot train on patches (patch_size): bags of patches pool the logits "
            f"of one classifier, but it mixes batches, trains on masks or is fitted. Train it on whole "
            f"images (patch_size null)."
        )
    return bag_size


class MethodBatch(PrepareBatch):
    """``prepare_batch`` of a method: image, label (and loss target) to the device, then the method's batch
    augmentation.

    Returns ``(images, targets, (), {"labels": labels})`` so that :class:`MethodInferer` can hand the
    (possibly mixed) labels to forwards that need them. ``targets`` is the batch's ``method.target_key``
    entry: the labels themselves (then ``labels`` is ``targets``) or, for ``supervised``, the GT masks.

    Args:
        method: the method; its ``batch_fn`` (``(images, labels) -> (images, labels)``) may be ``None``.
        bag_size: patches per image (consecutive in the batch); the labels returned are one per bag.
    """

    def __init__(self, method: MethodSpec, bag_size: int = 1) -> None:
        self.batch_fn = method.batch_fn
        self.target_key = method.target_key
        self.method_name = method.name
        self.bag_size = _check_bags(method, bag_size)

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
        if self.bag_size > 1:
            labels = self._bag_labels(labels)
        targets = labels
        if self.target_key != CommonKeys.LABEL:
            target = batchdata.get(self.target_key) if isinstance(batchdata, Mapping) else None
            if target is None:
                raise ValueError(
                    f"method {self.method_name!r} trains on '{self.target_key}': the training batches carry "
                    f"none. Build the training preprocessing with the method's transforms "
                    f"(make_preprocessing('train', ..., method_transforms=spec.train_transforms)), which "
                    f"load it."
                )
            targets = target.to(device=device, non_blocking=non_blocking, **kwargs)
        if self.batch_fn is not None:
            images, targets = self.batch_fn(images, targets)
            if self.target_key == CommonKeys.LABEL:
                labels = targets
        return images, targets, (), {"labels": labels}

    def _bag_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.shape[0] % self.bag_size:
            raise ValueError(
                f"a batch of {labels.shape[0]} patches is not bags of {self.bag_size} (patch_samples): the "
                f"training loader must collate each image's patches together (MONAI's list_data_collate)."
            )
        bags = labels.reshape(-1, self.bag_size, *labels.shape[1:])
        if not torch.equal(bags, bags[:, :1].expand_as(bags)):
            raise ValueError(
                f"the patches of one bag carry different labels ({bags.flatten(1).tolist()}): each image's "
                f"{self.bag_size} patches must follow each other in the batch."
            )
        return bags[:, 0]


class MethodInferer(Inferer):
    """The trainer's inferer: the method's training forward ``forward_fn(network, images, labels)``; with
    ``bag_size`` > 1, the logits of each bag's most positive patch (:func:`bag_logits`)."""

    def __init__(self, method: MethodSpec, bag_size: int = 1) -> None:
        super().__init__()
        self.forward_fn = method.forward_fn
        self.method_name = method.name
        self.bag_size = _check_bags(method, bag_size)

    def __call__(
        self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, labels: Any = None, **kwargs: Any
    ) -> Any:
        if self.bag_size == 1:
            return self.forward_fn(network, inputs, labels)
        output = self.forward_fn(network, inputs, None)
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"method {self.method_name!r} cannot train on patches (patch_size): its training forward "
                f"returns {type(output).__name__}, not one set of logits to pool over a bag."
            )
        return bag_logits(output, self.bag_size)


class MethodTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose batch preparation, forward and loss are those of ``method``.

    Args:
        method: the method (:func:`monai_wsol.methods.build_method`).
        loss_function: ``None`` (default) for the method's loss; a replacement ``loss(output, target)`` must
            accept the method's training output (e.g. class weights for plain classification).
        bag_size: patches per training image (the preprocessing's ``patch_samples`` with a ``patch_size``);
            1: whole images.
        args, kwargs: those of :class:`~monai.engines.SupervisedTrainer`. ``network`` defaults to
            ``method.net`` (pass the device-placed or DDP-wrapped module explicitly); ``prepare_batch`` and
            ``inferer`` are the method's and must not be given.
    """

    def __init__(
        self, *args: Any, method: MethodSpec, loss_function: Any = None, bag_size: int = 1, **kwargs: Any
    ) -> None:
        for name in ("prepare_batch", "inferer"):
            if name in kwargs:
                raise TypeError(
                    f"MethodTrainer: '{name}' comes from the method {method.name!r}; do not pass it."
                )
        kwargs.setdefault("network", method.net)
        super().__init__(
            *args,
            prepare_batch=MethodBatch(method, bag_size),
            inferer=MethodInferer(method, bag_size),
            loss_function=method.loss_fn if loss_function is None else loss_function,
            **kwargs,
        )
        self.method = method
        self.add_event_handler(IterationEvents.LOSS_COMPLETED, self._keep_logits)
        if method.fit is not None:
            self.add_event_handler(Events.STARTED, self._fit_method)

    @staticmethod
    def _keep_logits(engine: MethodTrainer) -> None:
        # the loss has read the full output; post-processing and metrics see the logits and the class labels
        output = engine.state.output
        output[CommonKeys.PRED] = logits_of(output[CommonKeys.PRED])
        bag_size = engine.prepare_batch.bag_size
        if bag_size > 1:  # one output item per bag (decollation pairs items): the bag's patches stacked
            images = output[CommonKeys.IMAGE]
            output[CommonKeys.IMAGE] = images.reshape(-1, bag_size, *images.shape[1:])
        if engine.method.target_key != CommonKeys.LABEL:
            labels = convert_to_tensor(engine.state.batch[CommonKeys.LABEL], track_meta=False)
            output[CommonKeys.LABEL] = labels.to(output[CommonKeys.PRED].device)

    @staticmethod
    def _fit_method(engine: MethodTrainer) -> None:
        # before the first iteration (and before a resumed checkpoint is loaded, which then overwrites it)
        t0 = time.perf_counter()
        engine.method.fit(training_items(engine.data_loader))
        logger.info(
            "method %r fitted on the training data in %.1f s", engine.method.name, time.perf_counter() - t0
        )


def _deterministic(transform: Any) -> Any:
    """``transform`` without its random parts (a ``Compose`` loses its ``Randomizable`` members)."""
    if transform is None:
        return None
    if isinstance(transform, Compose):
        kept = [
            _deterministic(t) if type(t) is Compose else t  # a nested Compose kept by flatten(): recurse
            for t in transform.flatten().transforms
            if type(t) is Compose or not isinstance(t, Randomizable)
        ]
        return Compose(kept, map_items=transform.map_items, unpack_items=transform.unpack_items)
    return None if isinstance(transform, Randomizable) else transform


def training_items(loader: Iterable) -> Iterator[dict[str, Any]]:
    """Every item of a training loader's data set, through its preprocessing without the random transforms.

    The data are the data set's ``data`` (MONAI ``Dataset`` / ``CacheDataset``; a ``torch`` ``Subset`` of one
    is followed), each item is a fresh copy through the data set's transform with its ``Randomizable``
    members (random flips, Hide-and-Seek, ...) left out: what a method's ``fit`` sees is deterministic and
    the same on every rank, whatever the sampler and the random state. Every item is read once.

    Args:
        loader: a ``DataLoader`` (or the data set itself).
    """
    dataset = getattr(loader, "dataset", loader)
    indices = None
    if isinstance(dataset, torch.utils.data.Subset):
        indices, dataset = list(dataset.indices), dataset.dataset
    data = getattr(dataset, "data", None)
    if data is None:
        raise TypeError(
            f"training_items needs a data set with the items in `.data` (MONAI Dataset / CacheDataset), got "
            f"{type(dataset).__name__}."
        )
    transform = _deterministic(getattr(dataset, "transform", None))
    for i in range(len(data)) if indices is None else indices:
        item = dict(data[i])
        yield transform(item) if transform is not None else item


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
