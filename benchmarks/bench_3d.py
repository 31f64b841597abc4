"""Memory and time of 3D CAM inference on the CPU: whole volumes against MONAI sliding windows.

The bundle's network in 3D (``configs/train_3d.json``: the plain CNN, channels 16/32/64, trained on 48^3
crops), without (``cam``) and with the two dual-suppression blocks (``sfs2``, the same backbone), on volumes
of 48^3 (its input size), 128^3 and 192^3. For each volume size, network and way of running it:

- ``forward``: the plain forward pass on the whole volume (logits only), the reference of the ratios;
- ``cam whole``: the CAM of the whole volume in one pass (``ForwardCAM``: logits and the map upsampled to the
  volume, normalised);
- ``cam windows``: the CAM through ``SlidingWindowExtractor`` (48^3 windows, overlap 0.25, Gaussian
  weighting: what the bundle runs with ``--sw_roi_size "[48, 48, 48]"``).

Each measurement runs in a fresh process (one network, one volume): the peak resident memory added by the call
(``ru_maxrss`` after the calls minus before the first) and the median wall time over ``--repeats`` calls after
one warm-up call. The ratio is the time over the ``forward`` of the same network and size. Run::

    python benchmarks/bench_3d.py                 # 2 threads, 3 repeats (about 3 minutes on 2 cores)
    python benchmarks/bench_3d.py --sizes 48 128  # a subset
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

ROI = 48
METHODS = ("cam", "sfs2")
MODES = ("forward", "cam whole", "cam windows")


def _network(method: str) -> torch.nn.Module:
    from monai_wsol.methods import build_method

    torch.manual_seed(0)
    return build_method(method, 3, 1, 2, backbone="cnn", net_kwargs={"channels": [16, 32, 64]}).net.eval()


def measure(method: str, size: int, mode: str, repeats: int, threads: int) -> dict:
    """One measurement in this process: ``{"seconds": median, "peak_mb": added peak RSS}``."""
    from monai_wsol.extractors import ForwardCAM, SlidingWindowExtractor

    torch.set_num_threads(threads)
    net = _network(method)
    x = torch.rand(1, 1, size, size, size)
    if mode == "forward":

        def call() -> None:
            with torch.no_grad():
                net(x)

    elif mode == "cam whole":
        extractor = ForwardCAM()

        def call() -> None:
            extractor(net, x, 1)

    else:
        extractor = SlidingWindowExtractor(
            "cam", roi_size=ROI, overlap=0.25, mode="gaussian", positive_class=1
        )

        def call() -> None:
            extractor(net, x, 1)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call()  # warm-up (and the first peak)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # kB on Linux
    return {"seconds": statistics.median(times), "peak_mb": peak / 1024.0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 128, 192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        method, size, mode = args.worker
        print(json.dumps(measure(method, int(size), mode, args.repeats, args.threads)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} calls, CPU")
    print(f"| volume | network | {' | '.join(f'{m} s (x forward), peak MB' for m in MODES)} |")
    print("|---|---|" + "---|" * len(MODES))
    for size in args.sizes:
        for method in METHODS:
            cells, reference = [], None
            for mode in MODES:
                if mode == "cam windows" and size <= ROI:
                    cells.append("= cam whole (one window)")
                    continue
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        method,
                        str(size),
                        mode,
                        "--repeats",
                        str(args.repeats),
                        "--threads",
                        str(args.threads),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                reference = result["seconds"] if mode == "forward" else reference
                ratio = f" (x{result['seconds'] / reference:.1f})" if reference and mode != "forward" else ""
                cells.append(f"{result['seconds']:.2f}{ratio}, {result['peak_mb']:.0f}")
            print(f"| {size}^3 | {method} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
