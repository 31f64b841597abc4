"""How good the pseudo-masks of a benchmark's self-training runs were: each run's training pseudo-masks
against the training ground truth (which the segmenter never saw), beside the test Dice of the source model
and of the segmenter, each at its own validation-chosen threshold; then self-training behind a validation
gate (``monai_wsol.benchmark.report.gated_self_training``: per seed, the segmenter where its validation Dice
beats its source's, else the source), with paired tests against both. Prints markdown tables. Run::

    python benchmarks/pseudo_masks.py --bench_dir runs/benchmark --setting default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_wsol.benchmark.report import collect_results, emit_table, gated_self_training, paired_tests
from monai_wsol.engines.pseudo_masks import pseudo_mask_agreement

#: the test figures of the gate's tables (the thresholds of the ``@val_tau`` ones chosen on validation)
GATE_METRICS = ("MaxBoxAccV2", "BoxAccV2@val_tau", "Dice@val_tau", "PxAP")


def gate_tables(bench_dir: Path, setting: str) -> list[str]:
    """Markdown lines: the gate's choice per seed, then per self-training method the test means of source,
    segmenter and gate and the paired t-tests of the gate against the other two."""
    records = [r for r in collect_results(bench_dir) if r["setting"] == setting]
    gated = gated_self_training(records)
    if not gated:
        return []
    lines = [
        "",
        "Validation gate (per seed, the segmenter where its validation Dice beats its source's, else the",
        "source; test figures of the kept model):",
        "",
        "| gated | seed | kept | source val Dice | segmenter val Dice | " + " | ".join(GATE_METRICS) + " |",
        "|---|---:|---|---:|---:|" + "---:|" * len(GATE_METRICS),
    ]
    for rec in gated:
        gate = rec["hyperparameters"]["gate"]
        cells = " | ".join(
            f"{rec['test'][m]:.3f}" if "Dice" in m else f"{rec['test'][m]:.1f}" for m in GATE_METRICS
        )
        lines.append(
            f"| {rec['method']} | {rec['seed']} | {gate['chosen']} | {gate['source']:.3f} "
            f"| {gate['segmenter']:.3f} | {cells} |"
        )
    lines += ["", "Paired t-tests over seeds (gate minus the other; p of `scipy.stats.ttest_rel`):", ""]
    lines += [
        "| gated - method | metric | pairs | gate mean | method mean | mean diff | p |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["method"] for r in gated):
        segmenter = name.removesuffix("_gated")
        segmenter_run = next(r for r in records if r["method"] == segmenter)
        source = segmenter_run["hyperparameters"]["pseudo_masks"]["from"]
        tests = paired_tests(
            [*records, *gated], reference=name, metrics=GATE_METRICS, others=[source, segmenter]
        )
        for t in tests:
            same = t["std_diff"] == 0 and t["mean_diff"] == 0  # the gate kept this method in every seed
            p = "- (the same runs)" if same else f"{t['p_value']:.2g}"
            lines.append(
                f"| {name} - {t['method']} | {t['metric']} | {t['n']} | {t['mean_reference']:.3f} "
                f"| {t['mean_other']:.3f} | {t['mean_diff']:+.3f} | {p} |"
            )
    return lines


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
    lines += gate_tables(Path(args.bench_dir), args.setting)
    return emit_table("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
