"""The shape of the maps of finished benchmark runs on their test lesions: on the lesion, shifted, peaked or
fragmented, method against method (:mod:`monai_wsol.benchmark.shapes`). Prints a markdown table and, with
``--figure``, draws the same figures as distributions (:func:`monai_wsol.benchmark.figures.plot_map_shapes`).
Run::

    python benchmarks/map_shapes.py --config configs/benchmark.json configs/ablation.json \\
        --setting default --methods cam sfs2 --seeds 0 --figure map_shapes.png

The configs are the benchmark's own (merged in order, as ``--config_file`` merges them), so the runs are found
and re-evaluated exactly as they were made; each run's maps are kept in ``<run>/eval_examples``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai.bundle import ConfigParser

from monai_wsol.benchmark.figures import plot_map_shapes
from monai_wsol.benchmark.report import emit_table
from monai_wsol.benchmark.shapes import format_map_shape_table, map_shape_values


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="the benchmark's config files, in order")
    parser.add_argument("--setting", default="default")
    parser.add_argument(
        "--methods", nargs="+", required=True, help="finished methods; the first is the reference"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--figure", default=None, help="also draw the distributions to this image file")
    parser.add_argument(
        "--bench_dir", default=None, help="the benchmark folder (default: the config's bench_dir)"
    )
    parser.add_argument("--data_root", default=None, help="the data folder (default: the config's data_root)")
    args = parser.parse_args(argv)
    config = ConfigParser()
    config.read_config([str(Path(p)) for p in args.config])
    for key in ("bench_dir", "data_root"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    bench = config.get_parsed_content("benchmark")
    values = map_shape_values(bench, args.setting, args.methods, args.seeds)
    if args.figure:
        seeds = ", ".join(map(str, args.seeds))
        title = f"{args.setting}: maps on the test lesions at each run's validation Dice tau (seeds {seeds})"
        plot_map_shapes(values, args.figure, title=title)
    return emit_table(format_map_shape_table(values), args.out)


if __name__ == "__main__":
    main()
