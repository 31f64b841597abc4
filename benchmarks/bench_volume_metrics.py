"""Speed of the 3D evaluation's two sweeps against the obvious alternatives, same results checked.

- **Boxes** (MaxBoxAccV2's every-component boxes at 1000 thresholds): ``boxes_from_scorevolume`` with
  ``method="union_find"`` (one sweep over the nested masks, the default from 32768 voxels) against
  ``method="label"`` (``scipy.ndimage.label`` once per distinct mask, cropped).
- **Lesion detection** (lesions found at IoU >= 0.3 and false components at 100 mask thresholds):
  ``detection_curve`` (each lesion mask labelled once, each predicted mask labelled in its foreground's box)
  against the per-image ``lesion_detection_counts`` at every threshold (the lesion mask labelled again each
  time).

Maps: smooth random volumes with box lesions of the 3D embedded default's size (48 x 48 x 19), or a finished
3D run's kept test lesion maps (``--maps <run>/eval/test_examples.npz``). Run::

    python benchmarks/bench_volume_metrics.py --threads 1
    python benchmarks/bench_volume_metrics.py --maps runs/bench3d/runs/3d/cam/seed0/eval/test_examples.npz
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai_wsol.metrics.detection import detection_curve, lesion_detection_counts
from monai_wsol.metrics.volume import _other_variant, boxes_from_scorevolume


def synthetic_maps(n: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (maps, lesion masks): one or two box lesions each, the map the blurred lesions plus smooth noise,
    min-max normalised."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for _ in range(n):
        mask = np.zeros(shape, np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            side = rng.integers(4, 12, size=3)
            lo = rng.integers(0, np.array(shape) - side)
            mask[tuple(slice(a, a + s) for a, s in zip(lo, side, strict=True))] = 1
        score = ndimage.gaussian_filter(mask.astype(float), 2.0) + 0.3 * ndimage.gaussian_filter(
            rng.random(shape), 2.0
        )
        maps.append((score - score.min()) / (score.max() - score.min()))
        masks.append(mask)
    return np.stack(maps).astype(np.float32), np.stack(masks)


def detection_per_threshold(maps: np.ndarray, masks: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """The alternative: the per-image counts (``lesion_detection_counts``, which labels the lesion mask on
    every call) at every threshold."""
    out = np.zeros((len(taus), 4), np.int64)
    for score, target in zip(maps, masks, strict=True):
        for k, tau in enumerate(taus):
            out[k] += lesion_detection_counts(score >= tau, target)
    return out


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        _other_variant.clear()  # each timing sweeps anew (no box variant kept from the last)
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=Path, default=None, help="a run's test_examples.npz (cams, gt_masks)")
    parser.add_argument("--n", type=int, default=24, help="synthetic volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 48, 19])
    parser.add_argument("--repeat", type=int, default=2, help="timings: best of this many runs")
    parser.add_argument("--threads", type=int, default=None, help="torch / BLAS threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.maps is not None:
        with np.load(args.maps) as z:
            maps, masks = z["cams"].astype(np.float32), z["gt_masks"]
        source = str(args.maps)
    else:
        maps, masks = synthetic_maps(args.n, tuple(args.shape))
        source = f"{args.n} synthetic volumes"
    print(f"{source}: {len(maps)} maps of {maps.shape[1:]}, torch threads {torch.get_num_threads()}")

    box_taus = np.arange(0, 1, 0.001)
    rows = []
    timings = {}
    for method in ("union_find", "label"):
        seconds, boxes = best_of(
            lambda m=method: [boxes_from_scorevolume(v, box_taus, True, method=m) for v in maps], args.repeat
        )
        timings[method] = (seconds, boxes)
    same = all(
        all(np.array_equal(a, b) for a, b in zip(x, y, strict=True))
        for x, y in zip(timings["union_find"][1], timings["label"][1], strict=True)
    )
    fast, slow = timings["union_find"][0], timings["label"][0]
    rows.append(("boxes V2, 1000 taus", "union_find", fast, "label per distinct mask", slow, same))

    mask_taus = np.arange(0, 1, 0.01)
    items = [torch.from_numpy(m)[None] for m in maps], [torch.from_numpy(m)[None] for m in masks]
    fast, curve = best_of(lambda: detection_curve(*items, mask_taus), args.repeat)
    slow, reference = best_of(lambda: detection_per_threshold(maps, masks, mask_taus), args.repeat)
    rows.append(
        (
            "detection, 100 taus",
            "detection_curve",
            fast,
            "per-image counts per tau",
            slow,
            np.array_equal(curve, reference),
        )
    )

    print("| sweep | this | s | alternative | s | ratio | same |")
    print("|---|---|---|---|---|---|---|")
    for name, this, t_this, other, t_other, equal in rows:
        print(
            f"| {name} | {this} | {t_this:.2f} | {other} | {t_other:.2f} | {t_other / t_this:.2f}x "
            f"| {equal} |"
        )


if __name__ == "__main__":
    main()
