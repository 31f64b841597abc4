"""Benchmark reporting: results collection, mean ± std, paired tests, results.csv/.md and the figures.

A fake benchmark folder is written by the tests (2 settings, 3 methods, 3 seeds, known numbers; one missing
seed and one single-seed method) and every statistic is checked against numpy/scipy on the same numbers.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import random
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from monai_wsol.benchmark import (
    collect_results,
    paired_tests,
    plot_example_grid,
    plot_threshold_curves,
    summarize,
    write_results,
)
from monai_wsol.benchmark import figures as figures_mod
from monai_wsol.benchmark import report as report_mod
from monai_wsol.io_utils import atomic_write_json
from tests._paths import REPO

METRICS = report_mod.DEFAULT_METRICS
SETTINGS = ("default", "distractor")
METHODS = ("cam", "adl", "sfs2")
SEEDS = (0, 1, 2)
THRESHOLDS = np.linspace(0.0, 1.0, 21)
H = W = 16
N_IMAGES = 4


def _value(setting: str, method: str, seed: int, metric: str) -> float | None:
    """Known, distinct numbers per run (a NaN for one metric of one run)."""
    if (setting, method, seed, metric) == ("default", "adl", 1, "PxAP"):
        return None
    rng = np.random.default_rng(zlib.crc32(repr((setting, method, seed, metric)).encode()))
    scale = 1.0 if metric in report_mod.UNIT_INTERVAL_METRICS else 100.0
    return float(rng.uniform(0.2, 0.8) * scale)


def _runs() -> list[tuple[str, str, int]]:
    runs = [(s, m, k) for s in SETTINGS for m in METHODS for k in SEEDS]
    runs.remove(("distractor", "adl", 2))  # a missing seed: dropped from the pairs
    return runs + [("distractor", "has", 0)]  # a single-seed method: std NaN, too few pairs


def _boxes(i: int) -> np.ndarray:
    return np.array([[2 + i, 3, 8 + i, 9]], dtype=np.int64)


def _write_examples(run_dir: Path, method: str, flat_boxes: bool) -> None:
    rng = np.random.default_rng(7)
    images = rng.random((N_IMAGES, H, W), dtype=np.float32)
    gt_masks = np.zeros((N_IMAGES, H, W), dtype=bool)
    for i in range(N_IMAGES):  # the mask fills its box [x0, y0, x1, y1] (pixel-inclusive)
        x0, y0, x1, y1 = _boxes(i)[0]
        gt_masks[i, y0 : y1 + 1, x0 : x1 + 1] = True
    cams = np.clip(gt_masks + rng.normal(0, 0.2, gt_masks.shape), 0, 1).astype(np.float32)
    gt = np.empty(N_IMAGES, dtype=object)
    pred = np.empty(N_IMAGES, dtype=object)
    for i in range(N_IMAGES):
        gt[i], pred[i] = _boxes(i), _boxes(i) + 1
    if flat_boxes:  # the pickle-free layout [image_index, x0, y0, x1, y1]
        pred = np.concatenate([np.concatenate([[[i]], _boxes(i) + 1], axis=1) for i in range(N_IMAGES)])
    ids = np.array([f"img{i}" for i in range(N_IMAGES)])
    np.savez(run_dir / "examples.npz", images=images, cams=cams, gt_masks=gt_masks,
             gt_boxes=gt, pred_boxes=pred, tau=np.float64(0.5), image_ids=ids)  # fmt: skip


def _curves(method: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{method}{seed}".encode()))
    return rng.uniform(0, 100, (3, THRESHOLDS.size))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    runs = _runs()
    random.Random(0).shuffle(runs)  # file creation order must not matter
    for setting, method, seed in runs:
        run_dir = root / "runs" / setting / method / f"seed{seed}"
        run_dir.mkdir(parents=True)
        result = {
            "setting": setting,
            "method": method,
            "seed": seed,
            "hyperparameters": {"lr": 0.01 if method != "sfs2" else 0.001 * (seed + 1)},
            "val": {"tau": 0.3 + 0.1 * seed},
            "test": {m: _value(setting, method, seed, m) for m in METRICS},
            "train_seconds": 10.0 + seed,
        }
        atomic_write_json(run_dir / "result.json", result)
        np.savez(run_dir / "curves.npz", thresholds=THRESHOLDS, boxacc=_curves(method, seed))
        if setting == "default" and seed == 0:
            _write_examples(run_dir, method, flat_boxes=method == "adl")
    return root


def _expected(setting: str, method: str, metric: str) -> np.ndarray:
    vals = [_value(s, m, k, metric) for s, m, k in _runs() if (s, m) == (setting, method)]
    return np.asarray([v for v in vals if v is not None], dtype=np.float64)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------------------------- report


def test_collect_results(bench):
    recs = collect_results(bench)
    assert len(recs) == len(_runs())
    keys = [(r["setting"], r["method"], r["seed"]) for r in recs]
    # default first, then methods in DEFAULT_METHOD_ORDER (cam, adl, has, sfs2), then seeds
    assert keys[:9] == [("default", m, k) for m in METHODS for k in SEEDS]
    assert [k[1] for k in keys[9:]] == ["cam"] * 3 + ["adl"] * 2 + ["has"] + ["sfs2"] * 3
    nan_run = next(r for r in recs if (r["setting"], r["method"], r["seed"]) == ("default", "adl", 1))
    assert math.isnan(nan_run["test"]["PxAP"])
    assert Path(nan_run["run_dir"]) == bench / "runs" / "default" / "adl" / "seed1"


def test_summarize_matches_numpy(bench):
    rows = summarize(collect_results(bench))
    assert len(rows) == (3 + 4) * len(METRICS)  # default: cam, adl, sfs2; distractor: + has
    for row in rows:
        vals = _expected(row["setting"], row["method"], row["metric"])
        assert row["n"] == vals.size
        assert row["mean"] == vals.mean()
        if vals.size > 1:
            assert row["std"] == vals.std(ddof=1)
        else:
            assert math.isnan(row["std"])
    pxap = next(r for r in rows if (r["setting"], r["method"], r["metric"]) == ("default", "adl", "PxAP"))
    assert pxap["n"] == 2  # the null value is left out, not counted as 0


def test_paired_tests_match_scipy_and_pair_by_seed(bench):
    recs = collect_results(bench)
    random.Random(3).shuffle(recs)
    rows = paired_tests(recs, reference="sfs2", metrics=("MaxBoxAccV2", "PxAP", "Dice"))
    assert {(r["setting"], r["method"]) for r in rows} == {
        ("default", "cam"), ("default", "adl"),
        ("distractor", "cam"), ("distractor", "adl"), ("distractor", "has"),
    }  # fmt: skip
    for row in rows:
        ref = {k: _value(row["setting"], "sfs2", k, row["metric"]) for k in SEEDS}
        oth = {k: _value(row["setting"], row["method"], k, row["metric"]) for s, m, k in _runs()
               if (s, m) == (row["setting"], row["method"])}  # fmt: skip
        seeds = sorted(k for k in oth if oth[k] is not None)
        assert row["seeds"] == seeds and row["n"] == len(seeds)
        a, b = np.array([ref[k] for k in seeds]), np.array([oth[k] for k in seeds])
        assert row["mean_diff"] == pytest.approx((a - b).mean(), abs=1e-12)
        if len(seeds) < 2:
            assert row["verdict"] == "too few pairs" and math.isnan(row["p_value"])
            continue
        expected = stats.ttest_rel(a, b)
        assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert row["std_diff"] == pytest.approx((a - b).std(ddof=1), rel=1e-12)
        half = stats.t.ppf(0.975, len(seeds) - 1) * (a - b).std(ddof=1) / math.sqrt(len(seeds))
        assert row["ci_low"] == pytest.approx((a - b).mean() - half, rel=1e-9)
        assert row["ci_high"] == pytest.approx((a - b).mean() + half, rel=1e-9)
    by_key = {(r["setting"], r["method"], r["metric"]): r for r in rows}
    assert by_key["distractor", "adl", "Dice"]["seeds"] == [0, 1]  # seed 2 missing for adl
    assert by_key["default", "adl", "PxAP"]["seeds"] == [0, 2]  # adl's seed 1 PxAP is null


def _rec(method: str, seed: int, value: float) -> dict:
    return {"setting": "s", "method": method, "seed": seed, "test": {"m": value}, "hyperparameters": {}}


@pytest.mark.parametrize(
    "ref, other, verdict",
    [
        ([70.0, 71.0, 72.5], [60.0, 61.5, 62.0], "better"),
        ([60.0, 61.5, 62.0], [70.0, 71.0, 72.5], "worse"),
        ([70.0, 60.0, 65.0], [64.0, 66.0, 65.5], "no significant difference"),
        ([70.0], [60.0], "too few pairs"),
    ],
)
def test_paired_verdict(ref, other, verdict):
    # "other" listed in reverse seed order: pairing must follow the seeds, not the list order
    recs = [_rec("ref", k, v) for k, v in enumerate(ref)]
    recs += [_rec("other", k, v) for k, v in reversed(list(enumerate(other)))]
    (row,) = paired_tests(recs, reference="ref", metrics=("m",))
    assert row["verdict"] == verdict
    if len(ref) > 1:
        assert row["p_value"] == pytest.approx(stats.ttest_rel(ref, other).pvalue)
        assert (row["p_value"] < 0.05) == (verdict != "no significant difference")
        assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]


def test_paired_tests_unknown_reference(bench):
    with pytest.raises(ValueError, match="reference.*nope"):
        paired_tests(collect_results(bench), reference="nope")


def test_write_results(bench, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench, out)
    csv_path, md_path = write_results(out)
    assert (csv_path, md_path) == (out / "results.csv", out / "results.md")

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(_runs())
    for row in rows:
        key = (row["setting"], row["method"], int(row["seed"]))
        for metric in METRICS:
            v = _value(*key, metric)
            assert row[metric] == "" if v is None else float(row[metric]) == v
        assert float(row["train_seconds"]) == 10.0 + key[2]

    md = md_path.read_text(encoding="utf-8")
    assert "over 3 seeds (0, 1, 2)" in md and "validation split only" in md
    assert md.index("## Setting `default`") < md.index("## Setting `distractor`")
    default = md[: md.index("## Setting `distractor`")]
    for metric in ("MaxBoxAccV2", "Dice"):
        d = 3 if metric == "Dice" else 2
        means = {m: _expected("default", m, metric).mean() for m in METHODS}
        for m in METHODS:
            vals = _expected("default", m, metric)
            text = f"{vals.mean():.{d}f} ± {vals.std(ddof=1):.{d}f}"
            assert text in default
            assert (f"**{text}**" in default) == (m == max(means, key=means.get))
    pxap = _expected("default", "adl", "PxAP")
    assert f"{pxap.mean():.2f} ± {pxap.std(ddof=1):.2f} (n=2)" in default
    assert "### Paired t-test: `sfs2` minus each method" in default
    assert '`{"lr": 0.01}`' in default and '`{"lr": 0.002}`' in default  # sfs2's lr differs per seed
    distractor = md[md.index("## Setting `distractor`") :]
    has = _expected("distractor", "has", "MaxBoxAccV2")
    assert f"| has | {has.mean():.2f} ± n/a (n=1)" in distractor and "too few pairs" in distractor

    # deterministic: the same records in another order give the same bytes
    recs = collect_results(out)
    random.Random(1).shuffle(recs)
    before = (csv_path.read_bytes(), md_path.read_bytes())
    write_results(out, records=recs)
    assert (csv_path.read_bytes(), md_path.read_bytes()) == before


def test_results_read_every_method_against_ceiling_and_floor(bench, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench, out)
    assert "share of the fully supervised ceiling" not in write_results(out)[1].read_text()  # no ceiling run
    for method, scale in (("supervised", 2.0), ("prior", 0.5)):  # ceiling: twice cam's, floor: half of it
        for seed in SEEDS:
            src = json.loads((out / "runs" / "default" / "cam" / f"seed{seed}" / "result.json").read_text())
            src["method"] = method
            src["test"] = {k: v * scale for k, v in src["test"].items()}
            atomic_write_json(out / "runs" / "default" / method / f"seed{seed}" / "result.json", src)
    md = write_results(out)[1].read_text()
    default = md[: md.index("## Setting `distractor`")]
    assert "share of the fully supervised ceiling's mean (`supervised`)" in default
    assert "| method | MaxBoxAccV2 % of ceiling | MaxBoxAccV2 - floor | Dice % of ceiling |" in default
    cam_v2 = _expected("default", "cam", "MaxBoxAccV2").mean()
    cam_dice = _expected("default", "cam", "Dice").mean()
    # cam: half the ceiling, and its lead over the floor is half its own mean
    assert f"| cam | 50 | +{cam_v2 / 2:.2f} | 50 | +{cam_dice / 2:.3f} |" in default
    sfs2 = _expected("default", "sfs2", "MaxBoxAccV2").mean()
    assert f"| sfs2 | {100 * sfs2 / (2 * cam_v2):.0f} | {sfs2 - cam_v2 / 2:+.2f} |" in default
    # the bounds are not rows of their own table; the distractor setting has no ceiling run
    assert "| supervised | " not in default[default.index("share of the fully supervised") :].split("###")[0]
    assert "share of the fully supervised ceiling" not in md[md.index("## Setting `distractor`") :]


def test_results_compare_the_runs_that_learnt_the_class(bench, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench, out)
    assert "Where the classifier learnt the class" not in write_results(out)[1].read_text()  # no val AUC
    for method in METHODS:
        for seed in SEEDS:
            path = out / "runs" / "default" / method / f"seed{seed}" / "result.json"
            rec = json.loads(path.read_text())
            # cam's seed 2 and every sfs2 run did not learn the class; 0.8 itself counts as learnt
            rec["val"]["AUC"] = 0.5 if (method, seed) == ("cam", 2) or method == "sfs2" else 0.8 + 0.05 * seed
            atomic_write_json(path, rec)
    md = write_results(out)[1].read_text()
    default = md[: md.index("## Setting `distractor`")]
    assert "the runs whose validation AUC is at least 0.8" in default
    header = "| method | seeds with validation AUC >= 0.8 | MaxBoxAccV2 | Dice | PxAP | accuracy | AUC |"
    assert header in default
    cam = [_value("default", "cam", k, "MaxBoxAccV2") for k in (0, 1)]
    dice = [_value("default", "cam", k, "Dice") for k in (0, 1)]
    assert (
        f"| cam | 2 of 3 (0, 1) | {np.mean(cam):.2f} ± {np.std(cam, ddof=1):.2f} | "
        f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f} |" in default
    )
    assert "| sfs2 | 0 of 3 (none) | n/a | n/a | n/a | n/a | n/a |" in default
    assert "| adl | 3 of 3 (0, 1, 2) |" in default
    assert "Where the classifier learnt the class" not in md[md.index("## Setting `distractor`") :]


def test_readme_table_is_the_results_of_one_setting_with_its_bounds(bench, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench, out)
    for method, scale in (("supervised", 2.0), ("prior", 0.5)):
        for seed in SEEDS:
            src = json.loads((out / "runs" / "default" / "cam" / f"seed{seed}" / "result.json").read_text())
            src["method"] = method
            src["test"] = {k: v * scale for k, v in src["test"].items()}
            atomic_write_json(out / "runs" / "default" / method / f"seed{seed}" / "result.json", src)
    records = collect_results(out)
    text = report_mod.readme_table(records, "default")
    header = "| method | " + " | ".join(report_mod.README_METRICS) + " |"
    assert text.splitlines()[0] == header
    cam = _expected("default", "cam", "MaxBoxAccV2")
    assert f"| cam | {cam.mean():.2f} ± {cam.std(ddof=1):.2f} |" in text
    rows = [line.split(" | ")[0] for line in text.split("As a share")[0].splitlines()[2:] if line]
    assert rows == ["| cam", "| adl", "| sfs2", "| prior (floor)", "| supervised (ceiling)"]  # bounds last
    assert f"| cam | 50 | +{cam.mean() / 2:.2f} |" in text
    # a method with fewer seeds than the others names its seeds (distractor: adl lacks seed 2)
    assert "| adl (seeds 0, 1) |" in report_mod.readme_table(records, "distractor")
    with pytest.raises(ValueError, match="no finished run of setting 'nope'"):
        report_mod.readme_table(records, "nope")
    # the committed results.csv gives the same table: the README is regenerated from it
    csv_path = write_results(out)[0]
    assert report_mod.readme_table(report_mod.records_from_csv(csv_path), "default") == text
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- benchmark-table -->\nstale\n<!-- /benchmark-table -->\nrest\n")
    spec = importlib.util.spec_from_file_location("readme_results", REPO / "benchmarks" / "readme_results.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--results", str(csv_path), "--readme", str(readme)])
    assert readme.read_text() == f"# x\n<!-- benchmark-table -->\n{text}<!-- /benchmark-table -->\nrest\n"
    (tmp_path / "bad.csv").write_text("setting,method,seed,MaxBoxAccV2\ndefault,cam,one,1.0\n")
    with pytest.raises(ValueError, match="bad.csv, line 2"):
        report_mod.records_from_csv(tmp_path / "bad.csv")


def test_replace_marked_section_keeps_everything_else():
    text = "a\n<!-- t -->\nold\nlines\n<!-- /t -->\nb\n"
    assert report_mod.replace_marked_section(text, "t", "new\n") == "a\n<!-- t -->\nnew\n<!-- /t -->\nb\n"
    with pytest.raises(ValueError, match="no '<!-- u -->'"):
        report_mod.replace_marked_section(text, "u", "x")


def test_write_results_atomic(bench, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    shutil.copytree(bench, out)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(report_mod, "_markdown", boom)
    with pytest.raises(RuntimeError, match="boom"):
        write_results(out)
    assert not (out / "results.csv").exists() and not (out / "results.md").exists()


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "malformed result.json"),
        (json.dumps({"setting": "default", "method": "cam", "test": {}}), "integer 'seed'"),
        (
            json.dumps({"setting": "default", "method": "cam", "seed": 0, "test": {"Dice": "x"}}),
            "numbers or null",
        ),
        (json.dumps({"setting": "default", "method": "adl", "seed": 0, "test": {}}), "its folder says"),
    ],
)
def test_malformed_result_json_names_the_file(tmp_path, content, match):
    path = tmp_path / "runs" / "default" / "cam" / "seed0" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        collect_results(tmp_path)
    assert str(path) in str(err.value)


def test_no_runs(tmp_path):
    assert collect_results(tmp_path) == []
    with pytest.raises(ValueError, match="no finished run"):
        write_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="bench_dir"):
        collect_results(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- figures


def _capture_figures(monkeypatch) -> list:
    figs = []
    save = figures_mod._save

    def capture(fig, out_path):
        figs.append(fig)
        return save(fig, out_path)

    monkeypatch.setattr(figures_mod, "_save", capture)
    return figs


def test_plot_threshold_curves(bench, tmp_path, monkeypatch):
    figs = _capture_figures(monkeypatch)
    out = plot_threshold_curves(bench, "default", tmp_path / "curves.png", iou=0.7, figsize=(4, 3), dpi=50)
    assert out == tmp_path / "curves.png" and _png_size(out) == (200, 150)
    ax = figs[0].axes[0]
    mean_lines = [ln for ln in ax.lines if len(ln.get_xdata()) == THRESHOLDS.size]
    ticks = [ln for ln in ax.lines if len(ln.get_xdata()) == 1]
    assert [ln.get_label() for ln in mean_lines] == [f"{m} (n=3)" for m in METHODS]
    for line, method in zip(mean_lines, METHODS, strict=True):
        expected = np.mean([_curves(method, k)[2] for k in SEEDS], axis=0)  # row 2 = IoU 0.7
        np.testing.assert_allclose(line.get_ydata(), expected)
    # the mean validation tau (0.3, 0.4, 0.5 over the seeds) marked on each curve
    assert len(ticks) == 3 and all(ln.get_xdata()[0] == pytest.approx(0.4) for ln in ticks)
    with pytest.raises(ValueError, match="iou must be one of"):
        plot_threshold_curves(bench, "default", tmp_path / "x.png", iou=0.6)


def test_plot_example_grid(bench, tmp_path, monkeypatch):
    figs = _capture_figures(monkeypatch)
    out = plot_example_grid(bench, "default", tmp_path / "grid.png", max_images=3, cell_inches=1.0, dpi=40)
    assert _png_size(out) == (4 * 40, 3 * 40)  # columns: input + 3 methods; rows: 3 images
    axes = figs[0].axes
    assert len(axes) == 3 * 4
    # protocol GT box [x0, y0, x1, y1] = [2, 3, 8, 9] (end = start + extent): from (1.5, 2.5), 6 x 6 pixels
    (rect,) = axes[0].patches
    assert rect.get_xy() == (1.5, 2.5) and (rect.get_width(), rect.get_height()) == (6, 6)
    # a method panel: GT box then the predicted box (from the flat, pickle-free layout for adl)
    gt_box, pred_box = axes[2].patches
    assert pred_box.get_xy() == (2.5, 3.5) and pred_box.get_edgecolor()[:3] == (1.0, 0.0, 0.0)
    assert [a.get_title() for a in axes[:4]] == [
        "input + GT",
        "cam (tau 0.50)",
        "adl (tau 0.50)",
        "sfs2 (tau 0.50)",
    ]

    plot_example_grid(bench, "default", tmp_path / "two.png", methods=["sfs2"], max_images=10, dpi=20)
    assert len(figs[1].axes) == N_IMAGES * 2
    with pytest.raises(ValueError, match="no examples.npz"):
        plot_example_grid(bench, "distractor", tmp_path / "y.png")


def test_plot_map_shapes_draws_each_figure_as_one_box_per_method(tmp_path, monkeypatch):
    from monai_wsol.benchmark.figures import plot_map_shapes
    from monai_wsol.metrics.map_shapes import MAP_SHAPE_KEYS

    figs = _capture_figures(monkeypatch)
    rng = np.random.default_rng(0)
    values = {"cam": rng.random((30, len(MAP_SHAPE_KEYS))), "sfs2": 1 + rng.random((20, len(MAP_SHAPE_KEYS)))}
    values["sfs2"][3, 0] = np.nan  # a map without a defined figure is left out of that panel only
    out = plot_map_shapes(values, tmp_path / "shapes.png", cell_inches=(2, 1.5), ncols=4, dpi=50)
    assert _png_size(out) == (4 * 2 * 50, 2 * 1.5 * 50)
    axes = figs[0].axes
    shown = [ax for ax in axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == list(MAP_SHAPE_KEYS) and len(axes) == 8
    for k, ax in enumerate(shown):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["cam", "sfs2"]
        assert ax.get_yscale() == ("log" if MAP_SHAPE_KEYS[k] == "area_ratio" else "linear")
        # the median is the one two-point line as wide as its box (0.6); the means' markers are drawn last
        medians = [
            ln.get_ydata()[0]
            for ln in ax.lines
            if ln.get_xdata().size == 2 and np.ptp(ln.get_xdata()) == pytest.approx(0.6)
        ]
        means = ax.lines[-1].get_ydata()
        for i, v in enumerate(values.values()):
            column = v[:, k][np.isfinite(v[:, k])]
            assert medians[i] == pytest.approx(np.median(column))
            assert means[i] == pytest.approx(column.mean())
    with pytest.raises(ValueError, match="'cam' has shape"):
        plot_map_shapes({"cam": np.zeros((3, 2))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no method"):
        plot_map_shapes({}, tmp_path / "x.png")


def test_figures_atomic_on_error(bench, tmp_path, monkeypatch):
    out = tmp_path / "grid.png"
    out.write_bytes(b"previous")

    def broken_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")  # a partial file, then a crash
        raise OSError("disk full")

    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_example_grid(bench, "default", out, dpi=20)
    with pytest.raises(OSError, match="disk full"):
        plot_threshold_curves(bench, "default", tmp_path / "curves.png", dpi=20)
    monkeypatch.undo()

    def broken_draw(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(figures_mod, "_draw_boxes", broken_draw)
    with pytest.raises(RuntimeError, match="drawing failed"):
        plot_example_grid(bench, "default", out, dpi=20)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temporary file left behind


def test_write_ablation(tmp_path):
    from monai_wsol.benchmark.report import ABLATION_COLUMNS, write_ablation

    def rec(method, seed, val_box, test_box, options):
        metrics = {"MaxBoxAccV2": 0.0, "Dice": 0.5, "accuracy": 80.0, "BoxAccV2@val_tau": 1.0}
        return {
            "setting": "default",
            "method": method,
            "seed": seed,
            "hyperparameters": {"options": options},
            "val": {**metrics, "MaxBoxAccV2": val_box},
            "test": {**metrics, "MaxBoxAccV2": test_box},
        }

    records = [
        rec("cam", 0, 10.0, 30.0, {}),
        rec("sfs2_t0.6", 0, 14.0, 20.0, {"t": 0.6}),
        rec("sfs2_t0.6", 1, 16.0, 22.0, {"t": 0.6}),
    ]
    text = write_ablation(tmp_path, baseline="cam", records=records).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert header.count("|") == len(ABLATION_COLUMNS) + 5
    row = next(line for line in text.splitlines() if line.startswith("| sfs2_t0.6"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # mean over seeds; validation and test kept apart; delta against the baseline's validation figure
    assert cells[1] == '`{"t": 0.6}`' and cells[2] == "2"
    assert cells[3] == "15.00" and cells[6] == "21.00" and cells[-1] == "5.00"


def test_orthogonal_planes_pass_through_the_lesion_and_the_figure_is_drawn(tmp_path):
    from monai_wsol.benchmark.figures import orthogonal_planes, plot_orthogonal_slices

    volume = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    axial, coronal, sagittal = orthogonal_planes(volume, (1, 2, 3))
    np.testing.assert_array_equal(axial, volume[:, :, 3].T)
    np.testing.assert_array_equal(coronal, volume[:, 2, :].T)
    np.testing.assert_array_equal(sagittal, volume[1, :, :].T)

    rng = np.random.default_rng(0)
    gt = np.zeros((24, 24, 12), bool)
    gt[4:10, 14:20, 2:6] = True
    cam = gt * 0.8 + rng.uniform(0, 0.2, gt.shape)
    rows = [
        {"image": rng.normal(size=gt.shape), "cam": cam, "gt_mask": gt, "tau": 0.5, "name": "lesion"},
        {"image": rng.normal(size=gt.shape), "cam": cam, "gt_mask": np.zeros_like(gt), "tau": 0.5},
    ]
    out = plot_orthogonal_slices(rows, tmp_path / "ortho.png", spacing=(1, 1, 2), cell_inches=1.0, dpi=50)
    assert _png_size(out) == (150, 100)  # 3 x 2 panels of 50 pixels
    with pytest.raises(ValueError, match="row 1 .* one shape"):
        plot_orthogonal_slices([rows[0], {**rows[1], "cam": cam[..., :5]}], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def _gate_record(
    method: str, seed: int, val_dice: float, test_dice: float, source: str | None = None
) -> dict:
    hyper = {"pseudo_masks": {"from": source, "tau": 0.5}} if source else {}
    return {
        "setting": "default",
        "method": method,
        "seed": seed,
        "val": {"Dice": val_dice},
        "test": {"Dice@val_tau": test_dice, "MaxBoxAccV2": 100 * test_dice},
        "hyperparameters": hyper,
    }


def test_the_self_training_gate_keeps_the_model_better_on_validation():
    records = [
        _gate_record("cam", 0, 0.50, 0.40),
        _gate_record("cam_pseudo", 0, 0.60, 0.70, source="cam"),  # better on validation: kept
        _gate_record("cam", 1, 0.50, 0.45),
        _gate_record("cam_pseudo", 1, 0.20, 0.90, source="cam"),  # worse on validation, whatever its test
        _gate_record("cam", 2, 0.50, 0.55),
        _gate_record("cam_pseudo", 2, 0.50, 0.10, source="cam"),  # a tie keeps the source
        _gate_record("cam_pseudo", 3, 0.90, 0.90, source="cam"),  # no source run of that seed: no pair
    ]
    gated = report_mod.gated_self_training(records)
    assert [(g["method"], g["seed"]) for g in gated] == [("cam_pseudo_gated", s) for s in (0, 1, 2)]
    assert [g["hyperparameters"]["gate"]["chosen"] for g in gated] == ["cam_pseudo", "cam", "cam"]
    assert [g["test"]["Dice@val_tau"] for g in gated] == [0.70, 0.45, 0.55]
    assert gated[1]["hyperparameters"]["gate"] == {
        "metric": "Dice",
        "chosen": "cam",
        "source": 0.5,
        "segmenter": 0.2,
    }
    assert records[0]["method"] == "cam" and "gate" not in records[0]["hyperparameters"]  # inputs untouched
    # the gated rows pair with both models by seed
    tests = paired_tests([*records, *gated], "cam_pseudo_gated", ["Dice@val_tau"], others=["cam"])
    assert tests[0]["n"] == 3 and tests[0]["mean_diff"] == pytest.approx((0.30 + 0 + 0) / 3)
    with pytest.raises(ValueError, match="no validation 'MaxBoxAccV2'"):
        report_mod.gated_self_training(records, metric="MaxBoxAccV2")


def test_the_pseudo_mask_script_reports_the_gate(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "pseudo_masks_script", REPO / "benchmarks" / "pseudo_masks.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for seed, (val_src, val_seg) in enumerate([(0.5, 0.6), (0.5, 0.4), (0.5, 0.7)]):
        for rec in (
            _gate_record("cam", seed, val_src, 0.5),
            _gate_record("cam_pseudo", seed, val_seg, 0.6 + seed / 10, source="cam"),
        ):
            rec["test"].update({"BoxAccV2@val_tau": 40.0 + seed, "PxAP": 50.0})
            atomic_write_json(
                tmp_path / "runs" / "default" / rec["method"] / f"seed{seed}" / "result.json", rec
            )
    lines = script.gate_tables(tmp_path, "default")
    rows = [line for line in lines if line.startswith("| cam_pseudo_gated |")]
    assert [row.split("|")[3].strip() for row in rows] == ["cam_pseudo", "cam", "cam_pseudo"]
    dice = next(line for line in lines if line.startswith("| cam_pseudo_gated - cam | Dice@val_tau"))
    assert dice.split("|")[4].strip() == f"{(0.6 + 0.5 + 0.8) / 3:.3f}"  # the gate's mean over the kept runs
    assert script.gate_tables(tmp_path, "distractor") == []


def test_export_records_copies_what_the_report_needs_and_renames_settings(bench, tmp_path):
    """The exported records give the same results as the benchmark folder (figures, curves, examples) without
    its checkpoints; a renamed setting moves with its ``result.json``'s ``setting``."""
    src = tmp_path / "src"
    shutil.copytree(bench, src)
    run = src / "runs" / "default" / "cam" / "seed0"
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "model.pt").write_bytes(b"weights")
    (run / "eval").mkdir()
    (run / "eval" / "test.npz").write_bytes(b"curves of the test split")
    exported = report_mod.export_records(src, tmp_path / "out", rename_settings={"distractor": "rim"})
    out = tmp_path / "out"
    assert len(exported) == len(_runs())
    assert not list(out.rglob("checkpoints"))
    assert (out / "runs" / "default" / "cam" / "seed0" / "eval" / "test.npz").read_bytes() == (
        b"curves of the test split"
    )
    assert (out / "runs" / "default" / "cam" / "seed0" / "examples.npz").is_file()
    before, after = report_mod.collect_results(src), report_mod.collect_results(out)
    assert {r["setting"] for r in after} == {"default", "rim"}
    renamed = {"distractor": "rim"}
    assert [(renamed.get(r["setting"], r["setting"]), r["method"], r["seed"], r["test"]) for r in before] == [
        (r["setting"], r["method"], r["seed"], r["test"]) for r in after
    ]
    for rec in after:
        assert Path(rec["run_dir"]).parent.parent.name == rec["setting"]
        assert (Path(rec["run_dir"]) / "curves.npz").read_bytes() == (
            src
            / "runs"
            / {"rim": "distractor"}.get(rec["setting"], rec["setting"])
            / rec["method"]
            / Path(rec["run_dir"]).name
            / "curves.npz"
        ).read_bytes()
