"""The shape of the maps of finished benchmark runs on their test lesions: on the lesion, shifted, peaked or
fragmented, method against method (:mod:`monai_wsol.benchmark.shapes`). Prints a markdown table. Run::

    python benchmarks/map_shapes.py --config configs/benchmark.json configs/ablation.json \\
        --setting default --methods cam sfs2 --seeds 0

The configs are the benchmark's own (merged in order, as ``--config_file`` merges them), so the runs are found
and re-evaluated exactly as they were made; each run's maps are kept in ``<run>/eval_examples``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai.bundle import ConfigParser

from monai_wsol.benchmark.report import emit_table
from monai_wsol.benchmark.shapes import map_shape_table


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="the benchmark's config files, in order")
    parser.add_argument("--setting", default="default")
    parser.add_argument(
        "--methods", nargs="+", required=True, help="finished methods; the first is the reference"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    config = ConfigParser()
    config.read_config([str(Path(p)) for p in args.config])
    bench = config.get_parsed_content("benchmark")
    return emit_table(map_shape_table(bench, args.setting, args.methods, args.seeds), args.out)


if __name__ == "__main__":
    main()
