"""Small ignite handlers the bundle needs and MONAI does not ship.

- :class:`NonFiniteLossGuard`: stops training on a NaN/Inf loss *before* the optimizer step, so the weights
  (and any checkpoint written later) stay the last good ones.
- :class:`EpochSeed`: reseeds every RNG (and the transforms' own random states) from ``seed + epoch`` at the
  start of each epoch, which makes a resumed run draw exactly what the uninterrupted one drew.
- :class:`AtomicCheckpointSaver`: MONAI's :class:`~monai.handlers.CheckpointSaver` with atomic writes.
- :class:`MetricsTableWriter`: one row per evaluator run (validation epoch or evaluation), written atomically
  to CSV and JSON.
- :class:`ExportModel`: copies the best checkpoint to the bundle's ``models/model.pt`` when training
  completes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver
from monai.utils import CommonKeys, set_determinism

from monai_wsol.io_utils import atomic_path, atomic_torch_save, atomic_write_json, atomic_write_text

__all__ = [
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "EpochSeed",
    "AtomicCheckpointSaver",
    "MetricsTableWriter",
    "ExportModel",
    "is_main_process",
    "atomic_copy",
    "write_rows",
]

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """True when not distributed or on rank 0: the only process that writes files."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (temporary file beside ``dst``, then ``os.replace``)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def _json_safe(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def write_rows(
    output_dir: str | os.PathLike, stem: str, rows: Sequence[dict], csv_rows: Sequence[dict] | None = None
) -> None:
    """Write ``rows`` atomically to ``<output_dir>/<stem>.json`` and (``csv_rows`` or ``rows``) to
    ``<stem>.csv``.

    CSV columns are the union of the rows' keys in first-seen order; NaN values are JSON ``null``.
    """
    output_dir = Path(output_dir)
    table = list(rows if csv_rows is None else csv_rows)
    columns: list[str] = []
    for r in table:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(output_dir / f"{stem}.csv", buf.getvalue())
    atomic_write_json(output_dir / f"{stem}.json", [_json_safe(r) for r in rows])


class NonFiniteLossError(RuntimeError):
    """Raised by :class:`NonFiniteLossGuard`; training stops before the bad step is applied."""


class NonFiniteLossGuard:
    """Stop a :class:`~monai.engines.SupervisedTrainer` when the loss is NaN or infinite.

    It runs on MONAI's ``IterationEvents.LOSS_COMPLETED``, i.e. after the loss and *before* ``backward`` and
    ``optimizer.step``: the network, the optimizer and every checkpoint already on disk keep the last good
    state. Raising (rather than ``engine.terminate()``) matters: a terminate would still fire ``COMPLETED``
        and
    handlers there (final checkpoints, model export) would run as if training had succeeded.

    Args:
        checkpoint_dir: mentioned in the error message so the user knows where the last good weights are.
    """

    def __init__(self, checkpoint_dir: str | None = None) -> None:
        self.checkpoint_dir = checkpoint_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output[CommonKeys.LOSS]
        value = float(loss.detach().float().cpu()) if torch.is_tensor(loss) else float(loss)
        if math.isfinite(value):
            return
        where = f" The last good checkpoints are in '{self.checkpoint_dir}'." if self.checkpoint_dir else ""
        raise NonFiniteLossError(
            f"Non-finite training loss ({value}) at epoch {engine.state.epoch}, "
            f"iteration {engine.state.iteration}: "
            f"training stopped before the optimizer step, the weights were not updated.{where} "
            "Lower the learning rate, disable AMP or check the input intensities."
        )


class EpochSeed:
    """Reseed torch/numpy/random and the training's random sources from ``seed + epoch`` at ``EPOCH_STARTED``.

    MONAI's random transforms keep their own ``RandomState``; reseeding only the global RNGs would leave a
    resumed run with different augmentations than an uninterrupted one. With this handler, epoch ``e`` draws
    the same numbers however the run got there (fresh or restored by ``CheckpointLoader``).

    Args:
        seed: base seed.
        transform: what else draws random numbers: the training transform (a ``Compose`` or any object with
            ``set_random_state(seed=...)``, e.g. a method's batch augmentation), a sequence of them, or
            ``None``.
    """

    def __init__(self, seed: int, transform: Any = None) -> None:
        self.seed = int(seed)
        if transform is None:
            self.randomizables: list[Any] = []
        elif isinstance(transform, (list, tuple)):
            self.randomizables = [t for t in transform if t is not None]
        else:
            self.randomizables = [transform]
        for t in self.randomizables:
            if not callable(getattr(t, "set_random_state", None)):
                raise TypeError(f"EpochSeed: {type(t).__name__} has no set_random_state(seed=...).")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = self.seed + int(engine.state.epoch)
        set_determinism(seed=epoch_seed)
        for t in self.randomizables:
            t.set_random_state(seed=epoch_seed)


class _AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that writes atomically and deletes superseded files only *after* the new one
    exists.

    ignite's ``Checkpoint`` removes the previous file before saving the next, and MONAI's fixed-name savers
    (``key_metric_filename``, ``final_filename``) remove the very file they are about to rewrite: an
    interruption in between leaves no checkpoint at all. Here ``remove`` only queues the name; the queue is
    emptied after the next save has replaced its target (never deleting the file just written).
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)  # temp file + os.replace (ignite's atomic mode)
        pending, self._pending = self._pending, []
        for old in pending:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)

    def remove(self, filename: str) -> None:
        self._pending.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` whose files survive an interruption at any moment.

    MONAI 1.x builds ignite's ``DiskSaver`` with ``atomic=False`` (so a crash during ``torch.save`` can leave
    a truncated file) and deletes the previous checkpoint before writing the next. This subclass swaps in a
    saver that writes to a temporary file in the same folder and ``os.replace``-s it (ignite's atomic mode,
    which also restores group/other read permission, MONAI's reason for turning it off), and deletes
    superseded files only after the new one is in place. Arguments are those of ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                old = ckpt.save_handler
                ckpt.save_handler = _AtomicDiskSaver(old.dirname, getattr(old, "filename", None))


class MetricsTableWriter:
    """Write ``engine.state.metrics`` after each evaluator run as one row of a CSV and a JSON list.

    Attach it to the evaluator (validation during training, or the evaluate workflow). The row carries the
    evaluator's ``state.epoch`` (MONAI's ``Evaluator.run(global_epoch)`` sets it to the trainer's epoch). Rows
    already in ``<stem>.json`` from earlier epochs are kept, and rows at or after the current epoch are
    replaced, so a resumed run continues the same table instead of duplicating epochs.

    Args:
        output_dir: folder of the files.
        stem: file name stem: ``<stem>.csv`` and ``<stem>.json``.
        extra: callables ``name -> fn(engine) -> value`` for more columns.
        event: the ignite event name that writes a row: ``"COMPLETED"`` for an evaluator,
            ``"EPOCH_COMPLETED"`` on a trainer (its ``state.metrics``, e.g. the mean training loss).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        stem: str = "metrics",
        extra: dict | None = None,
        event: str = "COMPLETED",
    ) -> None:
        self.event = Events[event]
        self.output_dir = Path(output_dir)
        self.stem = stem
        self.extra = dict(extra or {})
        self.rows: list[dict] = []
        json_path = self.output_dir / f"{stem}.json"
        if json_path.is_file():
            try:
                self.rows = list(json.loads(json_path.read_text()))
            except json.JSONDecodeError as e:
                raise ValueError(f"MetricsTableWriter: '{json_path}' is not valid JSON ({e}).") from e

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    @staticmethod
    def _plain(value: Any) -> Any:
        if torch.is_tensor(value):
            return value.item() if value.numel() == 1 else value.tolist()
        if hasattr(value, "item") and getattr(value, "size", 2) == 1:
            return value.item()
        return value

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        epoch = int(engine.state.epoch)
        row = {"epoch": epoch}
        row.update({k: self._plain(v) for k, v in engine.state.metrics.items()})
        row.update({k: self._plain(fn(engine)) for k, fn in self.extra.items()})
        self.rows = [r for r in self.rows if int(r.get("epoch", -1)) < epoch] + [row]
        self.write(self.rows)

    def write(self, rows: Sequence[dict]) -> None:
        """Write ``rows`` to ``<stem>.json`` and ``<stem>.csv``."""
        write_rows(self.output_dir, self.stem, rows)


class ExportModel:
    """At ``COMPLETED``, copy the best checkpoint (a plain state_dict) to ``dst`` (e.g.
    ``bundle/models/model.pt``).

    Only a run that completes exports; a run stopped by an exception (e.g. :class:`NonFiniteLossError`) leaves
    the exported model as it was. Falls back to ``fallback`` (e.g. the network itself) when no best checkpoint
    was written (e.g. no validation data).

    Args:
        src: the best checkpoint file written by the key-metric saver.
        dst: the destination file.
        fallback: a module whose ``state_dict()`` is saved when ``src`` does not exist.
        enabled: ``False`` to make the handler a no-op (bundle override ``export_model``).
    """

    def __init__(
        self, src: str, dst: str, fallback: torch.nn.Module | None = None, enabled: bool = True
    ) -> None:
        self.src, self.dst, self.fallback, self.enabled = src, dst, fallback, bool(enabled)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not (self.enabled and is_main_process()):
            return
        if os.path.isfile(self.src):
            atomic_copy(self.src, self.dst)
        elif self.fallback is not None:
            module = getattr(self.fallback, "module", self.fallback)  # unwrap DistributedDataParallel
            atomic_torch_save(module.state_dict(), self.dst)
        else:
            raise FileNotFoundError(f"ExportModel: no checkpoint at '{self.src}' and no fallback module.")
        logger.info(f"Exported model to {self.dst}")
