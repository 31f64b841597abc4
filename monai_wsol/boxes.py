"""A box value tagged with its coordinate convention, and the only converter between the conventions.

Two conventions meet in this package:

- ``"standard"``: MONAI's ``StandardMode`` (``monai.data.box_utils``) as the transforms, the datalists and the
  writers use it: ``[lo_0, .., lo_{d-1}, hi_0, .., hi_{d-1}]`` along the array's spatial axes **in order**
  (axis 0 first), max corner **exclusive** (``hi = last index + 1``, so ``hi - lo`` is the extent).
- ``"protocol"``: the WSOL protocol's (Choe et al., CVPR 2020, reference ``wsolevaluation``), which its
  metrics read.  2D: ``[x0, y0, x1, y1]`` with x along the **last** array axis (the column) and y along the
  first (the row).  3D: ``[a0, b0, c0, a1, b1, c1]`` along the array axes in order, as
  ``monai_wsol.metrics.volume`` extracts them.  The ends are the reference's ``x + w`` (its contour boxes and
  its CUB metadata alike: one past the last pixel), and its IoU counts the end pixel too (pixel-inclusive
  areas ``(x1 - x0 + 1) (y1 - y0 + 1)``); the extracted boxes additionally clip ``x + w`` to ``W - 1``.

So both conventions give a region the same numbers per axis; they differ in the axis order of 2D boxes,
which is exactly the mistake a bare array cannot reveal (a tall lesion's box read the other way round is a
wide box elsewhere).  :class:`Boxes` carries the convention with the coordinates, :meth:`Boxes.to_protocol`
and :meth:`Boxes.to_standard` are the only conversions, and :func:`check_box_convention` fails loudly where
a boundary expects one convention and receives the other.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

__all__ = ["BOX_CONVENTIONS", "BoxConvention", "Boxes", "check_box_convention", "check_convention_name"]

BoxConvention = Literal["standard", "protocol"]

#: the conventions a :class:`Boxes` may carry, with a one-line description used in error messages
BOX_CONVENTIONS: dict[str, str] = {
    "standard": "MONAI StandardMode: array-axis order (axis 0 first), max corner exclusive",
    "protocol": "WSOL protocol: 2D [x0, y0, x1, y1] with x = last array axis, 3D array-axis order; "
    "ends at start + extent, IoU pixel-inclusive",
}


def check_convention_name(
    convention: str | None, name: str = "convention", allow_none: bool = False
) -> str | None:
    """``convention`` if it names one of :data:`BOX_CONVENTIONS` (or is ``None`` with ``allow_none``).

    Raises:
        ValueError: naming the argument and the valid conventions.
    """
    if convention is None and allow_none:
        return None
    if convention not in BOX_CONVENTIONS:
        valid = f"one of {sorted(BOX_CONVENTIONS)}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {valid}, got {convention!r}.")
    return convention


def _axis_order(spatial_dims: int) -> np.ndarray:
    """Column permutation between the conventions: 2D swaps the axes of both corners, 3D keeps them.

    The permutation is its own inverse, so one function serves both directions.
    """
    if spatial_dims == 2:
        return np.array([1, 0, 3, 2])
    return np.arange(2 * spatial_dims)


class Boxes:
    """Immutable boxes of one image with their convention.

    Args:
        coords: (N, 2 * spatial_dims) coordinates (NumPy, torch on any device, or nested sequences); a single
            box may be given as a flat (2 * spatial_dims,) row.  Integer input is stored as int64, anything
            else as float64; the stored array is a read-only copy.
        convention: ``"standard"`` or ``"protocol"`` (see the module docstring).
        spatial_dims: 2 or 3.

    Raises:
        ValueError: unknown convention or spatial_dims, shape other than (N, 2 * spatial_dims), non-finite
            values, or an inverted box (a max corner below its min corner).

    Example::

        gt = Boxes.standard(datalist_item["boxes"], spatial_dims=2)   # [row0, col0, row1, col1)
        gt.to_protocol().coords                                       # [[col0, row0, col1, row1]]
    """

    __slots__ = ("_coords", "_convention", "_spatial_dims")

    def __init__(self, coords: Any, convention: BoxConvention, spatial_dims: int) -> None:
        check_convention_name(convention)
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if isinstance(coords, Boxes):
            raise TypeError("coords is already a Boxes: use to_standard() / to_protocol() to convert it.")
        if isinstance(coords, torch.Tensor):
            coords = coords.detach().cpu().numpy()
        arr = np.asarray(coords)
        width = 2 * spatial_dims
        if arr.ndim == 1 and arr.size == 0:  # "no box", e.g. a negative's [] in a datalist
            arr = arr.reshape(0, width)
        elif arr.ndim == 1 and arr.size == width:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(
                f"{convention} boxes of {spatial_dims}D images must be (N, {width}), got shape {arr.shape}."
            )
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"box coordinates must be numbers, got dtype {arr.dtype}.")
        arr = np.array(arr, dtype=np.int64 if arr.dtype.kind in "biu" else np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"box coordinates must be finite, got {arr.tolist()}.")
        inverted = (arr[:, spatial_dims:] < arr[:, :spatial_dims]).any(axis=1)
        if inverted.any():
            raise ValueError(
                f"inverted {convention} box (max corner < min corner): {arr[inverted].tolist()}; "
                f"the {convention} convention is {BOX_CONVENTIONS[convention]}."
            )
        arr.setflags(write=False)
        self._coords = arr
        self._convention = convention
        self._spatial_dims = spatial_dims

    @classmethod
    def standard(cls, coords: Any, spatial_dims: int) -> Boxes:
        """Boxes in MONAI ``StandardMode`` (array-axis order, max corner exclusive), e.g. datalist boxes."""
        return cls(coords, "standard", spatial_dims)

    @classmethod
    def protocol(cls, coords: Any, spatial_dims: int) -> Boxes:
        """Boxes in the WSOL protocol's convention (2D: x = last axis first), e.g. ``localization.txt``."""
        return cls(coords, "protocol", spatial_dims)

    @property
    def coords(self) -> np.ndarray:
        """Read-only (N, 2 * spatial_dims) int64 or float64 coordinates."""
        return self._coords

    @property
    def convention(self) -> str:
        """``"standard"`` or ``"protocol"``."""
        return self._convention

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self._spatial_dims

    def __len__(self) -> int:
        return int(self._coords.shape[0])

    def __repr__(self) -> str:
        return f"Boxes.{self._convention}({self._coords.tolist()}, spatial_dims={self._spatial_dims})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Boxes):
            return NotImplemented
        return (
            self._convention == other._convention
            and self._spatial_dims == other._spatial_dims
            and np.array_equal(self._coords, other._coords)
        )

    __hash__ = None  # type: ignore[assignment]  # equality compares arrays by value

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_spatial_dims"):  # set last in __init__: afterwards the value is frozen
            raise AttributeError("Boxes is immutable: build a new one instead.")
        object.__setattr__(self, name, value)

    def __reduce__(self) -> tuple:
        # rebuilt through __init__ (pickle, copy, DataLoader workers): frozen attributes cannot be set one by
        # one
        return (Boxes, (self._coords, self._convention, self._spatial_dims))

    def _converted(self, convention: str) -> Boxes:
        if convention == self._convention:
            return self
        return Boxes(self._coords[:, _axis_order(self._spatial_dims)], convention, self._spatial_dims)

    def to_standard(self) -> Boxes:
        """The same boxes in MONAI ``StandardMode`` (itself when already there)."""
        return self._converted("standard")

    def to_protocol(self) -> Boxes:
        """The same boxes in the WSOL protocol's convention (itself when already there)."""
        return self._converted("protocol")

    def to(self, convention: BoxConvention) -> Boxes:
        """The same boxes in ``convention``."""
        return self._converted(check_convention_name(convention))


def check_box_convention(boxes: Boxes, expected: BoxConvention, name: str = "boxes") -> Boxes:
    """Return ``boxes`` if they are in the ``expected`` convention; raise naming both conventions otherwise.

    The counterpart of the reference's ``check_box_convention``: a boundary that reads one convention calls
    it so that boxes of the other one are never silently read with the wrong axis order.

    Raises:
        TypeError: ``boxes`` is not a :class:`Boxes` (a bare array has no convention to check).
        ValueError: ``expected`` is unknown, or ``boxes.convention != expected``.
    """
    check_convention_name(expected, "expected")
    if not isinstance(boxes, Boxes):
        raise TypeError(
            f"{name} must be a monai_wsol.boxes.Boxes to check its convention, got {type(boxes).__name__}."
        )
    if boxes.convention != expected:
        raise ValueError(
            f"{name} are in the {boxes.convention!r} convention ({BOX_CONVENTIONS[boxes.convention]}), but "
            f"the {expected!r} convention ({BOX_CONVENTIONS[expected]}) is expected here; convert them with "
            f"Boxes.to_{expected}()."
        )
    return boxes
