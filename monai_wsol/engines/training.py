"""Helpers the bundle's training configs call: run folders, resume, deterministic sampling, DDP set-up.

The workflow itself is MONAI's (``SupervisedTrainer`` + :class:`~monai_wsol.engines.inference.CAMEvaluator`
with MONAI/ignite handlers, wired in ``bundle/configs/train.json``); this module holds only what a JSON config
cannot express in one line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.handlers import LrScheduleHandler, ValidationHandler
from torch.utils.data import Dataset, DistributedSampler

from monai_wsol.engines.handlers import EpochSeed, NonFiniteLossGuard, is_main_process
from monai_wsol.io_utils import atomic_write_json, to_jsonable

__all__ = [
    "LAST_CHECKPOINT_GLOB",
    "find_last_checkpoint",
    "resume_checkpoint",
    "make_sampler",
    "prepare_run_dir",
    "scores_and_labels",
    "probs_and_onehot",
    "attach_handlers",
    "init_distributed",
    "distributed_device",
    "broadcast_object",
    "RANK_INDEPENDENT_HANDLERS",
    "default_bundle_root",
]

logger = logging.getLogger(__name__)

#: training handlers every DDP rank must run (the others, logging and writing, run on rank 0 only)
RANK_INDEPENDENT_HANDLERS = (NonFiniteLossGuard, EpochSeed, LrScheduleHandler, ValidationHandler)

#: file names of MONAI ``CheckpointSaver``'s epoch-interval checkpoints (``checkpoint_epoch=<N>.pt``)
LAST_CHECKPOINT_GLOB = "checkpoint_epoch=*.pt"
_EPOCH_RE = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def default_bundle_root(argv: Sequence[str] | None = None) -> str:
    """The bundle folder when a config does not get ``--bundle_root``: the parent of the ``configs/`` folder.

    ``python -m monai.bundle run ... --config_file <bundle>/configs/train.json`` names the config files on the
    command line; their folder's parent is the bundle (MONAI's ``ConfigWorkflow`` takes the same folder as the
    config root). Otherwise (a config run from Python without ``bundle_root``) it is the ``bundle/`` folder of
    the source checkout this package lives in. Every default path of the bundle's configs is relative to it,
    so a bundle runs from any working directory.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        value = None
        if arg == "--config_file" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            first = re.split(r"[\[\],'\" ]+", value.strip())
            files = [f for f in first if f]
            if files:
                folder = Path(files[0]).resolve().parent
                return str(folder.parent if folder.name == "configs" else folder)
    return str(Path(__file__).resolve().parents[2] / "bundle")


def find_last_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """The ``checkpoint_epoch=<N>.pt`` with the largest ``N`` in ``ckpt_dir`` (``None`` if there is none)."""
    found = []
    for p in Path(ckpt_dir).glob(LAST_CHECKPOINT_GLOB):
        m = _EPOCH_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), str(p)))
    return max(found)[1] if found else None


def resume_checkpoint(resume: bool | str | None, ckpt_dir: str | os.PathLike) -> str | None:
    """Resolve the bundle's ``resume`` option to a checkpoint path (``None``: start afresh).

    Args:
        resume: ``False``/``None``: no resume; ``True``: the last epoch checkpoint in ``ckpt_dir``; a string:
            that checkpoint file.
        ckpt_dir: the run's checkpoint folder.

    Raises:
        FileNotFoundError: ``resume`` asked for a checkpoint that does not exist.
    """
    if (
        resume is None
        or resume is False
        or (isinstance(resume, str) and resume.lower() in ("", "false", "0"))
    ):
        return None
    if isinstance(resume, str) and resume.lower() not in ("true", "1"):
        if not os.path.isfile(resume):
            raise FileNotFoundError(f"resume: checkpoint file '{resume}' does not exist.")
        return resume
    path = find_last_checkpoint(ckpt_dir)
    if path is None:
        raise FileNotFoundError(
            f"resume=true but no '{LAST_CHECKPOINT_GLOB}' in '{ckpt_dir}': "
            "give the run's name (run_name) of the run to continue, or a checkpoint path as resume."
        )
    return path


def make_sampler(
    dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> DistributedSampler:
    """A ``DistributedSampler`` over ``dataset`` for one process or for every rank of a process group.

    Used even without distribution: MONAI's workflows call ``sampler.set_epoch(epoch)`` on it each epoch, so
        the
    shuffle order of epoch ``e`` is a function of ``(seed, e)`` alone, and a run resumed at epoch ``e`` sees
    the batches the uninterrupted run saw.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = 1, 0
    return DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def prepare_run_dir(run_dir: str | os.PathLike, hyperparameters: Mapping[str, Any] | None = None) -> str:
    """Create the run folder (``checkpoints/`` inside) and write ``config.json`` with the resolved
    hyperparameters.

    Only rank 0 writes. Returns ``str(run_dir)`` so a config can use it as a value.
    """
    run_dir = Path(run_dir)
    if is_main_process():
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if hyperparameters is not None:
            atomic_write_json(run_dir / "config.json", to_jsonable(hyperparameters))
    return str(run_dir)


def _items(output: Sequence[Mapping] | Mapping) -> Sequence[Mapping]:
    return output if isinstance(output, Sequence) else [output]


def _class_index(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    label = torch.as_tensor(label)
    if num_classes > 1 and label.ndim >= 1 and label.shape[-1] == num_classes:
        return label.reshape(-1, num_classes).argmax(-1)  # one-hot labels
    return label.reshape(-1).long()


def scores_and_labels(
    output: Sequence[Mapping] | Mapping, pred_key: str = "pred"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output transform for ignite's ``Accuracy`` and ``Loss`` on a MONAI engine's (decollated) output.

    Returns ``(y_pred (B, K), y (B,) long)`` from ``pred`` (logits, ``(K,)`` per item) and ``label`` (a class
    index or one-hot).
    """
    preds, labels = [], []
    for item in _items(output):
        pred = torch.as_tensor(item[pred_key]).float()
        preds.append(pred.reshape(-1, pred.shape[-1]))
        labels.append(_class_index(item["label"], pred.shape[-1]))
    return torch.cat(preds), torch.cat(labels)


def probs_and_onehot(
    output: Sequence[Mapping] | Mapping, prob_key: str = "prob"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output transform for MONAI's ``ROCAUC``: ``(probabilities (B, K), one-hot labels (B, K))``."""
    probs, labels = scores_and_labels(output, pred_key=prob_key)
    return probs, torch.nn.functional.one_hot(labels, probs.shape[-1]).float()


def attach_handlers(engine: Engine, handlers: Sequence[Any]) -> Engine:
    """``handler.attach(engine)`` for each handler (``None`` entries, i.e. disabled ones, are skipped).

    The bundle attaches the checkpoint loader/saver this way, after the trainer exists, because their
    ``save_dict``/``load_dict`` reference the trainer itself (a ``train_handlers`` entry cannot).
    """
    for handler in handlers:
        if handler is not None:
            handler.attach(engine)
    return engine


def init_distributed(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment (NCCL with CUDA, gloo otherwise).

    Returns ``True`` when a process group is (now) initialised; a no-op outside ``torchrun``.
    """
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json must be started by torchrun (python -m torch.distributed.run), "
            "which sets RANK and WORLD_SIZE."
        )
    dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return True


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it (e.g. a timestamped run name every rank must share); ``obj`` itself when
    not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def distributed_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:<LOCAL_RANK>`` (also made current) or the CPU."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")
