"""3D localization through the bundle, with its bounds: the CAM classifier against a data-free prior (floor)
and a fully supervised MONAI UNet trained on the masks (ceiling), on 3D crops of the embedded default.

Every run is a run of the bundle (``monai_wsol.benchmark.runner.Benchmark`` with ``spatial_dims=3``: the
generator's ``mode="3d"`` volumes with 3D lesions, the bundle's network in 3D, its ``evaluate`` with 3D IoU
boxes, Dice and PxAP); the thresholds of ``BoxAccV2@val_tau`` and ``Dice@val_tau`` are chosen on validation.
Resumable: finished runs are read back from ``<out>/runs/3d/<method>/seed<k>/result.json``, interrupted ones
resume from their last epoch. Run::

    python benchmarks/run_3d.py --out runs/bench3d                      # prior, supervised, cam; seed 0
    python benchmarks/run_3d.py --out runs/old --n-train 240 --size 64 --lesion-radius 0.04 0.12 \
        --slab-weights 2 1 1 --no-interleave --epochs 40                 # the first recipe (did not learn)
    python benchmarks/run_3d.py --out runs/bench3d --methods cam sfs2 --seeds 0 1 2
    python benchmarks/run_3d.py --out runs/bench3d --methods cam2d_slices   # the 2D model, slice by slice
    python benchmarks/run_3d.py --out runs/bench3d --methods cam2d_volume_labels

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
from pathlib import Path

from monai_wsol.benchmark.figures import plot_orthogonal_slices
from monai_wsol.benchmark.report import collect_results, write_results
from monai_wsol.benchmark.runner import Benchmark
from monai_wsol.benchmark.shapes import lesion_examples, map_shape_table, validation_dice_tau

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench3d")
    parser.add_argument("--methods", nargs="+", default=["prior", "supervised", "cam"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    # 1200 training crops: with 240 (and a slab as thick as the split's share) the classifier fitted its
    # training crops without learning the class; crops of one slab may overlap, so more of them cost no slab
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--n-val", type=int, default=120)
    parser.add_argument("--n-test", type=int, default=120)
    parser.add_argument("--size", type=int, default=48, help="volume side (voxels)")
    # Colin27 (1 mm) rather than MNI152 (2 mm): the splits are slabs of the volume that share no
    # neighbourhood, so a crop's depth is a share of the usable slices (about 103 at 1 mm: 19 for five
    # interleaved slabs of shares 1/1/1 (training) and 1 / 1 (validation / test)), and MNI152's 2 mm slabs
    # would be about half as thick
    parser.add_argument("--source", default="colin27", choices=["mni152", "colin27", "ct"])
    # lesions of 20-35 % of the crop's mean side (8-13 mm at 48 x 48 x 19 mm): the generator's default
    # (4-12 %, about 5 mm on these crops) is the scale of sulci and gyri of a 1 mm single-subject scan
    parser.add_argument(
        "--lesion-radius",
        type=float,
        nargs=2,
        default=(0.2, 0.35),
        help="generator's lesion_radius (fraction of the crop's mean side)",
    )
    parser.add_argument(
        "--slab-weights",
        type=float,
        nargs=3,
        default=(3.0, 1.0, 1.0),
        help="generator's slab_weights: train/val/test shares of the axial range",
    )
    # validation and test slabs between training slabs: with val / train / test the inferior validation
    # slab (cerebellum, orbits) showed anatomy no training crop showed, and its AUC fell as training went on
    parser.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generator's interleave_3d: train / val / train / test / train slabs",
    )
    parser.add_argument(
        "--distractor",
        action="store_true",
        help="the co-occurring distractor setting (generator's distractor=True; setting '3d_distractor')",
    )
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--batch-size", type=int, default=8)
    # 19 slices per volume: a pass over the slices is 19 x the samples of a pass over the volumes, of
    # 1/19 the voxels each; larger batches keep the step count of an epoch near the 3D networks'
    parser.add_argument("--slice-epochs", type=int, default=8, help="epochs of the 2D slice networks")
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
    args = parser.parse_args(argv)
    out = Path(args.out)
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
    bench = Benchmark(
        bench_dir=out,
        settings={setting: data},
        methods=args.methods,
        seeds=args.seeds,
        data_root=out / "data",
        image_size=args.size,
        backbone="cnn",
        net_kwargs={"channels": [16, 32, 64]},
        train={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "flip": True,
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
    for method in args.methods:
        for seed in args.seeds:
            bench.run_one(setting, method, seed, {}, reevaluate=args.reevaluate)
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
