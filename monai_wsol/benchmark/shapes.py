"""Why a method's boxes and pixels disagree: the shape of its maps on the test lesions, method against method.

For finished benchmark runs, :func:`lesion_examples` reads every test lesion image's map that the run kept
(``<run>/eval/test_examples.npz``: 3D runs keep them all) or else re-evaluates the run's model on the test
split with the bundle's ``evaluate`` and keeps them (``<run>/eval_examples/test_examples.npz``);
:func:`map_shape_values` measures each map against its lesion with :func:`monai_wsol.metrics.map_shape` at
the run's validation Dice threshold; :func:`map_shape_table` compares methods on the same lesions and seeds
(Wilcoxon signed-rank test of the paired differences), and
:func:`monai_wsol.benchmark.figures.plot_map_shapes` draws the same figures as distributions. 2D and 3D
alike; offsets in mm from the test images' voxel size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np

from monai_wsol.benchmark.runner import POSTHOC, Benchmark
from monai_wsol.metrics.map_shapes import MAP_SHAPE_KEYS, map_shape

__all__ = [
    "format_map_shape_table",
    "lesion_examples",
    "map_shape_table",
    "map_shape_values",
    "validation_dice_tau",
]

_EXAMPLE_KEYS = ("images", "cams", "gt_masks")


def lesion_examples(
    bench: Benchmark, setting: str, method: str, seed: int, count: int
) -> dict[str, np.ndarray]:
    """The first ``count`` test lesion images of a finished run with their maps and GT masks (arrays
    ``(count, *spatial)``)."""
    run_dir = bench.run_dir(setting, method, seed)
    path = run_dir / "eval_examples" / "test_examples.npz"
    own = run_dir / "eval" / "test_examples.npz"  # what the run's own test evaluation kept
    for kept in (own, path):
        if kept.exists():
            with np.load(kept) as z:
                if len(z["cams"]) >= count:
                    return {k: z[k][:count] for k in _EXAMPLE_KEYS}
    base = bench.base_method(method)
    model_run = bench.run_dir(setting, POSTHOC[base], seed) if base in POSTHOC else run_dir
    model = model_run / "checkpoints" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(f"{run_dir}: no finished model at {model}.")
    overrides = bench.evaluation_overrides(setting, method, bench.bundle_overrides(setting, method, seed, {}))
    bench.bundle.evaluate(model, "test", run_dir / "eval_examples", overrides, num_examples=count)
    with np.load(path) as z:
        return {k: z[k][:count] for k in _EXAMPLE_KEYS}


def validation_dice_tau(bench: Benchmark, setting: str, method: str, seed: int) -> float:
    """The mask threshold a finished run chose on validation (its best validation Dice)."""
    result = json.loads((bench.run_dir(setting, method, seed) / "result.json").read_text())
    return float(result["val_tau"]["Dice"])


def map_shape_values(
    bench: Benchmark, setting: str, methods: Sequence[str], seeds: Sequence[int]
) -> dict[str, np.ndarray]:
    """Each method's :data:`MAP_SHAPE_KEYS` figures, one row per test lesion image of every seed (seed-major,
    the same lesion order for every method): ``{method: (len(seeds) * lesions, len(MAP_SHAPE_KEYS))}``."""
    path = bench.datalist(setting)
    datalist = json.loads(path.read_text())
    lesions = bench.test_lesion_count(setting)
    first = nib.load(path.parent / datalist["test"][0]["image"])
    spacing = [float(z) for z in first.header.get_zooms()[: len(first.shape)]]
    per_method: dict[str, np.ndarray] = {}
    for method in methods:
        rows = []
        for seed in seeds:
            ex = lesion_examples(bench, setting, method, seed, lesions)
            tau = validation_dice_tau(bench, setting, method, seed)
            for cam, mask in zip(ex["cams"], ex["gt_masks"], strict=True):
                rows.append([map_shape(cam, mask, tau, spacing)[k] for k in MAP_SHAPE_KEYS])
        per_method[method] = np.asarray(rows, dtype=np.float64).reshape(-1, len(MAP_SHAPE_KEYS))
    return per_method


def format_map_shape_table(per_method: Mapping[str, np.ndarray]) -> str:
    """Markdown: each method's mean (and median) of the :func:`map_shape_values` rows, then each method's mean
    difference from the first method's on the same lesions with its Wilcoxon signed-rank p."""
    from scipy.stats import wilcoxon

    header = "| method | " + " | ".join(MAP_SHAPE_KEYS) + " |"
    rule = "|---" * (len(MAP_SHAPE_KEYS) + 1) + "|"
    lines = [header, rule]
    for method, values in per_method.items():
        cells = [f"{np.nanmean(v):.3f} (median {np.nanmedian(v):.3f})" for v in values.T]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    reference = next(iter(per_method))
    lines += ["", f"Differences from `{reference}` on the same lesions and seeds (mean; Wilcoxon p):", ""]
    lines += [header.replace("| method |", f"| method - {reference} |"), rule]
    for method, values in per_method.items():
        if method == reference:
            continue
        cells = []
        for k in range(len(MAP_SHAPE_KEYS)):
            diff = values[:, k] - per_method[reference][:, k]
            diff = diff[np.isfinite(diff)]
            p = wilcoxon(diff).pvalue if len(diff) and np.any(diff != 0) else float("nan")
            cells.append(f"{diff.mean():+.3f} (p {p:.2g})" if len(diff) else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def map_shape_table(bench: Benchmark, setting: str, methods: Sequence[str], seeds: Sequence[int]) -> str:
    """Markdown: :func:`format_map_shape_table` of :func:`map_shape_values` (``methods[0]`` the reference)."""
    return format_map_shape_table(map_shape_values(bench, setting, methods, seeds))
