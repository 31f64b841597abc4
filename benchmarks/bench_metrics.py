"""Speed of the exact per-threshold box extraction against the reference's plain per-threshold loop.

Prints maps/second for (a) the reference's loop (``cv2.threshold`` + ``findContours`` + ``contourArea`` per
tau), (b) ``monai_wsol.metrics.boxes_from_scoremap`` (its default, ``order="any"``) on one core and (c) the
same over 2 processes, and the ratios; it also asserts that all three give the same boxes (a correctness
check, not a timing one): identical in v1 mode, equal multisets per threshold in V2 mode (the default order is
the kernel's).  In V2 mode (d) times the boxes in OpenCV's order (``order="opencv"``), asserted identical to
the reference's.  (e) times the whole metric call that MaxBoxAcc /
MaxBoxAccV2 cost per map (``MaxBoxAccMetric()(cams, gt_boxes)`` / ``MaxBoxAccV2Metric()``, a batch of all the
maps of one size, input checks included) and asserts that its best-IoU curves equal those of the reference's
boxes; with ``--threads N`` also (f) the same metric with ``num_workers=N`` threads.

    python benchmarks/bench_metrics.py [--maps fixture|smooth|blobs|all] [--taus 1000] [--modes v1 v2]
        [--repeat 3] [--threads 2]

Every timing (the reference loop's too) is the best of ``--repeat`` runs; "cpu" columns are this process's
CPU time, the fairer figure on a shared host (other processes' time slices are not counted).

``fixture`` are the score maps of ``metric_golden.npz`` (60 maps, 16 to 224 px, smooth and noisy ones);
``smooth`` are random smooth 224x224 maps (Gaussian-filtered noise: many peaks, many regions at most
thresholds, the hard case); ``blobs`` are CAM-like 224x224 maps with one or two Gaussian blobs (the
common case of a trained classifier on a lesion).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from monai_wsol.metrics import (  # noqa: E402
    MaxBoxAccMetric,
    MaxBoxAccV2Metric,
    best_iou_curve,
    boxes_from_scoremap,
    boxes_from_scoremaps,
    contours,  # noqa: E402
)
from monai_wsol.metrics.contours import reference_boxes_from_scoremap  # noqa: E402

FIXTURE = os.path.join(
    os.environ.get(
        "MONAI_WSOL_FIXTURES", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
    ),
    "metric_golden.npz",
)


def fixture_maps() -> list[np.ndarray]:
    data = np.load(FIXTURE)
    shapes = data["cam_shapes"]
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
    flat = data["cams_flat"].astype(np.float64)  # the reference reads them as float64
    return [flat[offsets[i] : offsets[i + 1]].reshape(shapes[i]) for i in range(len(shapes))]


def smooth_maps(n: int = 24, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = []
    for k in range(n):
        m = ndimage.gaussian_filter(rng.random((size, size)), sigma=8 + 2 * (k % 5))
        maps.append((m - m.min()) / (m.max() - m.min()))
    return maps


def blob_maps(n: int = 24, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """CAM-like maps of a trained classifier on one or two lesions.

    Each map: 1-2 Gaussian blobs and faint smooth noise.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    maps = []
    for k in range(n):
        m = 0.05 * ndimage.gaussian_filter(rng.random((size, size)), sigma=12)
        for _ in range(1 + k % 2):
            cy, cx = rng.uniform(0.2, 0.8, size=2) * size
            sy, sx = rng.uniform(0.05, 0.2, size=2) * size
            m += rng.uniform(0.5, 1.0) * np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
        maps.append((m - m.min()) / (m.max() - m.min()))
    return maps


def _timed(fn, repeat: int = 1):
    """Result, wall seconds and this process's CPU seconds (the fairer single-core figure on a shared host),
    each the best of ``repeat`` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return out, best_wall, best_cpu


def gt_boxes_for(maps: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """One or two random GT boxes ``[x0, y0, x1, y1]`` inside each map."""
    rng = np.random.default_rng(seed)
    out = []
    for m in maps:
        h, w = m.shape
        boxes = []
        for _ in range(1 + int(rng.integers(0, 2))):
            x0, x1 = np.sort(rng.integers(0, w, size=2))
            y0, y1 = np.sort(rng.integers(0, h, size=2))
            boxes.append([x0, y0, x1, y1])
        out.append(np.asarray(boxes, dtype=np.int64))
    return out


def bench_metric(
    maps: list[np.ndarray],
    taus: np.ndarray,
    multi: bool,
    ref: list[list[np.ndarray]],
    c_ref: float,
    w_ref: float,
    repeat: int,
    threads: int,
) -> None:
    """(e)/(f): the metric's whole call per map, on batches of same-size maps.

    The outputs are checked against the reference.
    """
    gts = gt_boxes_for(maps)
    metric_cls = MaxBoxAccV2Metric if multi else MaxBoxAccMetric
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(m.shape, []).append(i)
    batches = [
        (np.stack([maps[i] for i in idx])[:, None], [gts[i] for i in idx], idx) for idx in by_shape.values()
    ]

    def run(workers: int) -> np.ndarray:
        metric = metric_cls(thresholds=taus, num_workers=workers)
        curves = np.empty((len(maps), len(taus)))
        for cams, gt, idx in batches:
            curves[idx] = metric(cams, gt).numpy()
        return curves

    run(0)  # warm-up
    expected = np.stack([best_iou_curve(r, g) for r, g in zip(ref, gts, strict=True)])
    n = len(maps)
    rows = [("(e) metric call, 1 thread  ", 0)] + (
        [(f"(f) metric call, {threads} threads", threads)] if threads > 1 else []
    )
    for label, workers in rows:
        curves, w, c = _timed(lambda workers=workers: run(workers), repeat)
        assert np.array_equal(curves, expected), f"{label}: best-IoU curves differ from the reference's boxes"
        print(
            f"  {label}: {n / w:12.2f} {n / c:12.2f}   x{w_ref / w:.1f}, x{c_ref / c:.1f}"
            f"   ({1e3 * c / n:.3f} ms cpu per map)"
        )
    print("  metric curves equal to those of the reference's boxes: yes")


def _same(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> bool:
    return all(
        len(x) == len(y) and all(np.array_equal(p, q) for p, q in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


def _same_multisets(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> bool:
    """Equal boxes per (map, threshold) as multisets (sorted rows): all MaxBoxAccV2 needs."""

    def rows(x: np.ndarray) -> np.ndarray:
        return x[np.lexsort(x.T[::-1])]

    return all(
        len(x) == len(y) and all(np.array_equal(rows(p), rows(q)) for p, q in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


def bench(
    name: str, maps: list[np.ndarray], taus: np.ndarray, multi: bool, repeat: int, threads: int
) -> None:
    # warm-up: loads the numba kernel (compiled once, cached on disk)
    boxes_from_scoremap(maps[0], taus, multi)
    ref, w_ref, c_ref = _timed(lambda: [reference_boxes_from_scoremap(m, taus, multi) for m in maps], repeat)
    ours, w_one, c_one = _timed(lambda: [boxes_from_scoremap(m, taus, multi) for m in maps], repeat)
    pooled, w_two, _ = _timed(lambda: boxes_from_scoremaps(maps, taus, multi, num_workers=2))
    # V2 boxes come in the kernel's order by default: the same multisets as the reference's
    same = _same_multisets if multi else _same
    assert same(ours, ref), f"{name}: boxes differ from the reference loop"
    assert same(pooled, ref), f"{name}: pooled boxes differ from the reference loop"
    n = len(maps)
    mode = "v2 (all contours)" if multi else "v1 (largest contour)"
    print(f"\n{name}: {n} maps, {len(taus)} thresholds, {mode}")
    print("                                 wall maps/s   cpu maps/s   speed-up (wall, cpu)")
    print(f"  (a) reference loop, 1 core : {n / w_ref:12.2f} {n / c_ref:12.2f}")
    print(
        f"  (b) ours, 1 core           : {n / w_one:12.2f} {n / c_one:12.2f}   "
        f"x{w_ref / w_one:.1f}, x{c_ref / c_one:.1f}"
    )
    print(f"  (c) ours, 2 processes      : {n / w_two:12.2f} {'':>12}   x{w_ref / w_two:.1f} (wall)")
    if multi:
        print("  outputs equal to the reference loop as multisets per threshold: yes")
        # V2 boxes in the reference's own order: the OpenCV path
        opencv, w_cv, c_cv = _timed(
            lambda: [boxes_from_scoremap(m, taus, multi, order="opencv") for m in maps], repeat
        )
        assert _same(opencv, ref), f"{name}: OpenCV-ordered boxes differ from the reference loop"
        print(
            f"  (d) ours, OpenCV order     : {n / w_cv:12.2f} {n / c_cv:12.2f}"
            f"   x{w_ref / w_cv:.1f}, x{c_ref / c_cv:.1f}"
        )
        print("  OpenCV-ordered outputs identical to the reference loop: yes")
    else:
        print("  outputs identical to the reference loop: yes")
    bench_metric(maps, taus, multi, ref, c_ref, w_ref, repeat, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", choices=["fixture", "smooth", "blobs", "all"], default="all")
    parser.add_argument("--taus", type=int, default=1000, help="number of thresholds (step 1/taus)")
    parser.add_argument("--modes", nargs="+", choices=["v1", "v2"], default=["v1", "v2"])
    parser.add_argument("--repeat", type=int, default=3, help="timings: best of this many runs")
    parser.add_argument("--threads", type=int, default=0, help="also time the metric with this many threads")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core for (a) and (b); (c) uses processes
    taus = np.arange(0, 1, 1.0 / args.taus)
    sets = []
    if args.maps in ("fixture", "all") and os.path.isfile(FIXTURE):
        sets.append(("fixture maps", fixture_maps()))
    if args.maps in ("smooth", "all"):
        sets.append(("smooth-noise 224x224 maps", smooth_maps()))
    if args.maps in ("blobs", "all"):
        sets.append(("CAM-like blob 224x224 maps", blob_maps()))
    print(f"OpenCV {cv2.__version__}, NumPy {np.__version__}, {os.cpu_count()} CPUs visible")
    path = "numba union-find kernels" if contours.USE_NUMBA else "OpenCV contours (numba not installed)"
    print(f"default path (v1, and V2 in any order): {path}")
    for name, maps in sets:
        for mode in args.modes:
            bench(name, maps, taus, multi=mode == "v2", repeat=args.repeat, threads=args.threads)


if __name__ == "__main__":
    main()
