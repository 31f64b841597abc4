"""Memory and time of 3D CAM inference: whole volumes against MONAI sliding windows (CPU; GPU with AMP).

The bundle's network in 3D (``configs/train_3d.json``: the plain CNN, channels 16/32/64, trained on
48 x 48 x 19 crops; fully convolutional, so any input size), without (``cam``) and with the two
dual-suppression blocks (``sfs2``, the same backbone), on volumes of 48^3 (one window), 128^3 and 192^3.
For each volume size, network and way of running it:

- ``forward``: the plain forward pass on the whole volume (logits only), the reference of the ratios;
- ``cam whole``: the CAM of the whole volume in one pass (``ForwardCAM``: logits and the map upsampled to the
  volume, normalised);
- ``cam windows``: the CAM through ``SlidingWindowExtractor`` (48^3 windows, overlap 0.25, Gaussian
  weighting: what the bundle runs with ``--sw_roi_size "[48, 48, 48]"``).

Each measurement runs in a fresh process (one network, one volume): the peak memory added by the calls (on
the CPU the resident set, ``ru_maxrss`` after the calls minus before the first; on a GPU
``torch.cuda.max_memory_allocated``) and the median wall time over ``--repeats`` calls after one warm-up call
(on a GPU, synchronised). The ratio is the time over the ``forward`` of the same network, size and precision.
``--amp`` runs every call under ``torch.autocast`` (float16 on a GPU, bfloat16 on the CPU), as the bundle's
``amp`` key does; ``--compare-amp`` measures each cell in both precisions and adds the AMP/float32 time ratio
and the largest difference of the CAMs. Run::

    python benchmarks/bench_3d.py                 # 2 threads, 3 repeats (about 3 minutes on 2 cores)
    python benchmarks/bench_3d.py --sizes 48 128  # a subset
    python benchmarks/bench_3d.py --device cuda --compare-amp --sizes 48 128 192 256   # a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROI = 48
METHODS = ("cam", "sfs2")
MODES = ("forward", "cam whole", "cam windows")


def _network(method: str) -> torch.nn.Module:
    from monai_wsol.methods import build_method

    torch.manual_seed(0)
    return build_method(method, 3, 1, 2, backbone="cnn", net_kwargs={"channels": [16, 32, 64]}).net.eval()


def measure(
    method: str, size: int, mode: str, repeats: int, threads: int, device: str = "cpu", amp: bool = False
) -> dict:
    """One measurement in this process: ``{"seconds": median, "peak_mb": added peak memory, "output":
    the last call's output (the CAM, or the logits of ``forward``) as float32 on the CPU}``."""
    from monai_wsol.extractors import ForwardCAM, SlidingWindowExtractor

    torch.set_num_threads(threads)
    dev = torch.device(device)
    net = _network(method).to(dev)
    x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(size)).to(dev)
    if mode == "forward":

        def run() -> torch.Tensor:
            with torch.no_grad():
                return net(x)

    else:
        extractor = (
            ForwardCAM()
            if mode == "cam whole"
            else SlidingWindowExtractor("cam", roi_size=ROI, overlap=0.25, mode="gaussian", positive_class=1)
        )

        def run() -> torch.Tensor:
            return extractor(net, x, 1)[1]  # the maps

    precision = torch.float16 if dev.type == "cuda" else torch.bfloat16

    def call() -> torch.Tensor:
        with torch.autocast(dev.type, dtype=precision, enabled=amp):
            out = run()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    out = call()  # warm-up (and the first peak)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"seconds": statistics.median(times), "peak_mb": peak / 2**20, "output": out.float().cpu()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 128, 192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<k>")
    parser.add_argument("--amp", action="store_true", help="every call under torch.autocast")
    parser.add_argument(
        "--compare-amp", action="store_true", help="each cell in float32 and under AMP, with their ratio"
    )
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "SIZE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)  # a worker's output tensor
    args = parser.parse_args(argv)
    if args.worker:
        method, size, mode = args.worker
        result = measure(method, int(size), mode, args.repeats, args.threads, args.device, args.amp)
        output = result.pop("output")
        if args.save:
            torch.save(output, args.save)
        print(json.dumps(result))
        return
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    precisions = [False, True] if args.compare_amp else [args.amp]
    print(
        f"torch {torch.__version__}, {where}, {args.threads} thread(s), median of {args.repeats} calls, "
        + ("float32 and AMP" if args.compare_amp else "AMP" if args.amp else "float32")
    )
    print(f"| volume | network | {' | '.join(f'{m} s (x forward), peak MB' for m in MODES)} |")
    print("|---|---|" + "---|" * len(MODES))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for method in METHODS:
                cells, reference = [], {}
                for mode in MODES:
                    if mode == "cam windows" and size <= ROI:
                        cells.append("= cam whole (one window)")
                        continue
                    parts, outputs, seconds = [], [], []
                    for amp in precisions:
                        save = f"{tmp}/{method}_{size}_{mode.replace(' ', '_')}_{amp}.pt"
                        result = _run_worker(args, method, size, mode, amp, save)
                        outputs.append(torch.load(save, weights_only=True))
                        if mode == "forward":
                            reference[amp] = result["seconds"]
                        ratio = f" (x{result['seconds'] / reference[amp]:.1f})" if mode != "forward" else ""
                        parts.append(f"{result['seconds']:.2f}{ratio}, {result['peak_mb']:.0f}")
                        seconds.append(result["seconds"])
                    cell = " / ".join(parts)
                    if len(outputs) == 2:
                        difference = (outputs[1] - outputs[0]).abs().max().item()
                        cell += (
                            f"; AMP x{seconds[1] / seconds[0]:.2f} of fp32's time, max diff {difference:.3f}"
                        )
                    cells.append(cell)
                print(f"| {size}^3 | {method} | {' | '.join(cells)} |", flush=True)


def _run_worker(args: argparse.Namespace, method: str, size: int, mode: str, amp: bool, save: str) -> dict:
    """One cell in a fresh process (its own peak memory)."""
    command = [sys.executable, __file__, "--worker", method, str(size), mode, "--repeats", str(args.repeats)]
    command += ["--threads", str(args.threads), "--device", args.device, "--save", save]
    command += ["--amp"] if amp else []
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
