"""Real head scans that packages ship, loaded as ``(image, brain mask, affine)`` for the embedded default.

Three sources, none downloaded at run time (see ``docs/data.md`` for licences):

- ``"mni152"``: the MNI152 T1 template and brain mask bundled in the ``nilearn`` wheel
  (``nilearn.datasets.load_mni152_template`` / ``load_mni152_brain_mask``; the ``fetch_*`` functions download
  and are never called). 2 mm grid, 99 x 117 x 95.
- ``"colin27"``: Colin27 T1 (``ch2.nii.gz``) and its brain-extracted version (``ch2bet.nii.gz``, whose
  non-zero voxels are the brain mask) from Debian's ``mricron-data`` (``/usr/share/mricron/templates``),
  1 mm grid, 181 x 217 x 181.
- ``"ct"``: the head CT in Debian's ``invesalius-examples`` (``Cranium.inv3``, a gzipped tar whose
  ``*/matrix.dat`` is a raw int16 Hounsfield volume, shape and spacing in ``main.plist``); GPL, so it is
  installed by ``scripts/fetch_test_data.sh`` (apt) and never vendored. The intracranial mask is derived
  from the HU values (:func:`ct_brain_mask`).

Every array is in MONAI's array order (x, y, z) with a RAS affine, like ``NibabelReader`` returns.
"""

from __future__ import annotations

import os
import plistlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from monai_wsol.transforms.functional import keep_regions

__all__ = [
    "SOURCES",
    "SourceVolume",
    "SourceUnavailableError",
    "load_source",
    "ct_brain_mask",
    "mricron_dir",
    "invesalius_inv3",
]

SOURCES = ("mni152", "colin27", "ct")

_MRICRON_DIR = "/usr/share/mricron/templates"
_INVESALIUS_INV3 = "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"


class SourceUnavailableError(FileNotFoundError):
    """A source scan is not installed on this machine (the message says how to install it)."""


@dataclass(frozen=True)
class SourceVolume:
    """One real scan with its brain mask.

    Attributes:
        name: the source key (one of :data:`SOURCES`).
        image: float32 array (X, Y, Z); MR in the template's own units, CT in Hounsfield units.
        brain: bool array (X, Y, Z), where lesions may be placed.
        affine: 4 x 4 voxel-to-world (RAS, mm) matrix.
        modality: ``"MR"`` or ``"CT"``.
        origin: a human-readable description of where the data came from.
    """

    name: str
    image: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    modality: str
    origin: str

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along the three array axes."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def mricron_dir() -> Path:
    """Folder with ``ch2.nii.gz`` / ``ch2bet.nii.gz``.

    The environment variable ``MONAI_WSOL_MRICRON_DIR`` overrides the Debian path.
    """
    return Path(os.environ.get("MONAI_WSOL_MRICRON_DIR", _MRICRON_DIR))


def invesalius_inv3() -> Path:
    """``Cranium.inv3`` path (env ``MONAI_WSOL_INVESALIUS_INV3`` overrides the Debian path)."""
    return Path(os.environ.get("MONAI_WSOL_INVESALIUS_INV3", _INVESALIUS_INV3))


def _require(path: Path, package: str) -> Path:
    if not path.exists():
        raise SourceUnavailableError(
            f"{path} not found: install the Debian package '{package}' (scripts/fetch_test_data.sh does it) "
            "or point the environment variable named in monai_wsol.data.sources at a copy."
        )
    return path


def _load_mni152() -> SourceVolume:
    try:
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template
    except ImportError as e:  # pragma: no cover - nilearn is in the [data] extra
        raise SourceUnavailableError("source 'mni152' needs nilearn: pip install nilearn") from e
    template = load_mni152_template(resolution=2)
    mask = load_mni152_brain_mask(resolution=2)
    image = np.asarray(template.get_fdata(dtype=np.float32))
    brain = np.asarray(mask.get_fdata(dtype=np.float32)) > 0.5
    return SourceVolume(
        "mni152", image, brain, np.asarray(template.affine, dtype=float), "MR", "nilearn MNI152 T1 2 mm"
    )


def _load_colin27() -> SourceVolume:
    import nibabel as nib

    folder = mricron_dir()
    t1 = nib.load(_require(folder / "ch2.nii.gz", "mricron-data"))
    bet = nib.load(_require(folder / "ch2bet.nii.gz", "mricron-data"))
    image = np.asarray(t1.get_fdata(dtype=np.float32))
    # ch2bet keeps a few isolated non-brain voxels: keep the largest component only
    brain = keep_regions(np.asarray(bet.dataobj) > 0)
    return SourceVolume(
        "colin27", image, brain, np.asarray(t1.affine, dtype=float), "MR", "mricron-data Colin27 ch2"
    )


def read_inv3_matrix(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read the CT matrix of an InVesalius ``.inv3`` project without unpacking it to disk.

    Returns:
        the int16 HU volume in the file's (slice, row, column) order and the (column, row, slice) spacing in
        mm.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            if "main.plist" not in members or "matrix.dat" not in members:
                raise ValueError(f"{path}: not an InVesalius project (main.plist / matrix.dat missing)")
            meta = plistlib.loads(tar.extractfile(members["main.plist"]).read())
            raw = tar.extractfile(members["matrix.dat"]).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{path}: unreadable InVesalius project ({e})") from e
    shape = tuple(int(s) for s in meta["matrix"]["shape"])
    dtype = np.dtype(meta["matrix"]["dtype"]).newbyteorder("<")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: matrix.dat has {len(raw)} bytes, main.plist shape {shape} needs {expected}"
        )
    spacing = tuple(float(s) for s in meta["spacing"])
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.int16), spacing  # type: ignore[return-value]


def _convex_hull_2d(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2D bool mask (OpenCV works in (row, col) = (y, x) point order)."""
    import cv2

    pts = np.argwhere(mask)[:, ::-1].astype(np.int32)
    hull = cv2.convexHull(pts)
    out = np.zeros(mask.shape, dtype=np.uint8)
    cv2.fillPoly(out, [hull], 1)
    return out.astype(bool)


def ct_brain_mask(
    hu: np.ndarray, bone_hu: float = 250.0, tissue_hu: tuple[float, float] = (0.0, 90.0)
) -> np.ndarray:
    """Intracranial soft tissue of a head CT, from its HU values alone.

    The skull of a real CT is rarely a closed ring at any threshold (foramina, partial volume, the occiput
    resting on the head holder), so hole filling fails; instead, per axial slice (last axis), the inside of
    the head is the convex hull of the bone of the body (the largest component above -300 HU, which drops the
    head holder). The intracranial region is that hull minus the dilated bone, restricted to soft-tissue HU,
    opened, reduced to its largest 3D component, hole-filled (ventricles, sulci) and eroded so that lesions
    stay off the inner table.

    Args:
        hu: (X, Y, Z) HU volume.
        bone_hu: bone threshold.
        tissue_hu: soft-tissue HU range kept as "brain".

    Returns:
        bool (X, Y, Z) mask.
    """
    body = keep_regions(hu > -300)
    bone = (hu > bone_hu) & body
    inside = np.zeros_like(bone)
    for z in range(hu.shape[-1]):
        if bone[..., z].sum() > 50:
            inside[..., z] = _convex_hull_2d(bone[..., z])
    brain = (
        inside & ~ndimage.binary_dilation(bone, iterations=2) & (hu >= tissue_hu[0]) & (hu <= tissue_hu[1])
    )
    brain = keep_regions(ndimage.binary_opening(brain, iterations=2))
    if not brain.any():
        raise ValueError("no intracranial soft tissue found in the CT volume")
    for z in range(hu.shape[-1]):
        brain[..., z] = ndimage.binary_fill_holes(brain[..., z])
    return ndimage.binary_erosion(brain, iterations=2)


def _load_ct() -> SourceVolume:
    path = _require(invesalius_inv3(), "invesalius-examples")
    matrix, (sx, sy, sz) = read_inv3_matrix(path)
    # (slice, row, column) -> MONAI (x=column, y=row, z=slice)
    hu = np.ascontiguousarray(matrix.transpose(2, 1, 0)).astype(np.float32)
    # The project stores no orientation; from the anatomy, rows run anterior -> posterior and slices
    # inferior -> superior; columns are taken as radiological (patient right -> left). In RAS that is
    # x -> -R, y -> -A, z -> +S.
    affine = np.diag([-sx, -sy, sz, 1.0])
    brain = ct_brain_mask(hu)
    return SourceVolume("ct", hu, brain, affine, "CT", f"invesalius-examples {path.name} (GPL)")


_LOADERS = {"mni152": _load_mni152, "colin27": _load_colin27, "ct": _load_ct}


def load_source(name: str) -> SourceVolume:
    """Load one of :data:`SOURCES` as a :class:`SourceVolume`.

    Raises:
        ValueError: unknown ``name``.
        SourceUnavailableError: the package holding the scan is not installed.
    """
    if name not in _LOADERS:
        raise ValueError(f"source={name!r} is not one of {SOURCES}")
    return _LOADERS[name]()
