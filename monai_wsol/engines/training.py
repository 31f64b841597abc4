"""Helpers the bundle's training configs call: start-up checks, run folders, resume, deterministic
sampling, DDP set-up.

The workflow itself is MONAI's (``SupervisedTrainer`` + :class:`~monai_wsol.engines.inference.CAMEvaluator`
with MONAI/ignite handlers, wired in ``bundle/configs/train.json``); this module holds only what a JSON config
cannot express in one line.

Start-up checks (datalist, resume, run folder, command-line booleans) run before the run folder is created
and refuse a run with :class:`RunRefused`: one message on the console, exit status 1, nothing written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.handlers import LrScheduleHandler, ValidationHandler
from torch.utils.data import Dataset, DistributedSampler

from monai_wsol.data.datalist import DatalistError, validate_datalist
from monai_wsol.engines.batch import BOOLEAN_WORDS, as_flag
from monai_wsol.engines.handlers import EpochSeed, NonFiniteLossGuard, is_main_process
from monai_wsol.io_utils import atomic_write_json, to_jsonable

__all__ = [
    "LAST_CHECKPOINT_GLOB",
    "RunRefused",
    "as_bool",
    "parse_resume",
    "checked_training_data",
    "check_training_start",
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


class RunRefused(SystemExit):
    """A training run refused at start-up, before its run folder exists: bad data or settings.

    It derives from ``SystemExit``, not ``Exception``, on purpose: MONAI's config evaluation wraps every
    ``Exception`` an expression raises in ``RuntimeError("Failed to evaluate ...")``, so the console would
    show three or four chained tracebacks; a ``SystemExit`` passes through unwrapped, and Python prints just
    its message and exits with status 1. From Python, catch it as ``RunRefused`` (or ``SystemExit``).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def as_bool(value: Any, key: str) -> bool:
    """A bundle key's value as a bool: ``True``/``False``, ``1``/``0`` or a string ``true``/``false``,
    ``yes``/``no``, ``on``/``off``, ``1``/``0`` in any case.

    ``monai.bundle``'s command line passes ``--key true`` as the *string* ``'true'`` (``True`` only for
    ``--key True``), and ``bool('false')`` is ``True``; every boolean key of ``train.json`` goes through here.

    Raises:
        RunRefused: anything else, naming ``key``.
    """
    try:
        return as_flag(value, key)
    except ValueError:
        raise RunRefused(f"{key}={value!r} is not a boolean: give true or false.") from None


def parse_resume(resume: Any) -> bool | str:
    """The bundle's ``resume`` value: ``False`` (a new run), ``True`` (the run's last epoch checkpoint) or a
    checkpoint path. Booleans are read as :func:`as_bool` reads them (``None`` and ``""`` are ``False``);
    any other string or path is a checkpoint path.

    Raises:
        RunRefused: a value that is neither (e.g. a number other than 0/1).
    """
    if resume is None or (isinstance(resume, str) and not resume.strip()):
        return False
    if isinstance(resume, (bool, int)) or (
        isinstance(resume, str) and resume.strip().lower() in BOOLEAN_WORDS
    ):
        return as_bool(resume, "resume")
    if isinstance(resume, (str, os.PathLike)):
        return str(resume)
    raise RunRefused(f"resume={resume!r}: give true, false or the path of a checkpoint file.")


def resume_checkpoint(resume: Any, ckpt_dir: str | os.PathLike) -> str | None:
    """Resolve the bundle's ``resume`` option to a checkpoint path (``None``: start afresh).

    Args:
        resume: see :func:`parse_resume`: false, true (the last epoch checkpoint in ``ckpt_dir``), or a
            checkpoint file.
        ckpt_dir: the run's checkpoint folder.

    Raises:
        RunRefused: ``resume`` asked for a checkpoint that does not exist (one line saying so).
    """
    resume = parse_resume(resume)
    if resume is False:
        return None
    if resume is not True:
        if not os.path.isfile(resume):
            raise RunRefused(
                f"Nothing to resume: resume='{resume}' is not a checkpoint file; give an existing "
                f"'{LAST_CHECKPOINT_GLOB}' or resume=true to continue the run named by run_name."
            )
        return resume
    path = find_last_checkpoint(ckpt_dir)
    if path is None:
        raise RunRefused(
            f"Nothing to resume: resume=true but '{ckpt_dir}' holds no '{LAST_CHECKPOINT_GLOB}'; give the "
            "run_name of the run to continue, a checkpoint path as resume, or resume=false for a new run."
        )
    return path


def checked_training_data(
    datalist: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    allow_single_class: Any = False,
    check_voxels: Any = True,
    splits: Sequence[str] = ("training", "validation"),
) -> dict[str, list[dict]]:
    """The training and validation entries of ``datalist``, checked before the run starts
    (:func:`~monai_wsol.data.validate_datalist`).

    Args:
        datalist: the datalist JSON.
        base_dir: folder relative paths are resolved against.
        num_classes: the classifier's class count: labels must lie in ``0 .. num_classes - 1``.
        allow_single_class: a split whose labels are all one class is not refused (``as_bool`` value).
        check_voxels: decode every image and mask (truncated files, NaN/Inf voxels); ``False``: headers only.
        splits: the splits to check and return.

    Returns:
        ``{split: entries}``, paths made absolute, for the bundle's datasets.

    Raises:
        RunRefused: the datalist cannot be used; one line per bad entry (split, index, image path, problem).
    """
    start = time.perf_counter()
    try:
        data = validate_datalist(
            datalist,
            splits=splits,
            base_dir=base_dir,
            num_classes=num_classes,
            allow_single_class=as_bool(allow_single_class, "allow_single_class"),
            check_voxels=as_bool(check_voxels, "check_voxels"),
        )
    except DatalistError as e:
        raise RunRefused(f"Training refused before the first epoch (nothing was written): {e}") from None
    counts = ", ".join(f"{len(v)} {k}" for k, v in data.items())
    logger.info(f"Datalist {datalist} checked in {time.perf_counter() - start:.1f} s: {counts} entries")
    return data


def check_training_start(
    run_dir: str | os.PathLike,
    resume_path: str | None,
    data: Mapping[str, Sequence] | None = None,
    export_model: bool = False,
    model_path: str | os.PathLike | None = None,
) -> None:
    """The last start-up check, before :func:`prepare_run_dir` creates the run folder, and the log of what
    the run will do.

    In ``train.json`` its arguments are references: resolving them checks the resume option
    (``resume_path``, from :func:`resume_checkpoint`) and the datalist (``data``, from
    :func:`checked_training_data`), either of which may refuse the run. Here a new run is refused in a folder
    that already holds the epoch checkpoints of another run, which it would overwrite (and mix with its own).

    Args:
        run_dir: the run folder (need not exist).
        resume_path: the checkpoint the run continues from, ``None`` for a new run.
        data: the checked ``{split: entries}``, counted in the log.
        export_model: whether the best model will be copied to ``model_path`` (logged either way).
        model_path: the bundle's exported model file.

    Raises:
        RunRefused: ``run_dir`` holds epoch checkpoints and ``resume_path`` is not one of them.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    last = find_last_checkpoint(ckpt_dir)
    continues = resume_path is not None and Path(resume_path).resolve().parent == ckpt_dir.resolve()
    if last is not None and not continues:
        raise RunRefused(
            f"Run folder '{run_dir}' already holds a run ({Path(last).name}): a new run would overwrite it. "
            "Give another run_name, or resume=true to continue that run."
        )
    entries = ", ".join(f"{len(v)} {k}" for k, v in (data or {}).items())
    entries = f" ({entries} entries)" if entries else ""
    if resume_path is not None:
        logger.info(f"Resuming from {resume_path} into {run_dir}{entries}")
    else:
        logger.info(f"New run in {run_dir}{entries}")
    if export_model:
        logger.info(
            f"export_model=true: the best model will be copied to {model_path} when training completes"
        )
    else:
        best = ckpt_dir / "model.pt"
        logger.info(f"export_model=false: {model_path} will not be touched; the best model stays in {best}")


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
