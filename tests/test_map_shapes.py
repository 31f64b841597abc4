"""The shape figures of a map against its lesion, each on a map built to have a known value."""

from __future__ import annotations

import numpy as np
import pytest

from monai_wsol.metrics.map_shapes import MAP_SHAPE_KEYS, map_shape


def _lesion(shape=(20, 24, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[4:10, 6:12, 2:6] = True  # 6 x 6 x 4 = 144 voxels
    return mask


def test_the_mask_itself_is_on_the_lesion_whole_and_in_one_piece():
    mask = _lesion()
    shape = map_shape(mask.astype(float), mask, tau=0.5)
    assert list(shape) == list(MAP_SHAPE_KEYS)
    assert shape == {
        "mass_in_lesion": 1.0,
        "peak_in_lesion": 1.0,
        "centroid_offset_mm": 0.0,
        "area_ratio": 1.0,
        "components": 1.0,
        "coverage": 1.0,
        "precision": 1.0,
    }


def test_a_shifted_map_is_offset_by_the_shift_in_mm():
    mask = _lesion()
    cam = np.roll(mask, 3, axis=0).astype(float)  # 3 voxels along x: half the lesion's 6 still overlap
    shape = map_shape(cam, mask, tau=0.5, spacing=(2.0, 1.0, 1.0))
    assert shape["centroid_offset_mm"] == pytest.approx(6.0)
    assert shape["coverage"] == shape["precision"] == shape["mass_in_lesion"] == pytest.approx(0.5)
    assert shape["area_ratio"] == 1.0 and shape["components"] == 1.0
    assert map_shape(cam, mask, tau=0.5)["centroid_offset_mm"] == pytest.approx(3.0)


def test_peaked_and_fragmented_maps():
    mask = _lesion()
    peaked = np.zeros(mask.shape)
    peaked[6:9, 8:11, 3:5] = 1.0  # 18 voxels inside the lesion
    peaked[mask] = np.maximum(peaked[mask], 0.2)
    shape = map_shape(peaked, mask, tau=0.5)
    assert shape["area_ratio"] == pytest.approx(18 / 144) and shape["coverage"] == pytest.approx(18 / 144)
    assert shape["precision"] == 1.0 and shape["mass_in_lesion"] == 1.0
    fragmented = mask.astype(float)
    fragmented[:, 8, :] = 0.0  # the lesion cut in two along y
    fragmented[15:18, 18:21, 7:9] = 0.9  # and a blob off it, the map's peak being on the lesion
    shape = map_shape(fragmented, mask, tau=0.5)
    assert shape["components"] == 3.0 and shape["peak_in_lesion"] == 1.0
    off = fragmented.copy()
    off[16, 19, 8] = 1.5  # the peak off the lesion
    assert map_shape(np.clip(off, 0, 2), mask, tau=0.5)["peak_in_lesion"] == 0.0


def test_2d_nothing_above_tau_and_bad_input():
    mask = _lesion()[:, :, 3]
    shape = map_shape(np.full(mask.shape, 0.1)[None], mask[None], tau=0.5)  # channel-first accepted
    assert np.isnan(shape["centroid_offset_mm"]) and np.isnan(shape["precision"])
    assert shape["area_ratio"] == 0.0 and shape["components"] == 0.0 and shape["coverage"] == 0.0
    assert shape["mass_in_lesion"] == pytest.approx(mask.sum() / mask.size)
    with pytest.raises(ValueError, match="no lesion"):
        map_shape(np.ones(mask.shape), np.zeros(mask.shape), 0.5)
    with pytest.raises(ValueError, match="one 2D or 3D shape"):
        map_shape(np.ones((4, 4)), np.ones((4, 5)), 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        map_shape(np.full(mask.shape, np.nan), mask, 0.5)
    with pytest.raises(ValueError, match="spacing"):
        map_shape(np.ones(mask.shape), mask, 0.5, spacing=(1.0, 0.0))
