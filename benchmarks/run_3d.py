"""3D localization through the bundle, with its bounds: CAM, the blocks and LayerCAM against a data-free prior
(floor), a fully supervised MONAI UNet trained on the masks (ceiling) and 2D networks run slice by slice, on
the 3D embedded default.

Every run is a run of the bundle (``monai_wsol.benchmark.runner.Benchmark`` with ``spatial_dims=3``: the
generator's ``mode="3d"`` volumes with 3D lesions, the bundle's network in 3D, its ``evaluate`` with 3D IoU
boxes, Dice and PxAP); the thresholds of ``BoxAccV2@val_tau`` and ``Dice@val_tau`` are chosen on validation.
Resumable: finished runs are read back from ``<out>/runs/3d/<method>/seed<k>/result.json``, interrupted ones
resume from their last epoch. Run::

    # the whole comparison as one background job over two one-thread workers (docs/benchmark.md, 3D)
    nohup python benchmarks/run_3d.py --out runs/bench3d --workers 2 \
        --shapes cam sfs2 --figure cam sfs2 layercam cam2d_slices > runs/bench3d.log 2>&1 &
    python benchmarks/run_3d.py --out runs/bench3d_6ep --workers 2 --epochs 6   # the one-hour budget
    python benchmarks/run_3d.py --out runs/bench3d --methods cam sfs2 --seeds 0 1 2   # some runs, in turn
    python benchmarks/run_3d.py --out runs/bench3d --methods cam2d_volume_labels     # the other 2D network

The data are ``monai_wsol.data.synthetic.EMBEDDED_3D`` and the training ``configs/train_3d.json``'s (over
``bundle/configs/train.json``), each value changeable here (``--n-train``, ``--epochs``, ...).

``cam2d_slices`` is the same CNN in 2D, trained on the axial slices of the training volumes (each slice
labelled by whether the mask reaches it: slice-level labels, more supervision than the 3D networks' one
label per volume) and evaluated on the same validation and test volumes slice by slice, as the bundle runs a
2D model on a volume (one CAM volume, normalised as a whole; the volume's class from its most probable
slice). ``cam2d_volume_labels`` is the same with every slice labelled by its volume (the supervision the 3D
networks have: a lesion volume's slices that miss the lesion are labelled "lesion" too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from monai_wsol.benchmark.figures import plot_orthogonal_slices
from monai_wsol.benchmark.jobs import Job, run_jobs
from monai_wsol.benchmark.report import collect_results, write_results
from monai_wsol.benchmark.runner import POSTHOC, Benchmark, setup_logging
from monai_wsol.benchmark.shapes import lesion_examples, map_shape_table, validation_dice_tau
from monai_wsol.data.synthetic import EMBEDDED_3D
from monai_wsol.methods import BOUNDS

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("monai_wsol.benchmark.run_3d")  # under setup_logging's handlers

COLUMNS = (
    "accuracy",
    "AUC",
    "MaxBoxAccV2",
    "BoxAccV2@val_tau",
    "Dice",
    "PxAP",
    "LesionSens@val_tau",  # lesions found (IoU >= 0.3) by the mask at the validation Dice threshold, %
    "FalseComp@val_tau",  # false mask components per lesion volume at that threshold
    "train_seconds",
)

#: the 2D network trained on the volumes' axial slices (slice labels / volume labels), evaluated on the
#: volumes slice by slice
SLICE_MODEL, SLICE_MODEL_VOLUME_LABELS = "cam2d_slices", "cam2d_volume_labels"
#: table order: the bounds, then the plain CAM networks, then the blocks
ORDER = ("prior", "supervised", "cam", SLICE_MODEL, SLICE_MODEL_VOLUME_LABELS, "sfs1", "sfs2")
#: the whole 3D comparison: the bounds, CAM, one and two blocks, LayerCAM on the CAM networks (post hoc) and
#: the 2D network run slice by slice
DEFAULT_METHODS = ("prior", "supervised", "cam", "sfs1", "sfs2", "layercam", SLICE_MODEL)
#: the references beside the compared 3D networks, run on ``--reference-seeds``
REFERENCES = (*BOUNDS, SLICE_MODEL, SLICE_MODEL_VOLUME_LABELS)
#: a run's time relative to the 3D CAM network's (training and evaluation; the 6-epoch job of 2026-12-06, one
#: thread, two workers; the slice networks' at 6 of its 8 epochs, with the slices they write): the longest
#: start first, so that none starts last and leaves a worker idle
RELATIVE_COST = {
    "prior": 0.14,
    "layercam": 0.13,
    SLICE_MODEL: 1.45,
    SLICE_MODEL_VOLUME_LABELS: 1.45,
    "sfs1": 1.08,
    "sfs2": 1.15,
    "supervised": 1.2,
}


def _setting(bench: Benchmark) -> str:
    (name,) = bench.settings  # one setting per invocation
    return name


def orthogonal_figure(bench: Benchmark, methods: list[str], lesions: int, out_path: Path) -> Path:
    """The first ``lesions`` test lesion volumes under each method's seed-0 run, rows grouped by lesion,
    each at the run's validation Dice threshold."""
    setting = _setting(bench)
    examples = {
        m: (lesion_examples(bench, setting, m, 0, lesions), validation_dice_tau(bench, setting, m, 0))
        for m in methods
    }
    rows = []
    for k in range(lesions):
        for method, (ex, tau) in examples.items():
            rows.append(
                {
                    "image": ex["images"][k],
                    "cam": ex["cams"][k],
                    "gt_mask": ex["gt_masks"][k],
                    "tau": tau,
                    "name": f"{k + 1}: {method} ({tau:.2f})",
                }
            )
    return plot_orthogonal_slices(rows, out_path)


def _train_3d_recipe() -> dict[str, Any]:
    """The bundle's 3D training recipe: ``bundle/configs/train.json`` under ``configs/train_3d.json`` (the
    keys the benchmark passes on), so that the benchmark measures what ``train_3d.json`` trains."""
    merged: dict[str, Any] = {}
    for path in (REPO / "bundle" / "configs" / "train.json", REPO / "configs" / "train_3d.json"):
        merged.update(json.loads(path.read_text()))
    keys = ("epochs", "batch_size", "lr", "weight_decay", "network_kwargs", "augmentation")
    return {key: merged[key] for key in keys}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    recipe = _train_3d_recipe()
    data = EMBEDDED_3D
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench3d")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--reference-seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds of the references beside the compared 3D networks: the floor, the ceiling and the 2D "
        "slice networks (default: the first of --seeds; the prior does not depend on the seed, the ceiling "
        "costs a CAM network)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at a time, each a process of --threads threads (>= 2: one background job over worker "
        "processes, logs in <out>/logs; 1: the runs one after the other in this process)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of each worker process (default 1), or of this process (default torch's)",
    )
    # the data: EMBEDDED_3D (monai_wsol.data.synthetic) unless changed here
    parser.add_argument("--n-train", type=int, default=data["n_train"])
    parser.add_argument("--n-val", type=int, default=data["n_val"])
    parser.add_argument("--n-test", type=int, default=data["n_test"])
    parser.add_argument("--size", type=int, default=data["image_size"], help="volume side (voxels)")
    parser.add_argument("--source", default=data["source"], choices=["mni152", "colin27", "ct"])
    parser.add_argument(
        "--lesion-radius",
        type=float,
        nargs=2,
        default=data["lesion_radius"],
        help="generator's lesion_radius (fraction of the crop's mean side)",
    )
    parser.add_argument(
        "--slab-weights",
        type=float,
        nargs=3,
        default=data["slab_weights"],
        help="generator's slab_weights: train/val/test shares of the axial range",
    )
    parser.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=data["interleave_3d"],
        help="generator's interleave_3d: train / val / train / test / train slabs",
    )
    parser.add_argument(
        "--distractor",
        action="store_true",
        help="the co-occurring distractor setting (generator's distractor=True; setting '3d_distractor')",
    )
    # the training: bundle/configs/train.json under configs/train_3d.json unless changed here
    parser.add_argument("--epochs", type=int, default=recipe["epochs"])
    parser.add_argument("--batch-size", type=int, default=recipe["batch_size"])
    parser.add_argument("--lr", type=float, default=recipe["lr"])
    # 19 slices per volume: a pass over the slices is 19 x the samples of a pass over the volumes, of
    # 1/19 the voxels each; larger batches keep the step count of an epoch near the 3D networks'
    # 6: the slice network's validation Dice and AUC stop rising there (seed 0 of the 6-epoch job of
    # 2026-12-06, 8 epochs: Dice 0.504 at epoch 6, 0.505 and 0.503 after; AUC 0.899 -> 0.904)
    parser.add_argument("--slice-epochs", type=int, default=6, help="epochs of the 2D slice networks")
    parser.add_argument(
        "--slice-batch-size", type=int, default=64, help="batch size of the 2D slice networks"
    )
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate finished runs' models again (no training) and rewrite their result.json",
    )
    parser.add_argument(
        "--figure",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="draw the first test lesion volumes under these finished methods' seed-0 runs, a row each per "
        "lesion (orthogonal slices, the mask at the run's validation Dice threshold): <out>/orthogonal.png",
    )
    parser.add_argument("--figure-lesions", type=int, default=3, help="lesion volumes in the figure")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="map shape figures of these finished methods (the first is the reference) over --seeds: "
        "<out>/map_shapes.md",
    )
    parser.add_argument(
        "--results", default=None, help="per-run table to write (default: <out>/results_<setting>.md)"
    )
    parser.add_argument(
        "--summary",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the tables of every finished run of --out (a worker of --workers does not)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        parser.error(f"--workers {args.workers} and --threads {args.threads} must be >= 1")
    args.network_kwargs = recipe["network_kwargs"]
    args.weight_decay = recipe["weight_decay"]
    args.augmentation = recipe["augmentation"]
    return args


def build_benchmark(args: argparse.Namespace) -> Benchmark:
    data = {
        "n_train": args.n_train,
        "n_val": args.n_val,
        "n_test": args.n_test,
        "source": args.source,
        "lesion_radius": tuple(args.lesion_radius),
        "slab_weights": tuple(args.slab_weights),
        "interleave_3d": bool(args.interleave),
        "distractor": bool(args.distractor),
    }
    # the distractor setting has its own data and runs beside the plain one in the same folder
    setting = "3d_distractor" if args.distractor else "3d"
    return Benchmark(
        bench_dir=Path(args.out),
        settings={setting: data},
        # a post-hoc map's network named too (a worker runs the map alone, on the network's finished run)
        methods=list(dict.fromkeys([*args.methods, *(POSTHOC[m] for m in args.methods if m in POSTHOC)])),
        seeds=args.seeds,
        data_root=Path(args.out) / "data",
        image_size=args.size,
        backbone="cnn",
        net_kwargs=args.network_kwargs,
        train={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "flip": True,
            "augmentation": args.augmentation,
        },
        num_examples=0,
        report=False,
        spatial_dims=3,
        variants={
            name: {
                "method": "cam",
                "slice_axis": 2,
                "slice_labels": labels,
                "train": {"epochs": args.slice_epochs, "batch_size": args.slice_batch_size},
            }
            for name, labels in ((SLICE_MODEL, "slice"), (SLICE_MODEL_VOLUME_LABELS, "volume"))
        },
    )


def run_list(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The (method, seed) runs asked for: the compared networks over ``--seeds``, the references (bounds
    and 2D slice networks) over ``--reference-seeds``."""
    reference_seeds = args.reference_seeds if args.reference_seeds is not None else args.seeds[:1]
    return [(m, s) for m in args.methods for s in (reference_seeds if m in REFERENCES else args.seeds)]


def worker_argv(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    """The command of one run as a worker process: this script with the same data and training, no tables."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out)]
    argv += ["--methods", method, "--seeds", str(seed), "--reference-seeds", str(seed)]
    argv += ["--n-train", str(args.n_train), "--n-val", str(args.n_val), "--n-test", str(args.n_test)]
    argv += ["--size", str(args.size), "--source", args.source]
    argv += ["--lesion-radius", *map(str, args.lesion_radius), "--slab-weights", *map(str, args.slab_weights)]
    argv += ["--interleave" if args.interleave else "--no-interleave"]
    argv += ["--distractor"] if args.distractor else []
    argv += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    argv += ["--slice-epochs", str(args.slice_epochs), "--slice-batch-size", str(args.slice_batch_size)]
    argv += ["--reevaluate"] if args.reevaluate else []
    return argv + ["--no-summary"]


def job_list(bench: Benchmark, args: argparse.Namespace) -> list[Job]:
    """A worker job per unfinished run of ``run_list``: a post-hoc map after its network's run, a slice
    network's later seeds after its first run (which writes the slices, while the other workers train)."""
    setting = _setting(bench)
    todo = [
        (method, seed)
        for method, seed in run_list(args)
        if args.reevaluate or not (bench.run_dir(setting, method, seed) / "result.json").exists()
    ]
    names = [f"{setting}/{method}/seed{seed}" for method, seed in todo]
    jobs = []
    for name, (method, seed) in zip(names, todo, strict=True):
        source = POSTHOC.get(bench.base_method(method))
        # a post-hoc map waits for its network's run, unless that run finished before this job
        after = [f"{setting}/{source}/seed{seed}"] if source else []
        if bench.slice_axis(method) is not None:  # the run that writes the slices first
            after.append(next(n for n, (m, _) in zip(names, todo, strict=True) if m == method))
        after = tuple(a for a in after if a in names and a != name)
        cost = RELATIVE_COST.get(method, 1.0)
        jobs.append(Job(name, worker_argv(args, method, seed), after=after, cost=cost))
    return jobs


def run_in_workers(bench: Benchmark, args: argparse.Namespace) -> dict[str, int | None]:
    """Every job of :func:`job_list`, ``args.workers`` at a time; the volumes written first, here, so that no
    two workers write them."""
    bench.datalist(_setting(bench))
    jobs = job_list(bench, args)
    threads = args.threads or 1
    logger.info("%d runs to do (%d workers x %d threads)", len(jobs), args.workers, threads)
    return run_jobs(jobs, args.workers, Path(args.out) / "logs", threads=threads)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    bench = build_benchmark(args)
    setting = _setting(bench)
    t0 = time.perf_counter()
    if args.summary:  # the job's own process (not a worker): its progress in <out>/benchmark.log
        setup_logging(out)
    if args.workers > 1:
        status = run_in_workers(bench, args)
        failed = sorted(name for name, code in status.items() if code != 0)
        if failed:
            logger.error("runs not finished: %s (logs in %s)", ", ".join(failed), out / "logs")
    else:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        for method, seed in run_list(args):
            bench.run_one(setting, method, seed, {}, reevaluate=args.reevaluate)
    logger.info("runs done in %.1f min", (time.perf_counter() - t0) / 60)
    if not args.summary:
        return
    summarize(bench, args)


def summarize(bench: Benchmark, args: argparse.Namespace) -> None:
    """The figure, the map shapes and the tables of every finished run of ``args.out``."""
    out = Path(args.out)
    setting = _setting(bench)
    if args.figure:
        path = orthogonal_figure(bench, args.figure, args.figure_lesions, out / "orthogonal.png")
        print(f"figure: {path}")
    if args.shapes:
        text = map_shape_table(bench, setting, args.shapes, args.seeds)
        (out / "map_shapes.md").write_text(text)
        print(text)
    # every finished run of the folder, also those of earlier invocations (other methods or seeds)
    every_setting = collect_results(out)
    records = [r for r in every_setting if r["setting"] == setting]
    records.sort(key=lambda r: (ORDER.index(r["method"]) if r["method"] in ORDER else len(ORDER), r["seed"]))
    ceiling = {r["seed"]: r["test"]["MaxBoxAccV2"] for r in records if r["method"] == "supervised"}
    lines = [
        "| method | seed | " + " | ".join(COLUMNS) + " | MaxBoxAccV2 % of ceiling |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    rows = []
    for r in records:
        row = {"method": r["method"], "seed": r["seed"], **{k: r["test"].get(k) for k in COLUMNS[:-1]}}
        row["train_seconds"] = r.get("train_seconds")
        rows.append(row)
        # "-" where a run predates a column (its result.json lacks it)
        cells = [
            "-" if row[k] is None else f"{row[k]:.3f}" if k in ("AUC", "Dice") else f"{row[k]:.1f}"
            for k in COLUMNS
        ]
        share = ceiling.get(r["seed"])
        share_cell = f"{100 * row['MaxBoxAccV2'] / share:.0f} %" if share else "-"
        lines.append(f"| {r['method']} | {r['seed']} | " + " | ".join(cells) + f" | {share_cell} |")
    table = "\n".join(lines)
    print(table)
    target = Path(args.results) if args.results else out / f"results_{setting}.md"
    target.write_text(table + "\n")
    (out / f"results_{setting}.json").write_text(json.dumps(rows, indent=2) + "\n")
    # mean +- std over seeds, the bounds, and the paired tests of the block and of the 3D CAM against every
    # other method, per setting (results.md / results.csv); FalseComp (lower is better) stays in the per-run
    # table
    methods = {r["method"] for r in every_setting}
    references = [m for m in ("sfs2", "sfs1", "cam") if m in methods]
    if references:
        metrics = [m for m in COLUMNS[:-1] if m != "FalseComp@val_tau"]
        _, md = write_results(out, every_setting, reference=references, metrics=metrics, order=ORDER)
        print(f"summary and paired tests: {md}")


if __name__ == "__main__":
    main()
