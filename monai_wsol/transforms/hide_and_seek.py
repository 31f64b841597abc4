"""Hide-and-Seek (Singh & Lee, ICCV 2017, https://arxiv.org/abs/1704.04232) as MONAI random transforms.

The image is divided into a regular grid of cells over *all* spatial dimensions (squares in 2D, cubes in 3D)
and each cell is hidden independently with probability ``hide_prob`` by overwriting it with ``fill_value``.
The classifier can then no longer rely on the most discriminative part alone, which spreads its CAM over the
object. Training-time only: never put these transforms in an inference or validation pipeline.

Reference checked: ``clovaai/wsolevaluation`` ``wsol/method/has.py`` (fills with 0 on normalised images, one
cell draw per cell and per sample). The paper fills with the dataset mean so that the first-layer activation
statistics at test time match training; pass that mean (scalar or per channel, in the same intensity space as
the transform's input) as ``fill_value``. ``fill_value=None`` uses 0, the dataset mean of zero-mean normalised
input. The paper also draws the grid size at random from a set per epoch; here ``grid_size`` is fixed per
transform.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

__all__ = ["RandHideAndSeek", "RandHideAndSeekd", "RandHideAndSeekD", "RandHideAndSeekDict"]


class RandHideAndSeek(RandomizableTransform):
    """Hide random grid cells of a channel-first image (C, *spatial), 2D or 3D.

    Args:
        grid_size: edge length of a cell in voxels, one int for every spatial dim or one per dim. Cells at the
            far border are cut by the image edge. Must be >= 1.
        hide_prob: probability that a cell is hidden, in [0, 1]. Default 0.5 (the paper's value).
        fill_value: value written into hidden cells: a scalar, one value per channel, or ``None`` for 0.
        prob: probability of applying the transform at all, in [0, 1]. Default 1.0.

    The output has the input's shape, type and (for MetaTensor) metadata; spacing and affine are untouched
    because no voxel moves. After a call, :meth:`hidden_mask` gives the boolean (*spatial) mask of what was
    hidden.
    """

    backend = ["torch", "numpy"]

    def __init__(
        self,
        grid_size: int | Sequence[int],
        hide_prob: float = 0.5,
        fill_value: float | Sequence[float] | None = None,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        sizes = [grid_size] if isinstance(grid_size, int) else list(grid_size)
        if not sizes or any(int(g) < 1 for g in sizes):
            raise ValueError(
                f"RandHideAndSeek: grid_size must be >= 1 (int or one per spatial dim), got {grid_size}."
            )
        if not 0.0 <= hide_prob <= 1.0:
            raise ValueError(f"RandHideAndSeek: hide_prob must be in [0, 1], got {hide_prob}.")
        self.grid_size = grid_size
        self.hide_prob = float(hide_prob)
        self.fill_value = fill_value
        self._cells: np.ndarray | None = None
        self._spatial_shape: tuple[int, ...] | None = None

    def _grid(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        try:
            sizes = ensure_tuple_rep(self.grid_size, len(spatial_shape))
        except ValueError as e:
            raise ValueError(
                f"RandHideAndSeek: grid_size {self.grid_size} does not match the image's "
                f"{len(spatial_shape)} "
                "spatial dims (give one int or one value per spatial dim)."
            ) from e
        return tuple(int(g) for g in sizes)

    def randomize(self, data: NdarrayOrTensor) -> None:
        """Draw whether to apply and which cells to hide for an image of shape (C, *spatial)."""
        super().randomize(None)
        if not self._do_transform:
            return
        spatial_shape = tuple(int(s) for s in data.shape[1:])
        n_cells = [-(-s // g) for s, g in zip(spatial_shape, self._grid(spatial_shape), strict=True)]  # ceil
        self._cells = self.R.random_sample(n_cells) < self.hide_prob
        self._spatial_shape = spatial_shape

    def hidden_mask(self) -> torch.Tensor:
        """Boolean (*spatial) mask of the voxels hidden by the last call (all False if it was not applied)."""
        if self._spatial_shape is None or self._cells is None:
            raise RuntimeError("RandHideAndSeek.hidden_mask: the transform has not been randomized yet.")
        if not self._do_transform:
            return torch.zeros(self._spatial_shape, dtype=torch.bool)
        mask = torch.as_tensor(self._cells)
        for dim, g in enumerate(self._grid(self._spatial_shape)):
            mask = mask.repeat_interleave(g, dim=dim)
        return mask[tuple(slice(0, s) for s in self._spatial_shape)]

    def _fill(self, img: torch.Tensor) -> torch.Tensor:
        n_channels = img.shape[0]
        fill = torch.as_tensor(
            0.0 if self.fill_value is None else self.fill_value, dtype=img.dtype, device=img.device
        )
        if fill.ndim == 0:
            return fill
        if fill.numel() != n_channels:
            raise ValueError(
                f"RandHideAndSeek: fill_value has {fill.numel()} values but the image has "
                f"{n_channels} channels."
            )
        return fill.reshape(n_channels, *([1] * (img.ndim - 1)))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """img: (C, *spatial) array or tensor -> same shape and type, grid cells hidden."""
        if img.ndim < 2:
            raise ValueError(
                f"RandHideAndSeek: expected a channel-first image (C, *spatial), got shape {img.shape}."
            )
        if randomize:
            self.randomize(img)
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if not self._do_transform:
            return convert_to_dst_type(img_t, dst=img)[0]
        if self._spatial_shape != tuple(img_t.shape[1:]):
            raise ValueError(
                f"RandHideAndSeek: randomized for spatial shape {self._spatial_shape}, "
                f"called on {tuple(img_t.shape[1:])}."
            )
        mask = self.hidden_mask().to(img_t.device).unsqueeze(0)
        out = torch.where(mask, self._fill(img_t), img_t)
        return convert_to_dst_type(out, dst=img)[0]


class RandHideAndSeekd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandHideAndSeek`: the same cells are hidden in every key.

    The cells are drawn from the first key's spatial shape; all keys must share it.
    """

    backend = RandHideAndSeek.backend

    def __init__(
        self,
        keys: KeysCollection,
        grid_size: int | Sequence[int],
        hide_prob: float = 0.5,
        fill_value: float | Sequence[float] | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.hider = RandHideAndSeek(
            grid_size=grid_size, hide_prob=hide_prob, fill_value=fill_value, prob=1.0
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandHideAndSeekd:
        super().set_random_state(seed, state)
        self.hider.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key: Hashable = self.first_key(d)
        if first_key == ():
            return d
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        self.hider.randomize(d[first_key])
        for key in self.key_iterator(d):
            d[key] = self.hider(d[key], randomize=False)
        return d


RandHideAndSeekD = RandHideAndSeekDict = RandHideAndSeekd
