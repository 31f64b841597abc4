"""Atomic file writes shared by every writer, checkpoint and report in ``monai_wsol``.

This module sits below every other layer (the data generator, the writers, the engines): it imports nothing
from ``monai_wsol``.

A crash (or ``kill``) in the middle of a write must never leave a truncated file where a reader expects a
complete one (a checkpoint, a datalist, a JSON report). Every helper here writes to a temporary file in the
destination's own directory (so the final ``os.replace`` is a same-filesystem rename, atomic on POSIX and
Windows), flushes and fsyncs it, then renames it over the destination.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_write_nifti",
    "to_jsonable",
]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed.

    Use it for third-party writers that only accept a file name (``nibabel.save``, ``Dataset.save_as``,
    ``SimpleITK.WriteImage``): ``suffix`` keeps the extension those writers dispatch on (default: the
    destination's full suffix, e.g. ``.nii.gz``). ``fsync=False`` skips flushing to disk before the rename:
    the file is still never seen half-written, but may be lost on power failure; bulk writers whose index file
    is written last (the data generator) use it, since fsync dominates writing many small files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _atomic_stream(
    path: str | os.PathLike, mode: str, write: Callable[[IO], Any], **open_kwargs: Any
) -> Path:
    with atomic_path(path, suffix="") as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    return _atomic_stream(path, "wb", lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (``encoding`` defaults to UTF-8); returns ``Path(path)``."""
    return _atomic_stream(path, "w", lambda f: f.write(text), encoding=encoding)


def to_jsonable(x: Any) -> Any:
    """A JSON-ready copy of a config or result: mappings (str keys) and sequences recursively, one-element
    tensors as numbers, non-finite floats as ``None`` (JSON has no NaN), anything else as its ``str``."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if hasattr(x, "numel") and x.numel() == 1:  # a torch scalar (torch is not imported here)
        return to_jsonable(x.item())
    return str(x)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **dumps_kwargs: Any) -> Path:
    """Serialise ``obj`` with :func:`json.dumps` (``allow_nan=False`` unless given: NaN is not JSON) and
    write it atomically. The text is produced before the file is opened, so a serialisation error leaves
    the destination untouched."""
    dumps_kwargs.setdefault("allow_nan", False)
    text = json.dumps(obj, indent=indent, **dumps_kwargs)
    return atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` made atomic: an interrupted save never replaces a good checkpoint.

    Load the result with ``torch.load(path, weights_only=True)``.
    """
    import torch

    return _atomic_stream(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, fsync: bool = True
) -> Path:
    """Write a plain (X, Y[, Z]) array with a voxel-to-world ``affine`` (4 x 4, mm, RAS) atomically with
    nibabel.

    The dtype is kept (int16 HU stays int16). nibabel writes gzip without time stamp or file name, so equal
    inputs give byte-identical files. ``fsync=False``: see :func:`atomic_path`. Returns ``Path(path)``.
    """
    import nibabel as nib  # imported on use: most callers of this module never write NIfTI

    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        nib.save(image, tmp)
    return path
