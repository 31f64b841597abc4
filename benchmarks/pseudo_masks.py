"""How good the pseudo-masks of a benchmark's self-training runs were: each run's training pseudo-masks
against the training ground truth (which the segmenter never saw), beside the test Dice of the source model
and of the segmenter, each at its own validation-chosen threshold. Prints a markdown table. Run::

    python benchmarks/pseudo_masks.py --bench_dir runs/benchmark --setting default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_wsol.benchmark.report import emit_table
from monai_wsol.engines.pseudo_masks import pseudo_mask_agreement


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench_dir", required=True)
    parser.add_argument("--setting", default="default")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    runs = Path(args.bench_dir) / "runs" / args.setting
    lines = [
        "| run | seed | source | tau | training lesions | pseudo-mask Dice | empty | area / GT area "
        "| source test Dice@val_tau | segmenter test Dice@val_tau |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result_path in sorted(runs.glob("*/seed*/result.json")):
        result = json.loads(result_path.read_text())
        record = result.get("hyperparameters", {}).get("pseudo_masks")
        if not record:
            continue
        pseudo = Path(record["datalist"])
        source = json.loads(pseudo.read_text())["pseudo_masks"]["source_datalist"]
        quality = pseudo_mask_agreement(pseudo, source)
        source_result = json.loads(
            (runs / record["from"] / result_path.parent.name / "result.json").read_text()
        )
        lines.append(
            f"| {result['method']} | {result['seed']} | {record['from']} | {record['tau']:.3f} "
            f"| {quality['lesion_images']:.0f} | {quality['dice']:.3f} | {100 * quality['empty']:.1f} % "
            f"| {quality['area_ratio']:.2f} | {source_result['test']['Dice@val_tau']:.3f} "
            f"| {result['test']['Dice@val_tau']:.3f} |"
        )
    return emit_table("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
