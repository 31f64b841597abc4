"""DDP correctness: two gloo CPU processes, each fed part of the data, aggregate what one process gets on all.

The split is uneven (3 images on rank 0, 2 on rank 1) so that MONAI's padded all-gather is exercised.  The
single-process results are computed in the parent (no process group) and every rank compares its own
``aggregate()`` with them; a failed assertion in a child fails the test through ``spawn``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monai_wsol.metrics.box_accuracy import BoxAccuracyMetric
from monai_wsol.metrics.localization import LocalizationAccuracyMetric
from monai_wsol.metrics.mask_overlap import MaskOverlapMetric
from monai_wsol.metrics.pxap import PxAPMetric

WORLD = 2
N = 5
SPLITS = ([0, 1, 2], [3, 4])
TAUS = np.arange(0, 1, 0.02)


def _data() -> dict[str, Any]:
    """Small deterministic 2D and 3D samples (a bright block on a random low background)."""
    rng = np.random.default_rng(11)
    cams2d = rng.uniform(0, 0.4, (N, 1, 20, 20))
    cams3d = rng.uniform(0, 0.4, (N, 1, 6, 10, 10))
    boxes2d, boxes3d = [], []
    for i in range(N):
        r, c = rng.integers(0, 10, 2)
        cams2d[i, 0, r : r + 8, c : c + 6] = rng.uniform(0.6, 1.0)
        boxes2d.append(np.array([[c, r, c + 5 + i % 2, r + 7]]))  # x0, y0, x1, y1, a pixel off for odd i
        a, b = rng.integers(0, 4, 2)
        cams3d[i, 0, a : a + 3, b : b + 5, 2:7] = 1.0
        boxes3d.append(np.array([[a, b, 2, a + 2, b + 4 + i % 2, 6]]))
    cams2d /= cams2d.max(axis=(1, 2, 3), keepdims=True)
    return {
        "cams2d": cams2d,
        "cams3d": cams3d,
        "masks2d": cams2d > 0.5,
        "masks3d": cams3d > 0.5,
        "ignore2d": rng.random(cams2d.shape) < 0.1,
        "boxes2d": boxes2d,
        "boxes3d": boxes3d,
        "logits": rng.normal(size=(N, 4)),
        "labels": rng.integers(0, 4, N),
    }


def _feed(name: str, idx: list[int], d: dict[str, Any]) -> Any:
    """Build metric ``name`` and feed it images ``idx``, one call per image to stream in small batches."""
    factories: dict[str, Callable[[], Any]] = {
        "box_v2": lambda: BoxAccuracyMetric(thresholds=TAUS, multi_contour=True),
        "box_3d": lambda: BoxAccuracyMetric(thresholds=TAUS, iou_thresholds=(50,)),
        "pxap": lambda: PxAPMetric(0.05),
        "overlap_2d": lambda: MaskOverlapMetric(TAUS),
        "overlap_3d": lambda: MaskOverlapMetric(TAUS, spatial_dims=3),
        "loc_2d": lambda: LocalizationAccuracyMetric(4, TAUS, topk=2, fixed_threshold=0.2),
        "loc_3d": lambda: LocalizationAccuracyMetric(4, TAUS, multi_contour=True, fixed_threshold=0.5),
    }
    metric = factories[name]()
    for i in idx:
        s = slice(i, i + 1)
        if name == "box_v2":
            metric(d["cams2d"][s], d["boxes2d"][s])
        elif name == "box_3d":
            metric(d["cams3d"][s], d["boxes3d"][s])
        elif name == "pxap":
            metric(d["cams2d"][s], d["masks2d"][s], d["ignore2d"][s])
        elif name == "overlap_2d":
            metric(d["cams2d"][s], d["masks2d"][s], ignore=d["ignore2d"][s])
        elif name == "overlap_3d":
            metric(torch.from_numpy(d["cams3d"][s]), torch.from_numpy(d["masks3d"][s]))
        elif name == "loc_2d":
            metric(d["logits"][s], d["labels"][s], d["cams2d"][s], d["boxes2d"][s])
        else:
            metric(d["logits"][s], d["labels"][s], d["cams3d"][s], d["boxes3d"][s], pred_cam=d["cams3d"][s])
    return metric


NAMES = ("box_v2", "box_3d", "pxap", "overlap_2d", "overlap_3d", "loc_2d", "loc_3d")


def _assert_same(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert sorted(got) == sorted(want), where
    for key, value in want.items():
        a, b = (
            np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
            for v in (got[key], value)
        )
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=f"{where}: {key}")


def _worker(rank: int, init_file: str, reference: dict[str, dict[str, Any]]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        data = _data()
        for name in NAMES:
            metric = _feed(name, SPLITS[rank], data)
            result = metric.aggregate()
            _assert_same(result, reference[name], f"rank {rank}, {name}")
            # the gathered buffer holds every image once, in rank order
            assert result.get("num_images", N) == N
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_aggregate_on_each_rank_equals_single_process(tmp_path):
    data = _data()
    reference = {name: _feed(name, list(range(N)), data).aggregate() for name in NAMES}
    # sanity: the data make the figures non-trivial
    assert 0 < reference["loc_2d"]["gt_known_loc"] <= 100 and 0 < reference["overlap_3d"]["dice"] < 1 + 1e-12
    assert reference["box_3d"]["MaxBoxAcc"] > 0
    mp.spawn(_worker, args=(str(tmp_path / "dist_init"), reference), nprocs=WORLD, join=True)
