"""Latency of the dual-suppression block and of CAM -> mask -> box, against the plain network forward (CPU).

For DenseNet121 2D 224^2, DenseNet121 3D 96^3 (low stride, the 3D default) and VGG16-GAP 224^2 it prints the
median time of:

- ``plain``: the plain CAM network's forward (logits only);
- ``+1 SFS`` / ``+2 SFS``: the same network with the "one" / "two" dual-suppression presets;
- ``block@<position>``: each block of the two-block net alone, on the input it gets there (its added latency);
- ``cam+box``: the plain network's ``forward_cam`` (upsampled to the input) + per-image min-max normalisation
  + mask at tau + the mask's bounding box, all batched in torch (what docs/method.md's localisation needs);
- ``cam+loc``: ``forward_cam`` + ``monai_wsol.transforms.CAMToLocation`` per image (normalise, binarise,
  largest connected region, box) when that module is importable.

Variants are timed round-robin (one call of each per round) so that a load change on a shared machine hits all
of them alike; the median over rounds is reported, both as wall-clock time and as process CPU time (the latter
is
what to read on a loaded machine: with ``--threads 1`` it does not count time spent waiting for a core). Run::

    python benchmarks/bench_block.py            # 1 thread, 5 rounds (about 2-3 minutes on a laptop CPU)
    python benchmarks/bench_block.py --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from monai_wsol.networks.nets import CAMVGG16, CAMClassifier, CAMDenseNet121

try:  # the package's CAM -> location transform (optional here: the benchmark also runs without it)
    from monai_wsol.transforms import CAMToLocation
except ImportError:  # pragma: no cover
    CAMToLocation = None

TAU = 0.5


def cam_mask_box(net: CAMClassifier, x: torch.Tensor, tau: float = TAU) -> tuple[torch.Tensor, torch.Tensor]:
    """forward_cam + min-max normalise per image + mask at ``tau`` + bounding box of the mask, batched.

    Returns ``(mask (B, 1, *spatial) bool, boxes (B, 2 * spatial_dims))`` in MONAI's StandardMode (max
    exclusive), ``-1`` rows for empty masks.
    """
    _, cam = net.forward_cam(x)  # (B, 1, *spatial), top-1 class
    flat = cam.flatten(2)
    lo, hi = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    norm = ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(cam)
    mask = norm >= tau
    lows, highs = [], []
    nd = cam.ndim - 2
    for axis in range(nd):
        other = [2 + a for a in range(nd) if a != axis]
        line = (
            mask.amax(dim=other)[:, 0] if other else mask[:, 0]
        )  # (B, S_axis): any foreground on that slice
        size = line.shape[1]
        first = line.float().argmax(1)
        last = size - 1 - line.flip(1).float().argmax(1)
        empty = ~line.any(1)
        lows.append(torch.where(empty, -1, first))
        highs.append(torch.where(empty, -1, last + 1))
    return mask, torch.stack(lows + highs, dim=1)


def cam_to_location(net: CAMClassifier, x: torch.Tensor, tau: float = TAU) -> list:
    """forward_cam at feature resolution + CAMToLocation.

    CAMToLocation: normalise, upsample, binarise, largest region, box.
    """
    _, cam = net.forward_cam(x, upsample=False)
    locate = CAMToLocation(tau=tau, spatial_size=tuple(x.shape[2:]))
    return [locate(c) for c in cam]


def bench(name: str, make: Callable[[str | None, str], CAMClassifier], x: torch.Tensor, rounds: int) -> None:
    plain = make(None, "one").eval()
    nets = {"plain": plain, "+1 SFS": make("dual_suppression", "one").eval()}
    nets["+2 SFS"] = make("dual_suppression", "two").eval()
    calls: dict[str, Callable[[], object]] = {k: (lambda n=n: n(x)) for k, n in nets.items()}
    # the blocks alone, on the very inputs they get inside the two-block net: their cost is the added latency,
    # read without the noise of two whole-network timings
    two, block_inputs = nets["+2 SFS"], {}
    hooks = [
        two.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: block_inputs.setdefault(n, i[0]))
        for n in two.plugin_names
    ]
    with torch.inference_mode():
        two(x)
    for h in hooks:
        h.remove()
    for n, pos in zip(two.plugin_names, two.positions, strict=True):
        calls[f"block@{pos}"] = partial(two.get_submodule(n), block_inputs[n])
    calls["cam+box"] = lambda: cam_mask_box(plain, x)
    if CAMToLocation is not None:
        calls["cam+loc"] = lambda: cam_to_location(plain, x)
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for fn in calls.values():  # warm-up (allocator, oneDNN primitive caches)
            fn()
        for _ in range(rounds):
            for key, fn in calls.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    for label, times in (("wall", wall), ("cpu ", cpu)):
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        base = med["plain"]
        cells = ", ".join(
            f"{k} {v:.1f} ({100 * v / base:.1f}% of plain)"
            if k.startswith("block@")
            else f"{k} {v:.1f} ({100 * (v / base - 1):+.1f}%)"
            for k, v in med.items()
            if k != "plain"
        )
        print(f"{name:<34s} {label} ms: plain {base:8.1f} | {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch2d", type=int, default=2)
    parser.add_argument("--batch3d", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}, median ms")
    b2, b3 = args.batch2d, args.batch3d
    bench(
        f"DenseNet121 2D 224^2 (B={b2})",
        lambda p, pos: CAMDenseNet121(2, 3, 2, plugin=p, positions=pos),
        torch.rand(b2, 3, 224, 224),
        args.rounds,
    )
    bench(
        f"DenseNet121 3D 96^3 low_stride (B={b3})",
        lambda p, pos: CAMDenseNet121(3, 1, 2, plugin=p, positions=pos, low_stride=True),
        torch.rand(b3, 1, 96, 96, 96),
        args.rounds,
    )
    bench(
        f"VGG16-GAP 224^2 (B={b2})",
        lambda p, pos: CAMVGG16(3, 2, plugin=p, positions=pos),
        torch.rand(b2, 3, 224, 224),
        args.rounds,
    )


if __name__ == "__main__":
    main()
