"""Which test images a benchmark's classifiers get wrong at their validation-chosen decision threshold, and
what the missed lesions look like: each lesion's area and contrast-to-noise ratio (CNR: the mean inside
its mask minus the mean of a two-pixel ring around it, over the ring's standard deviation), grouped by how
many seeds missed it. Lesions missed by every seed bound the accuracy any of these networks reaches.
Prints markdown tables. Run::

    python benchmarks/missed_lesions.py --bench_dir runs/benchmark --setting default --method cam \\
        --out benchmarks/results/missed_lesions.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from monai_wsol.benchmark.report import collect_results, emit_table
from monai_wsol.engines.evaluation import load_curves


def lesion_visibility(image: np.ndarray, mask: np.ndarray, ring: int = 2) -> tuple[int, float]:
    """(area in pixels, CNR) of one lesion: ``|mean(image[mask]) - mean(image[ring])| / std(image[ring])``,
    the ring being the ``ring``-pixel band around the mask."""
    mask = np.asarray(mask) > 0
    band = ndimage.binary_dilation(mask, iterations=ring) & ~mask
    if not mask.any() or band.sum() < 2:
        raise ValueError(f"lesion_visibility: a mask of {int(mask.sum())} pixels has no ring to compare with")
    image = np.asarray(image, dtype=np.float64)
    noise = float(image[band].std())
    return int(mask.sum()), abs(float(image[mask].mean() - image[band].mean())) / max(noise, 1e-12)


def missed_lesion_tables(
    bench_dir: Path, setting: str, method: str, datalist: Path, seeds: Sequence[int] | None = None
) -> str:
    """Markdown: per seed the decision threshold (validation) and the test errors at it; then the test
    lesions grouped by how many seeds missed them, with their area and CNR."""
    records = sorted(
        (
            r
            for r in collect_results(bench_dir)
            if r["setting"] == setting and r["method"] == method and (seeds is None or r["seed"] in seeds)
        ),
        key=lambda r: r["seed"],
    )
    if not records:
        raise ValueError(f"{bench_dir}: no finished {method!r} run in setting {setting!r}")
    items = json.loads(Path(datalist).read_text())["test"]
    labels = np.array([int(i["label"]) != 0 for i in items])
    lines = [
        f"Setting `{setting}`, method `{method}`: test images at the decision threshold chosen on validation",
        "",
        "| seed | threshold (val) | accuracy | missed lesions | false alarms |",
        "|---:|---:|---:|---:|---:|",
    ]
    missed = np.zeros(len(items), dtype=int)
    for rec in records:
        curves = load_curves(Path(rec["run_dir"]) / "eval" / "test.npz")
        if not np.array_equal(curves.is_lesion.astype(bool), labels):
            raise ValueError(
                f"{rec['run_dir']}: its test scores are not in the order of {datalist}'s test split"
            )
        threshold = float(rec["val"]["decision_threshold"])
        called = curves.lesion_scores >= threshold
        misses = labels & ~called
        missed += misses
        false_alarms = int((~labels & called).sum())
        accuracy = 100.0 * float((called == labels).mean())
        lines.append(
            f"| {rec['seed']} | {threshold:.3f} | {accuracy:.1f} | {int(misses.sum())} | {false_alarms} |"
        )
    base = Path(datalist).parent
    area, cnr = np.zeros(len(items)), np.zeros(len(items))
    for k, item in enumerate(items):
        if labels[k]:
            image = np.asarray(nib.load(base / item["image"]).dataobj)
            mask = np.asarray(nib.load(base / item["mask"]).dataobj)
            area[k], cnr[k] = lesion_visibility(image, mask)
    lines += [
        "",
        f"Test lesions by the number of the {len(records)} seeds that missed them (area in pixels, CNR; "
        "medians and ranges):",
        "",
        "| missed by | lesions | area median | area range | CNR median | CNR range |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in range(len(records) + 1):
        group = labels & (missed == n)
        if group.any():
            a, c = area[group], cnr[group]
            lines.append(
                f"| {n} | {int(group.sum())} | {np.median(a):.0f} | {a.min():.0f}-{a.max():.0f} "
                f"| {np.median(c):.2f} | {c.min():.2f}-{c.max():.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench_dir", required=True, type=Path)
    p.add_argument("--setting", default="default")
    p.add_argument("--method", default="cam")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument(
        "--datalist", type=Path, default=None, help="default: <bench_dir>/data/<setting>/datalist.json"
    )
    p.add_argument("--out", default=None, help="also write the tables to this file")
    a = p.parse_args(argv)
    datalist = a.datalist or a.bench_dir / "data" / a.setting / "datalist.json"
    return emit_table(missed_lesion_tables(a.bench_dir, a.setting, a.method, datalist, a.seeds), a.out)


if __name__ == "__main__":
    main()
