"""Small ignite handlers the bundle needs and MONAI does not ship.

- :class:`NonFiniteLossGuard`: stops training on a NaN/Inf loss *before* the optimizer step, so the weights
  (and any checkpoint written later) stay the last good ones.
- :class:`EpochSeed`: reseeds every RNG (and the transforms' own random states) from ``seed + epoch`` at the
  start of each epoch, which makes a resumed run draw exactly what the uninterrupted one drew.
- :class:`AtomicCheckpointSaver`: MONAI's :class:`~monai.handlers.CheckpointSaver` with atomic writes, which
  also keeps only its latest checkpoints and its best model across a resume.
- :class:`ResumeCheckpointLoader`: MONAI's :class:`~monai.handlers.CheckpointLoader` that skips optional
  entries a checkpoint lacks.
- :class:`MetricsTableWriter`: one row per evaluator run (validation epoch or evaluation), written atomically
  to CSV and JSON.
- :class:`ExportModel`: copies the best checkpoint to the bundle's ``models/model.pt`` when training
  completes, if asked to (and logs what it did or did not do).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import CommonKeys, ensure_tuple, set_determinism

from monai_wsol.io_utils import atomic_path, atomic_torch_save, atomic_write_json, atomic_write_text

__all__ = [
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "EpochSeed",
    "AtomicCheckpointSaver",
    "ResumeCheckpointLoader",
    "MetricsTableWriter",
    "ExportModel",
    "is_main_process",
    "atomic_copy",
    "batch_files",
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


def batch_files(batch: Any, key: str = CommonKeys.IMAGE) -> list[str]:
    """The source files of a collated batch's ``key``: MONAI's ``filename_or_obj`` metadata of the
    ``MetaTensor`` (or of ``<key>_meta_dict``); empty when the batch carries none."""
    if not isinstance(batch, Mapping):
        return []
    meta = getattr(batch.get(key), "meta", None)
    if not isinstance(meta, Mapping) or "filename_or_obj" not in meta:
        meta = batch.get(f"{key}_meta_dict")
    if not isinstance(meta, Mapping) or meta.get("filename_or_obj") is None:
        return []
    return [str(name) for name in ensure_tuple(meta["filename_or_obj"])]


class NonFiniteLossGuard:
    """Stop a :class:`~monai.engines.SupervisedTrainer` when the loss is NaN or infinite.

    It runs on MONAI's ``IterationEvents.LOSS_COMPLETED``, i.e. after the loss and *before* ``backward`` and
    ``optimizer.step``: the network, the optimizer and every checkpoint already on disk keep the last good
    state. Raising (rather than ``engine.terminate()``) matters: a terminate would still fire ``COMPLETED``
    and handlers there (final checkpoints, model export) would run as if training had succeeded.

    The error names the files of the offending batch (their ``filename_or_obj`` metadata, see
    :func:`batch_files`) and the last epoch checkpoint in ``checkpoint_dir``, or says that none was written.

    Args:
        checkpoint_dir: the run's checkpoint folder, searched for the last good checkpoint on a failure.
    """

    def __init__(self, checkpoint_dir: str | os.PathLike | None = None) -> None:
        self.checkpoint_dir = checkpoint_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def _last_checkpoint(self) -> str | None:
        if self.checkpoint_dir is None:
            return None
        from monai_wsol.engines.training import find_last_checkpoint  # training imports this module

        return find_last_checkpoint(self.checkpoint_dir)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output[CommonKeys.LOSS]
        value = float(loss.detach().float().cpu()) if torch.is_tensor(loss) else float(loss)
        if math.isfinite(value):
            return
        files = batch_files(engine.state.batch)
        held = (
            f"The batch held {len(files)} image(s): {', '.join(files)}."
            if files
            else "The batch carries no file names (no 'filename_or_obj' image metadata)."
        )
        last = self._last_checkpoint()
        if last is not None:
            where = f"The last good checkpoint is '{last}' (resume=true continues from it)."
        else:
            where = "No checkpoint was written before it."
        raise NonFiniteLossError(
            f"Non-finite training loss ({value}) at epoch {engine.state.epoch}, iteration "
            f"{engine.state.iteration}: training stopped before the optimizer step, the weights were not "
            f"updated. {held} {where} Check these images' intensities (the datalist check with "
            "check_voxels=true rejects NaN/Inf voxels), lower the learning rate or disable AMP."
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
    """MONAI's :class:`~monai.handlers.CheckpointSaver` whose files survive an interruption at any moment, and
    whose bookkeeping survives a resume.

    MONAI 1.x builds ignite's ``DiskSaver`` with ``atomic=False`` (so a crash during ``torch.save`` can leave
    a truncated file) and deletes the previous checkpoint before writing the next. This subclass swaps in a
    saver that writes to a temporary file in the same folder and ``os.replace``-s it (ignite's atomic mode,
    which also restores group/other read permission, MONAI's reason for turning it off), and deletes
    superseded files only after the new one is in place.

    Across a resume (a new process continuing a run):

    - the interval checkpoints (``checkpoint_epoch=<N>.pt``) already in ``save_dir`` with ``N`` below the
      current epoch are adopted at the first save, so ``n_saved`` counts them and the stale ones are deleted
      once the new one is written (MONAI's saver knows only the files of its own process and would leave
      them);
    - the best key-metric score is restored when this saver's :meth:`state_dict` is part of a checkpoint
      that the resume loads (``load_state_dict``), so the first validation after a resume replaces the best
      model only if it beats the score reached before the interruption.

    Arguments are those of ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                old = ckpt.save_handler
                ckpt.save_handler = _AtomicDiskSaver(old.dirname, getattr(old, "filename", None))
        self._adopted = False

    def state_dict(self) -> dict:
        """The key-metric tracking list, ``{"_saved": [(score, file name), ...]}`` (empty without one)."""
        if self._key_metric_checkpoint is None:
            return {"_saved": []}
        return {"_saved": [(float(p), str(f)) for p, f in self._key_metric_checkpoint._saved]}

    def _interval_file_pattern(self) -> re.Pattern:
        """The names ignite gives this saver's interval checkpoints, the step captured."""
        ckpt = self._interval_checkpoint
        to_save = ckpt.to_save or {}
        pattern = Checkpoint.setup_filename_pattern(
            with_prefix=len(ckpt.filename_prefix) > 0,
            with_score=True,
            with_score_name=ckpt.score_name is not None,
            with_global_step=False,
        )
        name = next(iter(to_save)) if len(to_save) == 1 else "checkpoint"
        marker = "\x00step\x00"
        text = pattern.format(
            filename_prefix=ckpt.filename_prefix,
            name=name,
            score_name=ckpt.score_name,
            score=marker,
            ext=ckpt.ext,
        )
        return re.compile(re.escape(text).replace(re.escape(marker), r"(\d+)"))

    def _adopt_earlier_files(self, engine: Engine) -> None:
        """Count the interval checkpoints an earlier process left (steps below the current one) as saved;
        those beyond ``n_saved`` are deleted after the next checkpoint is written."""
        ckpt = self._interval_checkpoint
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        pattern = self._interval_file_pattern()
        known = {item.filename for item in ckpt._saved}
        found = []
        for path in Path(self.save_dir).glob(f"*.{ckpt.ext}"):
            match = pattern.fullmatch(path.name)
            if match and path.name not in known and int(match.group(1)) < step:
                found.append((int(match.group(1)), path.name))
        if not found or ckpt.n_saved is None:
            return
        found.sort()
        room = max(int(ckpt.n_saved) - 1 - len(ckpt._saved), 0)  # the file about to be written takes one
        keep, stale = (found[len(found) - room :], found[: len(found) - room]) if room else ([], found)
        ckpt._saved = sorted([*ckpt._saved, *(Checkpoint.Item(p, f) for p, f in keep)], key=lambda it: it[0])
        for _, name in stale:
            ckpt.save_handler.remove(name)  # queued: deleted once the new checkpoint is in place
        kept, replaced = [f for _, f in keep], [f for _, f in stale]
        logger.info(f"Checkpoints of an earlier process: keeping {kept}, replacing {replaced}")

    def interval_completed(self, engine: Engine) -> None:
        """Save the interval checkpoint (adopting an earlier process's files the first time)."""
        if not self._adopted:
            self._adopted = True
            self._adopt_earlier_files(engine)
        super().interval_completed(engine)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's :class:`~monai.handlers.CheckpointLoader` for a resume, tolerant of older checkpoints.

    Entries of ``load_dict`` named in ``optional`` (e.g. the best-model saver's tracking state) that the
    checkpoint does not hold are skipped with a warning instead of failing the load: a run checkpointed
    before such an entry was added still resumes. Other arguments are those of ``CheckpointLoader``.
    """

    def __init__(self, load_path: str, load_dict: dict, optional: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(load_path, load_dict, **kwargs)
        self.optional = tuple(optional)

    def __call__(self, engine: Engine) -> None:
        if self.optional:
            keys = set(torch.load(self.load_path, map_location="cpu", weights_only=True, mmap=True))
            missing = [k for k in self.optional if k in self.load_dict and k not in keys]
            for k in missing:
                logger.warning(f"{self.load_path} holds no '{k}' (an older checkpoint); it starts afresh.")
            self.load_dict = {k: v for k, v in self.load_dict.items() if k not in missing}
        super().__call__(engine)


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
        enabled: ``False``: nothing is copied, the log says so (bundle key ``export_model``, default false).
    """

    def __init__(
        self, src: str, dst: str, fallback: torch.nn.Module | None = None, enabled: bool = True
    ) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(
                f"ExportModel: enabled must be a bool, got {enabled!r} (parse 'true'/'false' first)"
            )
        self.src, self.dst, self.fallback, self.enabled = src, dst, fallback, enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        if not self.enabled:
            best = self.src if os.path.isfile(self.src) else "the run's checkpoints"
            logger.info(
                f"Model not exported (export_model=false): {self.dst} left as it was; best model: {best}"
            )
            return
        if os.path.isfile(self.src):
            atomic_copy(self.src, self.dst)
        elif self.fallback is not None:
            module = getattr(self.fallback, "module", self.fallback)  # unwrap DistributedDataParallel
            atomic_torch_save(module.state_dict(), self.dst)
        else:
            raise FileNotFoundError(f"ExportModel: no checkpoint at '{self.src}' and no fallback module.")
        logger.info(f"Exported model to {self.dst} (export_model=true)")
