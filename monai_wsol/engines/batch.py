"""Batch inference over folders nobody curated: every input on its own.

A bad input (unreadable, truncated, NaN voxels, the wrong dimensionality, too small, a corrupt DICOM
instance...) costs one line in the log and is skipped; the other inputs complete. The pieces, wired by the
bundle's ``inference.json`` / ``evaluate.json``:

- :func:`list_inputs`: the inputs of a folder or a datalist, one entry per input, where entries that cannot
  be run (a file that is no image, a missing folder) carry their problem instead of raising;
- :class:`GuardedDataset`: a MONAI ``Dataset`` whose items that fail to load or to pass the input checks
  become :class:`InputRecord` s (and inputs whose outputs are already complete are not loaded again);
  :func:`guarded_collate` moves those records aside in the batch;
- ``CAMEvaluator(isolate_failures=True)`` (:mod:`monai_wsol.engines.inference`) records a failing inference
  and goes on; ``LocalizationWriter`` does the same for a failing write;
- :class:`InputLog`: an ignite handler printing one line per skipped or failed input, a progress bar, the
  summary, ``failures.csv`` and the log file with the full tracebacks; :meth:`InputLog.raise_if_failed`, run
  after the evaluator, ends the run with :class:`InputsFailed` (exit status 1) when an input failed or when
  no input gave outputs.

Statuses: ``done`` (outputs written), ``skipped`` (not an image, or outputs already complete from an earlier
run: a note, not a failure) and ``failed``. Stages: ``list``, ``resume``, ``load``, ``check``, ``inference``,
``write``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset, MetaTensor, list_data_collate

from monai_wsol.data.input_checks import InputCheckError
from monai_wsol.data.readers import ImageReadError, NotAnImageError
from monai_wsol.io_utils import atomic_write_text

#: (``files`` key of a prediction row, key of the per-input JSON) of each optional output
OUTPUT_FILE_KEYS = (
    ("dicom_seg", "seg_file"),
    ("dicom_parametric_map", "parametric_map_file"),
    ("dicom_sr", "sr_file"),
    ("overlay", "overlay_file"),
    ("dicom_overlay", "overlay_sc_file"),
)
#: the per-input JSON's keys of the DICOM objects written for a DICOM input, in the order they are stored
DICOM_FILE_KEYS = tuple(doc_key for key, doc_key in OUTPUT_FILE_KEYS if key.startswith("dicom"))

__all__ = [
    "DICOM_FILE_KEYS",
    "OUTPUT_FILE_KEYS",
    "IMAGE_SUFFIXES",
    "RECORD_KEY",
    "PROBLEM_KEY",
    "STEM_META",
    "INDEX_META",
    "InputRecord",
    "InputsFailed",
    "OutputWriteError",
    "GuardedDataset",
    "InputLog",
    "assign_stems",
    "image_stem",
    "add_records",
    "as_flag",
    "completed_output",
    "guarded_collate",
    "list_inputs",
    "localization_path",
    "min_input_size",
    "as_slice_axis",
    "problem_item",
    "record_from_exception",
]

logger = logging.getLogger(__name__)

#: file endings read as one image each in an input folder
IMAGE_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".dcm",
    ".nrrd",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
)
#: batch key of the records of the items that were not loaded (:func:`guarded_collate`)
RECORD_KEY = "input_records"
#: item key of an input's problem found while listing (``{"status", "stage", "reason"}``)
PROBLEM_KEY = "input_problem"
#: image meta keys: the output stem and the index of the input in the dataset
STEM_META = "output_stem"
INDEX_META = "input_index"
#: per-input JSON written last by ``LocalizationWriter``: its presence marks the input complete
LOCALIZATION_SUFFIX = "_localization.json"
#: the longest reason printed on the console (the log file has it whole)
MAX_REASON = 400
#: temporary files of monai_wsol.io_utils.atomic_path: ``.<name>.<mkstemp's 8 characters>.tmp[<suffix>]``
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
#: the strings a boolean key accepts from the command line, in any case
BOOLEAN_WORDS = frozenset(_TRUE | _FALSE)
#: loggers that log several INFO lines per input (highdicom: per DICOM-SEG), kept to warnings during a run
QUIET_LOGGERS = ("highdicom",)
#: phrases of read errors that already say what to do
_GIVES_HINT = ("; replace", "; put each", "; give", "; check")


@dataclass
class InputRecord:
    """What happened to one input.

    Attributes:
        index: the input's position in the dataset (``-1`` when unknown).
        input: the input as given (file or DICOM series folder).
        status: ``"done"``, ``"skipped"`` or ``"failed"``.
        stage: ``"list"``, ``"resume"``, ``"load"``, ``"check"``, ``"inference"`` or ``"write"``.
        reason: what is wrong and what to do (one line).
        detail: the full traceback, for the log file.
        output: the per-input JSON of a done input.
    """

    index: int
    input: str
    status: str
    stage: str
    reason: str = ""
    detail: str = ""
    output: str | None = None

    def line(self) -> str:
        """The console line: ``failed: <input> (<stage>): <reason>``."""
        return f"{self.status}: {self.input} ({self.stage}): {self.reason}"


class OutputWriteError(RuntimeError):
    """An input's outputs cannot be written (e.g. a DICOM-SEG its header cannot support); the message names
    the input and says what to do."""


class InputsFailed(SystemExit):
    """Raised by :meth:`InputLog.raise_if_failed` after every output, ``failures.csv`` and the summary are
    written, when at least one input failed.

    A ``SystemExit``: ``python -m monai.bundle run`` ends with exit status 1 and prints the message (one
    line, no traceback); code calling the evaluator catches it as ``SystemExit`` (``e.code`` is the message,
    ``e.failures`` the failed :class:`InputRecord` s).
    """

    def __init__(self, message: str, failures: Sequence[InputRecord] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


#: ``slice_axis`` values that turn slice-by-slice inference off
_NO_AXIS = frozenset({"none", "null", "off", "false", "no"})


def as_flag(value: Any, key: str) -> bool:
    """A config flag as a ``bool``: ``True``/``False``, 0/1, or (from the command line, where
    ``--fail_fast false`` arrives as the string ``"false"``) true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{key} must be true or false, got {value!r}")


def as_slice_axis(value: Any, spatial_dims: int = 2) -> int | None:
    """The ``slice_axis`` setting of a 2D model: the volume axis (0, 1, 2; -1 is 2) a volume runs slice by
    slice along, or ``None`` (volumes refused) for ``None``/``"none"``/``"off"``/``false`` (the command line
    cannot pass a null: MONAI's ``run`` drops ``None`` overrides). Always ``None`` for a 3D model."""
    if spatial_dims == 3:
        return None
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _NO_AXIS):
        return None
    try:
        axis = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        axis = None
    if axis is None or axis not in (-1, 0, 1, 2) or (isinstance(value, float) and value != axis):
        raise ValueError(f"slice_axis must be 0, 1, 2 (or -1, the last) or none, got {value!r}")
    return axis % 3


def image_stem(path: str | os.PathLike) -> str:
    """File stem of an input (``a/b/ct.nii.gz`` -> ``ct``; a DICOM series folder -> the folder name)."""
    name = Path(str(path).rstrip("/\\")).name
    for ext in IMAGE_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def assign_stems(sources: Sequence[str]) -> list[str]:
    """The output stem of each input: its :func:`image_stem`, with ``_1``, ``_2``... for repeats, in input
    order. Fixed before the run, so an input's outputs have the same names whatever else failed."""
    used: set[str] = set()
    out = []
    for source in sources:
        base = image_stem(source) or "image"
        stem, i = base, 1
        while stem in used:
            stem, i = f"{base}_{i}", i + 1
        used.add(stem)
        out.append(stem)
    return out


def localization_path(output_dir: str | os.PathLike, stem: str) -> Path:
    """The per-input JSON of ``stem``, written last: its presence marks the input's outputs complete."""
    return Path(output_dir) / f"{stem}{LOCALIZATION_SUFFIX}"


def completed_output(output_dir: str | os.PathLike, stem: str, source: str) -> Path | None:
    """The per-input JSON when ``source``'s outputs in ``output_dir`` are complete, else ``None``.

    Complete: the JSON parses, names ``source`` as its image, and every output file it lists exists. Every
    output is renamed into place whole and the JSON comes last, so a killed run leaves none of its inputs
    looking complete.
    """
    path = localization_path(output_dir, stem)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("image") != str(source):
        return None
    listed = ("cam_file", "mask_file", *(doc_key for _, doc_key in OUTPUT_FILE_KEYS))
    files = [doc.get(k) for k in listed if k in doc]
    return path if all(isinstance(f, str) and Path(f).is_file() for f in files) else None


def _one_line(text: str) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _clear_cause(exc: BaseException) -> BaseException:
    """The exception of the chain whose message is meant for users (the outermost image read or input check
    error), else the innermost one (MONAI wraps transform errors in ``RuntimeError("applying transform
    ...")``)."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    for e in chain:
        if isinstance(e, (ImageReadError, InputCheckError, OutputWriteError)):
            return e
    return chain[-1]


def record_from_exception(index: int, source: str, stage: str, exc: BaseException) -> InputRecord:
    """An :class:`InputRecord` for an exception raised while handling ``source`` at ``stage``.

    :class:`~monai_wsol.data.readers.NotAnImageError`: ``skipped``; image read errors: ``failed`` at
    ``load``; input check errors: ``failed`` at ``check``; :class:`OutputWriteError`: ``failed`` at
    ``write``; anything else: ``failed`` at ``stage`` with the exception's type and message.
    """
    cause = _clear_cause(exc)
    message = str(cause).removeprefix(f"{source}: ")
    status = "failed"
    if isinstance(cause, NotAnImageError):
        status, stage = "skipped", "load"
    elif isinstance(cause, ImageReadError):
        stage = "load"
        if not any(phrase in message for phrase in _GIVES_HINT):
            message += "; replace or re-export the file, or remove it from the input"
    elif isinstance(cause, InputCheckError):
        stage = "check"
    elif isinstance(cause, OutputWriteError):
        stage = "write"
    else:
        first = message.strip().splitlines()[0] if message.strip() else ""
        message = f"{type(cause).__name__}: {first}; the traceback is in the log file of the output folder"
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return InputRecord(index, str(source), status, stage, _one_line(message), detail)


def add_records(engine: Engine, records: Sequence[InputRecord]) -> None:
    """Append records to ``engine.state.input_records``, where :class:`InputLog` reads them."""
    if not hasattr(engine.state, "input_records") or engine.state.input_records is None:
        engine.state.input_records = []
    engine.state.input_records.extend(records)


def list_inputs(
    input_dir: str | os.PathLike | None,
    datalist: str | os.PathLike | None = None,
    split: str = "test",
    base_dir: str | os.PathLike | None = None,
    spatial_dims: int = 2,
    slice_axis: int | None = None,
) -> list[dict]:
    """The inputs of a folder (or datalist split), one item ``{"image": path}`` each; what cannot be run
    carries a ``PROBLEM_KEY`` entry ``{"status", "stage", "reason"}`` instead of raising.

    Folder: each file with an image ending (:data:`IMAGE_SUFFIXES`) is one image; each sub-folder holding
    DICOM files is one series. Loose DICOM files (directly in the folder) are one series when ``spatial_dims``
    is 3; with a 2D model they are one series when the model runs volumes slice by slice (``slice_axis`` set)
    and they are the instances of a single series with several of them (a series folder given as
    ``input_dir``), else one image each (e.g. radiographs). Skipped with a note: files that are no image
    (``.txt``, ``.DS_Store``, a ``DICOMDIR``), sub-folders without DICOM files. Failed: a missing input
    folder, a folder without any image.

    Datalist: the split's ``image`` paths (relative to ``base_dir``, default the datalist's folder), not
    opened here: each is read (and its problems recorded) when it is loaded. A datalist that cannot be read
    is one failed input.
    """
    if input_dir:
        return _folder_inputs(Path(input_dir), spatial_dims, slice_axis)
    if datalist is None:
        raise ValueError("inference needs input_dir (a folder of images) or datalist (a datalist JSON).")
    return _datalist_inputs(Path(datalist), split, base_dir)


def problem_item(path: str | os.PathLike, status: str, stage: str, reason: str) -> dict:
    """An input item that is a record, not an image to load: ``{"image": path, PROBLEM_KEY: {...}}``."""
    return {"image": str(path), PROBLEM_KEY: {"status": status, "stage": stage, "reason": reason}}


def _one_multi_instance_series(folder: Path) -> bool:
    """Whether the DICOM images directly in ``folder`` are two or more distinct instances (SOPInstanceUIDs)
    of one series (copies of one instance are no series)."""
    from monai_wsol.data.readers import scan_dicom_folder

    scan = scan_dicom_folder(folder)
    if len(scan.series) != 1:
        return False
    uids = [str(getattr(ds, "SOPInstanceUID", "")) for ds in scan.datasets.values()]
    return len(uids) > 1 and len(set(uids)) == len(uids)


def _folder_inputs(root: Path, spatial_dims: int, slice_axis: int | None) -> list[dict]:
    """The items of :func:`list_inputs` for a folder."""
    from pydicom.misc import is_dicom

    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        reason = f"the input folder {what}; give input_dir a folder of images"
        return [problem_item(root, "failed", "list", reason)]
    items: list[dict] = []
    loose_dicom: list[str] = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            if any(is_dicom(str(f)) for f in sorted(p.iterdir()) if f.is_file()):
                items.append({"image": str(p)})
            else:
                items.append(problem_item(p, "skipped", "list", "a sub-folder without DICOM files"))
        elif p.name.upper() == "DICOMDIR":
            items.append(problem_item(p, "skipped", "list", "a DICOMDIR (directory index), not an image"))
        elif p.name.lower().endswith(".dcm") or (not p.name.lower().endswith(IMAGE_SUFFIXES) and is_dicom(p)):
            loose_dicom.append(str(p))
        elif p.name.lower().endswith(IMAGE_SUFFIXES):
            items.append({"image": str(p)})
        else:
            items.append(problem_item(p, "skipped", "list", "not an image file"))
    if loose_dicom:
        one_series = spatial_dims == 3 or (slice_axis is not None and _one_multi_instance_series(root))
        items += [{"image": str(root)}] if one_series else [{"image": f} for f in loose_dicom]
    if not any(PROBLEM_KEY not in item for item in items):
        reason = (
            f"the input folder holds no image ({', '.join(IMAGE_SUFFIXES)}) or DICOM series"
            + (f" ({len(items)} other entries skipped)" if items else " (it is empty)")
            + "; check input_dir"
        )
        items.append(problem_item(root, "failed", "list", reason))
    return items


def _datalist_inputs(path: Path, split: str, base_dir: str | os.PathLike | None) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [problem_item(path, "failed", "list", f"cannot read the datalist ({e})")]
    entries = data.get(split) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        reason = f"no list {split!r} in the datalist (top-level keys: {keys})"
        return [problem_item(path, "failed", "list", reason)]
    base = Path(base_dir) if base_dir is not None else path.parent
    items: list[dict] = []
    for i, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not image:
            items.append(
                problem_item(f"{path}:{split}[{i}]", "failed", "list", "the item has no 'image' path")
            )
            continue
        p = Path(image).expanduser()
        items.append({"image": str(p if p.is_absolute() else base / p)})
    return items


class GuardedDataset(Dataset):
    """A MONAI ``Dataset`` that never raises for one input: an item that fails to load or to pass the input
    checks becomes ``{RECORD_KEY: InputRecord}`` (use :func:`guarded_collate`).

    Items carrying a ``PROBLEM_KEY`` (see :func:`list_inputs`) become their record unread. With ``overwrite``
    off, an input whose outputs in ``output_dir`` are complete (:func:`completed_output`) is not loaded
    again: its record is ``skipped`` at ``resume`` and names the JSON. A loaded image carries its output
    stem (:func:`assign_stems`) and its index in ``meta[STEM_META]`` / ``meta[INDEX_META]``.

    Args:
        data: the items (``{"image": path, ...}``).
        transform: the preprocessing.
        output_dir: where the outputs go (needed to skip complete inputs).
        overwrite: redo inputs whose outputs are complete.
        image_key: the key of the input path and of the loaded image.
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        transform: Callable | None = None,
        output_dir: str | os.PathLike | None = None,
        overwrite: bool = True,
        image_key: str = "image",
    ) -> None:
        super().__init__(data, transform)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.overwrite = as_flag(overwrite, "overwrite")
        self.image_key = image_key
        self.sources = [str(item.get(image_key, "")) if isinstance(item, Mapping) else "" for item in data]
        self.stems = assign_stems(self.sources)

    def _transform(self, index: int) -> dict:
        item = self.data[index]
        source = self.sources[index]
        problem = item.get(PROBLEM_KEY) if isinstance(item, Mapping) else None
        if problem:
            record = InputRecord(index, source, problem["status"], problem["stage"], problem["reason"])
            return {RECORD_KEY: record}
        if not self.overwrite and self.output_dir is not None:
            done = completed_output(self.output_dir, self.stems[index], source)
            if done is not None:
                reason = f"outputs already complete ({done.name}); overwrite=true redoes them"
                return {RECORD_KEY: InputRecord(index, source, "skipped", "resume", reason, output=str(done))}
        if not Path(source).exists():
            reason = "no such file or folder; check the path"
            return {RECORD_KEY: InputRecord(index, source, "failed", "load", reason)}
        try:
            out = super()._transform(index)
        except Exception as e:
            return {RECORD_KEY: record_from_exception(index, source, "load", e)}
        image = out.get(self.image_key) if isinstance(out, Mapping) else None
        if isinstance(image, MetaTensor):
            image.meta[STEM_META] = self.stems[index]
            image.meta[INDEX_META] = index
        return out


def guarded_collate(batch: Sequence[Any]) -> dict:
    """``list_data_collate`` of the loaded items, with the records of the others under ``RECORD_KEY`` (a
    batch of records only holds nothing else)."""
    records = [b[RECORD_KEY] for b in batch if isinstance(b, Mapping) and RECORD_KEY in b]
    loaded = [b for b in batch if not (isinstance(b, Mapping) and RECORD_KEY in b)]
    out = list_data_collate(loaded) if loaded else {}
    out[RECORD_KEY] = records
    return out


def min_input_size(
    network: torch.nn.Module, spatial_dims: int, in_channels: int = 1, limit: int | None = None
) -> int | None:
    """The smallest edge (voxels) of a cube the network runs on, found by trying (doubling, then bisecting);
    ``None`` when no size up to ``limit`` (default 512 in 2D, 128 in 3D) runs. Taken along each axis as the
    minimum of :class:`~monai_wsol.data.input_checks.InputChecksd`."""
    limit = limit or (512 if spatial_dims == 2 else 128)
    params = list(network.parameters())
    device = params[0].device if params else torch.device("cpu")
    training = network.training
    network.eval()

    def runs(size: int) -> bool:
        x = torch.zeros((1, in_channels) + (size,) * spatial_dims, device=device)
        try:
            with torch.no_grad():
                network(x)
            return True
        except Exception:  # torch raises RuntimeError / ValueError for inputs too small
            return False

    try:
        size = 1
        while not runs(size):
            if size >= limit:
                return None
            size = min(2 * size, limit)
        lo, hi = size // 2, size  # lo does not run (or is 0), hi runs
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if runs(mid) else (mid, hi)
        return hi
    finally:
        network.train(training)


@dataclass
class _Counts:
    done: int = 0
    resumed: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[InputRecord] = field(default_factory=list)


class InputLog:
    """Ignite handler reporting each input of a batch run (attach it after ``LocalizationWriter``).

    - one console line per skipped input (``warning``) and per failed input (``error``): the input, the
      stage, what is wrong and what to do; the full traceback goes to ``<output_dir>/<log_name>`` (which
      also receives the run's log), or to the console as well with ``debug``; inputs whose outputs were
      already complete are counted in the summary and listed in the log file only;
    - a progress bar over the inputs (ignite's ``ProgressBar``);
    - at the end: ``failures.csv`` (``input, stage, reason``, one row per failure, header only when none)
      and a summary line with the counts;
    - ``fail_fast``: the run stops at the first failure (after writing the above);
    - :meth:`raise_if_failed`: run it after the evaluator; raises :class:`InputsFailed` when an input failed
      or when no input gave outputs;
    - during the run, the per-input INFO chatter of :data:`QUIET_LOGGERS` is silenced (warnings still show);
    - at the start, temporary files a killed run left in ``output_dir`` (hidden ``.<name>.<random>.tmp*``
      files of :func:`monai_wsol.io_utils.atomic_path`) are removed.

    Args:
        output_dir: where ``failures.csv`` and the log file go.
        log_name: the log file's name.
        fail_fast: stop at the first failed input.
        debug: tracebacks on the console too.
        progress: show the progress bar.
        name: the workflow's name in messages.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        log_name: str = "inference.log",
        fail_fast: bool = False,
        debug: bool = False,
        progress: bool = True,
        name: str = "inference",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.log_path = self.output_dir / log_name
        self.fail_fast = as_flag(fail_fast, "fail_fast")
        self.debug = as_flag(debug, "debug")
        self.progress = as_flag(progress, "progress")
        self.name = name
        self.records: dict[int, InputRecord] = {}
        self.total: int | None = None
        self.stopped_early = False
        self._seen = 0
        self._file_handler: logging.Handler | None = None
        self._redirect: Any = None
        self._levels: dict[str, int] = {}
        self._traceback_logger = logging.getLogger(f"{__name__}.tracebacks")
        self._traceback_logger.propagate = False
        self._traceback_logger.setLevel(logging.DEBUG)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._drain)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception)
        if self.progress:
            from ignite.handlers import ProgressBar

            # disable=None: tqdm shows the bar on a terminal only (no carriage-return noise in log files)
            ProgressBar(persist=False, desc=self.name, disable=None).attach(engine)

    # -- run lifecycle -------------------------------------------------------------------------------------
    def _started(self, engine: Engine) -> None:
        self.records, self._seen, self.stopped_early = {}, 0, False
        engine.state.input_records = []
        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        self.total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        self._open_log()
        self._remove_temporaries()
        logger.info(
            "%s: %s inputs -> %s (log: %s)",
            self.name,
            "?" if self.total is None else self.total,
            self.output_dir,
            self.log_path.name,
        )

    def _open_log(self) -> None:
        self._close_log()
        if self.progress:
            # console log lines go through tqdm.write, above the progress bar rather than through it
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        handler.setLevel(logging.DEBUG)
        logging.getLogger().addHandler(handler)
        self._traceback_logger.handlers = [handler]
        if self.debug:
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter("%(message)s"))
            self._traceback_logger.addHandler(console)
        self._file_handler = handler
        self._levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))

    def _remove_temporaries(self) -> None:
        stale = [p for p in self.output_dir.iterdir() if p.is_file() and _TEMPORARY.match(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            logger.info("%s: removed %d temporary file(s) of an interrupted run", self.name, len(stale))

    def _close_log(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._file_handler is not None:
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
        self._traceback_logger.handlers = []
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._levels = {}

    def _exception(self, engine: Engine, e: Exception) -> None:
        logger.error("%s: stopped by an error that is not one input's (traceback follows)", self.name)
        self._close_log()
        raise e

    # -- records -------------------------------------------------------------------------------------------
    def _drain(self, engine: Engine) -> None:
        records = getattr(engine.state, "input_records", None) or []
        new, self._seen = records[self._seen :], len(records)
        for r in new:
            key = r.index if r.index >= 0 else -(len(self.records) + 1)
            self.records[key] = r
            if r.status == "skipped" and r.stage == "resume":
                self._traceback_logger.info(r.line())  # log file only: counted in the summary
            elif r.status == "skipped":
                logger.warning(r.line())
            elif r.status == "failed":
                logger.error(r.line())
                if r.detail:
                    self._traceback_logger.error("%s\n%s", r.line(), r.detail.rstrip())
        if self.fail_fast and any(r.status == "failed" for r in new) and not self.stopped_early:
            self.stopped_early = True
            logger.error("%s: stopping at the first failure (fail_fast)", self.name)
            engine.terminate()

    def counts(self) -> _Counts:
        """Final status counts (the last record of an input wins: a written input that failed to write is
        failed)."""
        c = _Counts()
        for r in sorted(self.records.values(), key=lambda r: r.index):
            if r.status == "failed":
                c.failed += 1
                c.failures.append(r)
            elif r.status == "skipped" and r.stage == "resume":
                c.resumed += 1
            elif r.status == "skipped":
                c.skipped += 1
            else:
                c.done += 1
        return c

    def _completed(self, engine: Engine) -> None:
        self._drain(engine)
        c = self.counts()
        self._write_failures(c.failures)
        not_run = (self.total - len(self.records)) if self.total is not None else 0
        parts = [
            f"{c.done} done",
            f"{c.skipped + c.resumed} skipped" + (f" ({c.resumed} already complete)" if c.resumed else ""),
            f"{c.failed} failed",
        ]
        if self.stopped_early and not_run > 0:
            parts.append(f"{not_run} not run (fail_fast)")
        total = self.total if self.total is not None else len(self.records)
        summary = ", ".join(parts)
        where = self.failures_path
        logger.info("%s summary: %d inputs: %s; failures in %s", self.name, total, summary, where)
        self._close_log()

    @property
    def failures_path(self) -> Path:
        return self.output_dir / "failures.csv"

    def _write_failures(self, failures: Sequence[InputRecord]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["input", "stage", "reason"])
        writer.writerows([r.input, r.stage, r.reason] for r in failures)
        atomic_write_text(self.failures_path, buf.getvalue())

    def raise_if_failed(self) -> None:
        """Raise :class:`InputsFailed` (exit status 1) when an input failed, or when no input gave outputs
        (all skipped); run it after the evaluator."""
        c = self.counts()
        if not c.failed and not c.done and not c.resumed:
            raise InputsFailed(
                f"{self.name}: no input gave outputs ({c.skipped} skipped, see the lines above); "
                "check the input"
            )
        if c.failed:
            total = self.total if self.total is not None else len(self.records)
            others = c.done + c.resumed
            written = (
                f"the outputs of the {others} other(s) are written" if others else "no other input completed"
            )
            raise InputsFailed(
                f"{self.name}: {c.failed} of {total} input(s) failed, listed in {self.failures_path} "
                f"(log: {self.log_path}); {written}",
                c.failures,
            )
