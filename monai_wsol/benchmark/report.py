"""Benchmark results: collect the per-run ``result.json`` files, summarise them and test the differences.

The benchmark runner writes one folder per finished run, ``<bench_dir>/runs/<setting>/<method>/seed<k>/``,
holding a ``result.json`` (``setting``, ``method``, ``seed``, ``hyperparameters``, ``val`` and ``test`` metric
dicts, ``train_seconds``). This module turns those into:

- :func:`collect_results`: the list of run records (a malformed file raises, naming it);
- :func:`summarize`: mean, sample standard deviation (``ddof=1``) and count per (setting, method, metric);
- :func:`paired_tests`: a paired t-test of a reference method (the dual-suppression block) against every other
  method, runs paired by seed;
- :func:`write_results`: ``results.csv`` (one row per run) and ``results.md`` (tables per setting).

Every metric is read from the run's ``test`` dict and every metric here is *higher is better*. A missing
metric, JSON ``null`` or NaN is "not available": it is left out of means and pairs (and printed ``n/a``),
never counted as zero.

Why pairs, and what the numbers mean
------------------------------------
Runs with the same seed share the data split, the initialisation of the shared layers and the order of the
batches, so much of the seed-to-seed variation is common to both methods; the paired test works on the
per-seed differences ``d_s = reference_s - other_s`` and removes that common part. The reported quantities are
the mean difference, its sample standard deviation, a 95 % t-interval ``mean(d) +/- t_{0.975, n-1} * std(d) /
sqrt(n)`` and the two-sided p-value of :func:`scipy.stats.ttest_rel` (the same test).

The interval is the range of true mean differences (over seeds, for this data and budget) compatible with the
runs at the 95 % level: if it excludes 0, the p-value is below 0.05. It says nothing about other data sets.

With n = 3 seeds the test has little power: the t distribution has 2 degrees of freedom, so the critical value
is 4.30 (against 1.96 for a large sample) and the standard error is ``std / sqrt(3)``: a difference must be
about 2.5 times the standard deviation of the per-seed differences before it is called significant. "No
significant difference" therefore means "not shown with 3 seeds", not "equal"; read the interval, which shows
how large a difference the runs cannot exclude. The tests are not corrected for multiple comparisons (methods
x metrics x settings): a single p just below 0.05 among many is weak evidence. When the per-seed differences
are all equal the standard deviation is 0 and the p-value is 0 (or NaN when they are all 0): a degenerate case
that more seeds would resolve.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from monai_wsol.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "DEFAULT_METRICS",
    "PAIRED_METRICS",
    "DEFAULT_METHOD_ORDER",
    "collect_results",
    "export_records",
    "RECORD_FILES",
    "gated_self_training",
    "summarize",
    "paired_tests",
    "write_results",
    "method_order",
    "write_ablation",
    "ABLATION_COLUMNS",
    "README_METRICS",
    "readme_table",
    "records_from_csv",
    "replace_marked_section",
    "emit_table",
]

#: Test metrics of the benchmark, in table order (percent unless in ``UNIT_INTERVAL_METRICS``).
DEFAULT_METRICS: tuple[str, ...] = (
    "MaxBoxAccV2",
    "MaxBoxAcc",
    "BoxAcc@30",
    "BoxAcc@50",
    "BoxAcc@70",
    "BoxAccV2@val_tau",
    "Top-1 Loc",
    "GT-known Loc",
    "Dice",
    "Dice@val_tau",
    "IoU",
    "PxAP",
    "accuracy",
    "accuracy@val_threshold",
    "AUC",
)
#: Metrics of the paired tests by default: localization (boxes and masks) and classification.
PAIRED_METRICS: tuple[str, ...] = (
    "MaxBoxAccV2",
    "BoxAcc@50",
    "BoxAcc@70",
    "Top-1 Loc",
    "Dice",
    "PxAP",
    "accuracy",
)
#: Metrics on a 0..1 scale (three decimals); the others are percentages (two decimals).
UNIT_INTERVAL_METRICS = frozenset({"Dice", "Dice@val_tau", "IoU", "AUC"})
#: Table order of the known methods (plain CAM first, the block last); unknown methods follow, by name.
DEFAULT_METHOD_ORDER: tuple[str, ...] = (
    "cam",
    "gradcam",
    "gradcampp",
    "layercam",
    "adl",
    "has",
    "cutmix",
    "acol",
    "sfs1",
    "sfs2",
    "cam_pseudo",
    "sfs2_pseudo",
)
ALPHA = 0.05
_SEED_DIR = re.compile(r"seed(-?\d+)")


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _validate_record(rec: Any, path: Path) -> dict:
    """Check one parsed ``result.json`` and return it.

    The returned record has metric ``null`` turned into NaN and ``run_dir`` added.
    """
    if not isinstance(rec, dict):
        raise ValueError(f"{path}: result.json must hold a JSON object, got {type(rec).__name__}.")
    for key, kind in (("setting", str), ("method", str)):
        if not isinstance(rec.get(key), kind) or not rec[key]:
            raise ValueError(f"{path}: result.json needs a non-empty string {key!r}, got {rec.get(key)!r}.")
    if not isinstance(rec.get("seed"), int) or isinstance(rec["seed"], bool):
        raise ValueError(f"{path}: result.json needs an integer 'seed', got {rec.get('seed')!r}.")
    out = dict(rec)
    for split in ("test", "val"):
        metrics = rec.get(split, {} if split == "val" else None)
        if not isinstance(metrics, dict):
            raise ValueError(f"{path}: result.json needs a {split!r} object of metrics, got {metrics!r}.")
        bad = {k: v for k, v in metrics.items() if v is not None and not _is_number(v)}
        if bad:
            raise ValueError(f"{path}: {split!r} metrics must be numbers or null, got {bad}.")
        out[split] = {k: (math.nan if v is None else float(v)) for k, v in metrics.items()}
    if not isinstance(rec.get("hyperparameters", {}), dict):
        raise ValueError(f"{path}: 'hyperparameters' must be a JSON object, got {rec['hyperparameters']!r}.")
    out.setdefault("hyperparameters", {})
    seconds = rec.get("train_seconds")
    if seconds is not None and not _is_number(seconds):
        raise ValueError(f"{path}: 'train_seconds' must be a number, got {seconds!r}.")
    out["train_seconds"] = math.nan if seconds is None else float(seconds)
    out["run_dir"] = str(path.parent)
    return out


def _sort_key(rec: dict) -> tuple:
    method = rec["method"]
    rank = DEFAULT_METHOD_ORDER.index(method) if method in DEFAULT_METHOD_ORDER else len(DEFAULT_METHOD_ORDER)
    return (*_setting_key(rec["setting"]), rank, method, rec["seed"])


def collect_results(bench_dir: str | os.PathLike) -> list[dict]:
    """Read every ``<bench_dir>/runs/<setting>/<method>/seed<k>/result.json``.

    A run without ``result.json`` is unfinished and skipped (the runner writes it last, atomically).

    Returns:
        one dict per run, as in the file (``setting``, ``method``, ``seed``, ``hyperparameters``, ``val``,
        ``test``, ``train_seconds``) with ``null`` metrics as NaN, plus ``run_dir`` (the run's folder). Sorted
        by setting (``default`` first), method (:data:`DEFAULT_METHOD_ORDER`, then by name) and seed.

    Raises:
        FileNotFoundError: ``bench_dir`` does not exist.
        ValueError: a ``result.json`` is not valid JSON, lacks a field, disagrees with its folder name, or two
            files describe the same (setting, method, seed); the message names the file.
    """
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise FileNotFoundError(f"bench_dir {str(bench_dir)!r} is not a directory.")
    records: list[dict] = []
    seen: dict[tuple, Path] = {}
    for path in sorted(bench_dir.glob("runs/*/*/seed*/result.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: malformed result.json ({e}).") from e
        rec = _validate_record(raw, path)
        seed_dir = _SEED_DIR.fullmatch(path.parent.name)
        expected = (path.parents[2].name, path.parents[1].name, int(seed_dir.group(1)) if seed_dir else None)
        found = (rec["setting"], rec["method"], rec["seed"])
        if expected != found:
            raise ValueError(
                f"{path}: result.json says setting/method/seed = {found} but its folder says {expected}."
            )
        if found in seen:
            raise ValueError(f"{path}: duplicate run {found}, also in {seen[found]}.")
        seen[found] = path
        records.append(rec)
    return sorted(records, key=_sort_key)


#: the files of a finished run that its report needs (figures, curves, the example grid's maps), without the
#: checkpoints and logs: what :func:`export_records` copies
RECORD_FILES: tuple[str, ...] = (
    "result.json",
    "curves.npz",
    "examples.npz",
    "metrics.csv",
    "train_metrics.csv",
    "eval/validation.json",
    "eval/validation.npz",
    "eval/test.json",
    "eval/test.npz",
)


def export_records(
    bench_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    rename_settings: dict[str, str] | None = None,
) -> list[Path]:
    """Copy every finished run's :data:`RECORD_FILES` from ``<bench_dir>/runs`` to ``<out_dir>/runs``, so that
    :func:`write_results` (and the figures) can be made again from ``out_dir`` alone, e.g. a benchmark's
    records kept in a repository while its checkpoints stay behind.

    Args:
        bench_dir: a benchmark folder.
        out_dir: where the records go (``<out_dir>/runs/<setting>/<method>/seed<k>/``); existing files of the
            same runs are replaced.
        rename_settings: old setting name -> new one: the run's folder and its ``result.json``'s ``setting``
            take the new name (a setting run under another name, e.g. beside an older one).

    Returns:
        the folders of the exported runs.
    """
    rename = dict(rename_settings or {})
    exported = []
    for rec in collect_results(bench_dir):
        src = Path(rec["run_dir"])
        setting = rename.get(rec["setting"], rec["setting"])
        dst = Path(out_dir) / "runs" / setting / rec["method"] / src.name
        for name in RECORD_FILES:
            if not (src / name).is_file():
                continue
            if name == "result.json":
                raw = json.loads((src / name).read_text(encoding="utf-8"))
                atomic_write_json(dst / name, {**raw, "setting": setting})
            else:
                atomic_write_bytes(dst / name, (src / name).read_bytes())
        exported.append(dst)
    return exported


def gated_self_training(records: Sequence[dict], metric: str = "Dice") -> list[dict]:
    """Self-training behind a validation gate: per self-training run and its source's run of the same setting
    and seed, the run whose **validation** ``metric`` is higher (a tie keeps the source, the simpler model).

    A self-training run is a record whose ``hyperparameters["pseudo_masks"]["from"]`` names its source method
    (the runner writes it). The gate uses the validation split only; what it keeps is then read on test.

    Returns:
        per gated pair, a copy of the kept run's record named ``<self-training method>_gated``, with
        ``hyperparameters["gate"] = {"metric", "chosen", "source", "segmenter"}`` (the chosen method and the
        two validation values). Pairs whose source run is missing are left out.

    Raises:
        ValueError: a run of the pair lacks the validation ``metric``.
    """
    by_key = {(r["setting"], r["method"], r["seed"]): r for r in records}
    gated = []
    for rec in records:
        source_method = rec.get("hyperparameters", {}).get("pseudo_masks", {}).get("from")
        source = by_key.get((rec["setting"], source_method, rec["seed"])) if source_method else None
        if source is None:
            continue
        values = {}
        for role, run in (("source", source), ("segmenter", rec)):
            value = run.get("val", {}).get(metric)
            if value is None or not math.isfinite(value):
                where = run.get("run_dir", run["method"])
                raise ValueError(f"{where}: no validation {metric!r} for the self-training gate.")
            values[role] = float(value)
        kept = rec if values["segmenter"] > values["source"] else source
        out = {**kept, "method": f"{rec['method']}_gated"}
        gate = {"metric": metric, "chosen": kept["method"], **values}
        out["hyperparameters"] = {**kept.get("hyperparameters", {}), "gate": gate}
        gated.append(out)
    return gated


def method_order(records: Iterable[dict], order: Sequence[str] | None = None) -> list[str]:
    """The methods of ``records``: those in ``order`` first (in that order), then the rest by first
    appearance.

    ``order=None`` means :data:`DEFAULT_METHOD_ORDER`; pass ``()`` for pure first-appearance order.
    """
    present = list(dict.fromkeys(r["method"] for r in records))
    head = [m for m in (DEFAULT_METHOD_ORDER if order is None else order) if m in present]
    return head + [m for m in present if m not in head]


def _setting_key(setting: str) -> tuple[bool, str]:
    return (setting != "default", setting)


def _settings(records: Iterable[dict]) -> list[str]:
    """The settings of ``records``: ``default`` first, then by name."""
    return sorted({r["setting"] for r in records}, key=_setting_key)


def _ordered(records: Sequence[dict], order: Sequence[str] | None) -> list[dict]:
    """``records`` sorted by setting, method (:func:`method_order`) and seed: the tables' row order."""
    rank = {m: i for i, m in enumerate(method_order(records, order))}
    return sorted(records, key=lambda r: (_setting_key(r["setting"]), rank[r["method"]], r["seed"]))


def _value(rec: dict, metric: str) -> float:
    """The run's test value of ``metric`` (or its ``train_seconds``); NaN when missing."""
    if metric == "train_seconds":
        return float(rec.get("train_seconds", math.nan))
    return float(rec["test"].get(metric, math.nan))


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1) and count of the finite ``values``; std is NaN below two values."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    mean = float(v.mean()) if v.size else math.nan
    std = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return mean, std, int(v.size)


def summarize(
    records: Sequence[dict], metrics: Sequence[str] = DEFAULT_METRICS, order: Sequence[str] | None = None
) -> list[dict]:
    """Mean and sample standard deviation over seeds per (setting, method, metric).

    Args:
        records: run records (:func:`collect_results`).
        metrics: test metric names (``"train_seconds"`` is also accepted).
        order: method order (:func:`method_order`).

    Returns:
        dicts ``{"setting", "method", "metric", "mean", "std", "n"}``; ``n`` counts the runs with a finite
        value, ``std`` uses ``ddof=1`` (NaN when ``n < 2``), ``mean`` is NaN when ``n == 0``.
    """
    out = []
    for setting in _settings(records):
        runs = [r for r in records if r["setting"] == setting]
        for method in method_order(runs, order):
            mine = [r for r in runs if r["method"] == method]
            for metric in metrics:
                mean, std, n = _mean_std([_value(r, metric) for r in mine])
                out.append(
                    {"setting": setting, "method": method, "metric": metric, "mean": mean, "std": std, "n": n}
                )
    return out


def _verdict(mean_diff: float, p_value: float, n: int) -> str:
    if n < 2:
        return "too few pairs"
    if math.isfinite(p_value) and p_value < ALPHA:
        return "better" if mean_diff > 0 else "worse"
    return "no significant difference"


def _paired(ref: dict[int, float], other: dict[int, float]) -> dict:
    """Paired t statistics of ``ref - other`` over the seeds where both have a finite value."""
    from scipy import stats

    seeds = sorted(s for s in ref.keys() & other.keys() if math.isfinite(ref[s]) and math.isfinite(other[s]))
    a = np.asarray([ref[s] for s in seeds], dtype=np.float64)
    b = np.asarray([other[s] for s in seeds], dtype=np.float64)
    n = len(seeds)
    res: dict[str, Any] = {"n": n, "seeds": seeds, "mean_reference": math.nan, "mean_other": math.nan}
    res.update(mean_diff=math.nan, std_diff=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan)
    if n:
        res.update(
            mean_reference=float(a.mean()), mean_other=float(b.mean()), mean_diff=float((a - b).mean())
        )
    if n >= 2:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # identical pairs warn about precision loss; the result (NaN or p = 0) is explained in the
            # docstring
            warnings.simplefilter("ignore", RuntimeWarning)
            test = stats.ttest_rel(a, b)
            ci = test.confidence_interval(1 - ALPHA)
        res.update(std_diff=float((a - b).std(ddof=1)), p_value=float(test.pvalue))
        res.update(ci_low=float(ci.low), ci_high=float(ci.high))
    res["verdict"] = _verdict(res["mean_diff"], res["p_value"], n)
    return res


def paired_tests(
    records: Sequence[dict],
    reference: str = "sfs2",
    metrics: Sequence[str] = PAIRED_METRICS,
    others: Sequence[str] | None = None,
) -> list[dict]:
    """Paired two-sided t-test of ``reference`` against every other method, per setting and metric.

    Runs are paired by seed; only the seeds where both methods have a finite value count (the module docstring
    explains the statistics and their low power at 3 seeds).

    Args:
        records: run records (:func:`collect_results`).
        reference: the method tested against the others (the dual-suppression block).
        metrics: test metric names.
        others: the methods to compare with (default: every other method, in record order). A setting without
            the reference is skipped.

    Returns:
        dicts ``{"setting", "reference", "method", "metric", "n", "seeds", "mean_reference", "mean_other",
        "mean_diff", "std_diff", "ci_low", "ci_high", "p_value", "verdict"}``: ``mean_diff`` is the mean of
        ``reference - method`` over the paired seeds, ``ci_low``/``ci_high`` its 95 % t-interval, ``p_value``
        that of :func:`scipy.stats.ttest_rel` and ``verdict`` ``"better"``/``"worse"`` (the reference, when
        ``p < 0.05``), ``"no significant difference"`` or ``"too few pairs"`` (fewer than 2).

    Raises:
        ValueError: ``reference`` or a method of ``others`` is in no record.
    """
    methods = method_order(records)
    for name, value in (("reference", [reference]), ("others", others or [])):
        missing = [m for m in value if m not in methods]
        if missing:
            raise ValueError(f"{name}: method(s) {missing} not in the results (found {methods}).")
    out = []
    for setting in _settings(records):
        runs = [r for r in records if r["setting"] == setting]
        present = method_order(runs)
        if reference not in present:
            continue
        compared = [m for m in (others if others is not None else present) if m != reference and m in present]
        for method in compared:
            for metric in metrics:
                ref = {r["seed"]: _value(r, metric) for r in runs if r["method"] == reference}
                oth = {r["seed"]: _value(r, metric) for r in runs if r["method"] == method}
                row = {"setting": setting, "reference": reference, "method": method, "metric": metric}
                out.append(row | _paired(ref, oth))
    return out


# ---------------------------------------------------------------------------------------------- writing


def _decimals(metric: str) -> int:
    return 3 if metric in UNIT_INTERVAL_METRICS else 2


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}" if math.isfinite(x) else "n/a"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _csv_text(records: Sequence[dict], metrics: Sequence[str]) -> str:
    """One row per run; floats in ``repr`` form (they parse back exactly), NaN as an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["setting", "method", "seed", *metrics, "train_seconds"])
    for r in records:
        values = [_value(r, m) for m in (*metrics, "train_seconds")]
        writer.writerow(
            [r["setting"], r["method"], r["seed"], *(repr(v) if math.isfinite(v) else "" for v in values)]
        )
    return buf.getvalue()


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _summary_table(
    summary: list[dict], methods: list[str], metrics: Sequence[str], n_seeds: int
) -> list[str]:
    """Method x metric table of "mean ± std"; the best displayed mean of each column in bold (ties: all)."""
    cell = {(s["method"], s["metric"]): s for s in summary}
    best = {}
    for metric in metrics:
        shown = [round(cell[m, metric]["mean"], _decimals(metric)) for m in methods]
        finite = [v for v in shown if math.isfinite(v)]
        best[metric] = max(finite) if finite else None
    rows = []
    for method in methods:
        row = [method]
        for metric in (*metrics, "train_seconds"):
            s = cell[method, metric]
            if metric == "train_seconds":
                row.append(_fmt(s["mean"], 0))
                continue
            d = _decimals(metric)
            text = f"{_fmt(s['mean'], d)} ± {_fmt(s['std'], d)}"
            if s["n"] not in (0, n_seeds):
                text += f" (n={s['n']})"
            if s["n"] and round(s["mean"], d) == best[metric]:
                text = f"**{text}**"
            row.append(text)
        rows.append(row)
    return _md_table(["method", *metrics, "train s"], rows)


#: The bounds every WSOL figure is read against, and the localization metrics read as a share of the ceiling.
CEILING, FLOOR = "supervised", "prior"
BOUND_METRICS: tuple[str, ...] = ("MaxBoxAccV2", "Dice", "PxAP")


def _bounds_table(summary: list[dict], methods: list[str], metrics: Sequence[str]) -> list[str]:
    """Each WSOL method's mean localization as a percentage of the ceiling's mean, and its lead over the
    floor's mean (in the metric's unit); empty when the ceiling was not run."""
    cell = {(s["method"], s["metric"]): s["mean"] for s in summary}
    shown = [m for m in BOUND_METRICS if m in metrics]
    if CEILING not in methods or not shown:
        return []
    header = ["method"]
    for metric in shown:
        header += [f"{metric} % of ceiling"] + ([f"{metric} - floor"] if FLOOR in methods else [])
    rows = []
    for method in methods:
        if method in (CEILING, FLOOR):
            continue
        row = [method]
        for metric in shown:
            ceiling, value = cell[CEILING, metric], cell[method, metric]
            share = 100.0 * value / ceiling if math.isfinite(ceiling) and ceiling > 0 else math.nan
            row.append(_fmt(share, 0))
            if FLOOR in methods:
                row.append(f"{value - cell[FLOOR, metric]:+.{_decimals(metric)}f}")
        rows.append(row)
    return _md_table(header, rows)


#: A classifier "has learnt the class" when its validation AUC reaches this (read on validation only); the
#: benchmark's default-setting runs fall on either side of a gap, 0.49-0.66 against 0.78 and more (with the
#: distractor, one segmenter run sits at 0.72).
LEARNT_MIN_VAL_AUC = 0.8
LEARNT_METRICS: tuple[str, ...] = ("MaxBoxAccV2", "Dice", "PxAP", "accuracy", "AUC")


def _learnt_table(
    runs: Sequence[dict], methods: list[str], min_val_auc: float = LEARNT_MIN_VAL_AUC
) -> list[str]:
    """Per method, the seeds whose classifier learnt the class (validation AUC >= ``min_val_auc``) and the
    test figures over those seeds alone; empty when no run recorded a validation AUC (the floor, which has
    nothing to learn, is left out)."""
    val_auc = {id(r): float(r.get("val", {}).get("AUC", math.nan)) for r in runs}
    if not any(math.isfinite(v) for v in val_auc.values()):
        return []
    rows = []
    for method in methods:
        if method == FLOOR:
            continue
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        learnt = [r for r in mine if val_auc[id(r)] >= min_val_auc]
        row = [method, f"{len(learnt)} of {len(mine)} ({_seed_list([r['seed'] for r in learnt]) or 'none'})"]
        for metric in LEARNT_METRICS:
            mean, std, n = _mean_std([_value(r, metric) for r in learnt])
            d = _decimals(metric)
            row.append("n/a" if n == 0 else f"{_fmt(mean, d)} ± {_fmt(std, d)}")
        rows.append(row)
    return _md_table(["method", f"seeds with validation AUC >= {min_val_auc:g}", *LEARNT_METRICS], rows)


def _paired_table(tests: list[dict], reference: str) -> list[str]:
    rows = []
    for t in tests:
        d = _decimals(t["metric"])
        rows.append(
            [
                t["method"],
                t["metric"],
                str(t["n"]),
                f"{_fmt(t['mean_diff'], d)} ± {_fmt(t['std_diff'], d)}",
                f"[{_fmt(t['ci_low'], d)}, {_fmt(t['ci_high'], d)}]",
                _fmt_p(t["p_value"]),
                t["verdict"],
            ]
        )
    header = ["vs method", "metric", "pairs", "mean diff ± std", "95 % CI", "p", f"verdict for `{reference}`"]
    return _md_table(header, rows)


def _hyper_lines(runs: list[dict], methods: list[str]) -> list[str]:
    """The shared set-up once, then each method's own options; one line when every seed chose the same."""
    # the model file is each run's own (and a post-hoc method's is its base run's): not a hyperparameter
    per_run = ("options", "model")
    shared = {k: v for k, v in runs[0]["hyperparameters"].items() if k not in per_run}
    lines = [f"Shared by every run: `{json.dumps(shared, sort_keys=True, default=str)}`", ""]
    rows = []
    for method in methods:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        texts = [
            json.dumps(r["hyperparameters"].get("options", {}), sort_keys=True, default=str) for r in mine
        ]
        for r in mine:
            other = {k: v for k, v in r["hyperparameters"].items() if k not in per_run}
            if other != shared:
                texts = [
                    json.dumps(
                        {k: v for k, v in x["hyperparameters"].items() if k != "model"},
                        sort_keys=True,
                        default=str,
                    )
                    for x in mine
                ]
                break
        if len(set(texts)) == 1:
            rows.append([method, "all", f"`{texts[0]}`"])
        else:
            rows.extend([method, str(r["seed"]), f"`{t}`"] for r, t in zip(mine, texts, strict=True))
    return lines + _md_table(["method", "seeds", "options (chosen on validation)"], rows)


def _markdown(
    records: Sequence[dict],
    metrics: Sequence[str],
    reference: str | Sequence[str],
    order: Sequence[str] | None,
) -> str:
    seeds_all = sorted({r["seed"] for r in records})
    lines = [
        "# Benchmark results",
        "",
        f"Test-split metrics, mean ± sample standard deviation (ddof=1) over {len(seeds_all)} seeds "
        f"({', '.join(map(str, seeds_all))}) per method; box accuracies, Top-1/GT-known Loc, PxAP and "
        "accuracy in percent, Dice, IoU and AUC in 0..1, higher is better; bold: best mean per column. "
        "The CAM threshold tau and every method's hyperparameters were chosen on the validation split "
        "only; the test split was used only for these numbers. `n/a`: not available; `(n=k)`: only k runs "
        "had the value.",
        "",
    ]
    for setting in _settings(records):
        runs = [r for r in records if r["setting"] == setting]
        methods = method_order(runs, order)
        seeds = sorted({r["seed"] for r in runs})
        lines += [f"## Setting `{setting}` ({len(seeds)} seeds: {', '.join(map(str, seeds))})", ""]
        summary = summarize(runs, (*metrics, "train_seconds"), order)
        lines += _summary_table(summary, methods, metrics, len(seeds)) + [""]
        bounds = _bounds_table(summary, methods, metrics)
        if bounds:
            lines += [
                "Against the bounds: the mean as a share of the fully supervised ceiling's mean "
                f"(`{CEILING}`)"
                + (f", and its difference from the data-free floor's (`{FLOOR}`)" if FLOOR in methods else "")
                + ".",
                "",
                *bounds,
                "",
            ]
        learnt = _learnt_table(runs, methods)
        if learnt:
            lines += [
                "Where the classifier learnt the class: the runs whose validation AUC is at least "
                f"{LEARNT_MIN_VAL_AUC:g} (read on validation; below it a run has not learnt the class), "
                "and the test figures over those runs alone.",
                "",
                *learnt,
                "",
            ]
        for ref in [reference] if isinstance(reference, str) else list(reference):
            if ref not in methods:
                lines += [f"(`{ref}` was not run in this setting: no paired test.)", ""]
                continue
            tests = paired_tests(runs, ref, [m for m in PAIRED_METRICS if m in metrics] or list(metrics))
            lines += [
                f"### Paired t-test: `{ref}` minus each method, runs paired by seed",
                "",
                "Two-sided paired t-test (scipy.stats.ttest_rel) on the per-seed differences; "
                "95 % t-interval of the mean difference; verdict `better`/`worse` only when p < 0.05. "
                f"With {len(seeds)} seeds the test has low power: no significant difference is not evidence "
                "of equality. Not corrected for multiple comparisons.",
                "",
            ]
            lines += _paired_table(tests, ref) + [""]
        lines += ["### Hyperparameters", ""] + _hyper_lines(runs, methods) + [""]
    return "\n".join(lines)


def write_results(
    bench_dir: str | os.PathLike,
    records: Sequence[dict] | None = None,
    reference: str | Sequence[str] = "sfs2",
    metrics: Sequence[str] = DEFAULT_METRICS,
    order: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``<bench_dir>/results.csv`` and ``<bench_dir>/results.md`` atomically.

    ``results.csv`` has one row per run: setting, method, seed, each metric, train_seconds (NaN as an empty
    cell). ``results.md`` has, per setting, the method x metric table of "mean ± std" (best mean in bold), the
    paired tests of ``reference`` against each method (:data:`PAIRED_METRICS` among ``metrics``) and the
    hyperparameters chosen per method. The output does not depend on the order of ``records``, as long as
    every method is in ``order`` (default :data:`DEFAULT_METHOD_ORDER`; the others follow by first
    appearance): settings ``default`` first then by name, methods in that order, runs by seed.

    Args:
        bench_dir: the benchmark folder (records are read from it when ``records`` is None).
        records: run records (:func:`collect_results`).
        reference: the method of the paired tests, or several (one paired-test table each).
        metrics: the test metrics, in column order.
        order: method order of the tables (:func:`method_order`).

    Returns:
        ``(csv_path, md_path)``.

    Raises:
        ValueError: there is no finished run.
    """
    bench_dir = Path(bench_dir)
    records = collect_results(bench_dir) if records is None else list(records)
    if not records:
        raise ValueError(f"bench_dir {str(bench_dir)!r}: no finished run (no runs/*/*/seed*/result.json).")
    records = _ordered(records, order)
    # both texts are built before anything is written: an error leaves the previous files in place
    csv_text = _csv_text(records, metrics)
    md_text = _markdown(records, metrics, reference, order)
    csv_path = atomic_write_text(bench_dir / "results.csv", csv_text)
    md_path = atomic_write_text(bench_dir / "results.md", md_text)
    return csv_path, md_path


#: columns of the ablation table: (split, metric)
ABLATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val", "MaxBoxAccV2"),
    ("val", "Dice"),
    ("val", "accuracy"),
    ("test", "MaxBoxAccV2"),
    ("test", "BoxAccV2@val_tau"),
    ("test", "Dice"),
    ("test", "accuracy"),
)


def write_ablation(
    bench_dir: str | os.PathLike, baseline: str = "cam", records: Sequence[dict] | None = None
) -> Path:
    """Write ``<bench_dir>/ablation.md``: per variant, validation figures (what a choice may use) next to
    test.

    Mean over the variant's seeds; the last column is the validation MaxBoxAccV2 minus ``baseline``'s.
    Variants are listed in run order; their options are read from the runs' ``hyperparameters``.
    """
    bench_dir = Path(bench_dir)
    records = collect_results(bench_dir) if records is None else list(records)
    if not records:
        raise ValueError(f"bench_dir {str(bench_dir)!r}: no finished run.")
    lines = [
        "# Ablation",
        "",
        "Mean over seeds. `val`: validation split (the figures any choice is made on); `test`: test split, "
        "reported only. Box accuracies, accuracy in percent; Dice in 0..1. The last column is the validation "
        f"MaxBoxAccV2 minus `{baseline}`'s.",
        "",
    ]

    def mean(runs: list[dict], split: str, metric: str) -> float:
        vals = [float(r[split].get(metric, math.nan)) for r in runs]
        finite = [v for v in vals if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else math.nan

    for setting in _settings(records):
        runs = [r for r in records if r["setting"] == setting]
        methods = method_order(runs, None)
        base_runs = [r for r in runs if r["method"] == baseline]
        base = mean(base_runs, "val", "MaxBoxAccV2") if base_runs else math.nan
        rows = []
        for method in methods:
            mine = [r for r in runs if r["method"] == method]
            options = json.dumps(mine[0]["hyperparameters"].get("options", {}), sort_keys=True)
            cells = [_fmt(mean(mine, split, m), _decimals(m)) for split, m in ABLATION_COLUMNS]
            delta = mean(mine, "val", "MaxBoxAccV2") - base
            rows.append([method, f"`{options}`", str(len(mine)), *cells, _fmt(delta, 2)])
        header = [
            "variant",
            "options",
            "seeds",
            *[f"{s} {m}" for s, m in ABLATION_COLUMNS],
            "Δ val MaxBoxAccV2",
        ]
        lines += [f"## Setting `{setting}`", ""] + _md_table(header, rows) + [""]
    return atomic_write_text(bench_dir / "ablation.md", "\n".join(lines))


#: the README's compact table: the protocol's box figure, the honest (validation-chosen) box and mask figures,
#: the threshold-free mask figure and the classification
README_METRICS: tuple[str, ...] = (
    "MaxBoxAccV2",
    "BoxAccV2@val_tau",
    "Dice",
    "Dice@val_tau",
    "PxAP",
    "accuracy",
    "accuracy@val_threshold",
    "AUC",
)


def readme_table(
    records: Sequence[dict],
    setting: str = "default",
    metrics: Sequence[str] = README_METRICS,
    order: Sequence[str] | None = None,
) -> str:
    """The README's results table of one setting: "mean ± std" per method (bounds marked, the seeds named
    where a method has fewer runs than the most), then each WSOL method's MaxBoxAccV2 / Dice / PxAP as a share
    of the ceiling's. Built from the same records as ``results.md``, so the README is regenerated from
    them."""
    runs = [r for r in records if r["setting"] == setting]
    if not runs:
        raise ValueError(f"readme_table: no finished run of setting {setting!r}.")
    methods = method_order(runs, order)
    summary = [s for s in summarize(runs, metrics, order) if s["setting"] == setting]
    cell = {(s["method"], s["metric"]): s for s in summary}
    seeds = {m: sorted({int(r["seed"]) for r in runs if r["method"] == m}) for m in methods}
    most = max(len(v) for v in seeds.values())
    bound = {CEILING: "ceiling", FLOOR: "floor"}
    rows = []
    for method in [m for m in methods if m not in (CEILING, FLOOR)] + [
        m for m in (FLOOR, CEILING) if m in methods
    ]:
        notes = [bound[method]] if method in bound else []
        if len(seeds[method]) != most:
            notes.append(f"seeds {_seed_list(seeds[method])}")
        row = [f"{method} ({'; '.join(notes)})" if notes else method]
        for metric in metrics:
            s, d = cell[method, metric], _decimals(metric)
            row.append("n/a" if s["n"] == 0 else f"{_fmt(s['mean'], d)} ± {_fmt(s['std'], d)}")
        rows.append(row)
    lines = _md_table(["method", *metrics], rows)
    bounds = _bounds_table(summary, methods, metrics)
    if bounds:
        lines += ["", "As a share of the ceiling (and lead over the floor):", "", *bounds]
    return "\n".join(lines) + "\n"


def records_from_csv(path: str | os.PathLike) -> list[dict]:
    """The run records of a ``results.csv`` (:func:`write_results`): setting, method, seed, the ``test``
    metrics (an empty cell is NaN) and ``train_seconds``; what :func:`summarize` and :func:`readme_table`
    read, without the run folders."""
    path = Path(path)
    records = []
    with path.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                seed = int(row.pop("seed"))
                setting, method = row.pop("setting"), row.pop("method")
                values = {k: float(v) if v else math.nan for k, v in row.items()}
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}, line {i}: not a results.csv row ({e}).") from e
            seconds = values.pop("train_seconds", math.nan)
            records.append(
                {"setting": setting, "method": method, "seed": seed, "test": values, "train_seconds": seconds}
            )
    return records


def _seed_list(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def replace_marked_section(text: str, marker: str, content: str) -> str:
    """``text`` with what lies between ``<!-- <marker> -->`` and ``<!-- /<marker> -->`` replaced by
    ``content`` (the markers kept); a text without both markers, in that order, raises ``ValueError``."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"replace_marked_section: the text has no '{start}' ... '{end}' section.")
    return text[: i + len(start)] + "\n" + content.rstrip("\n") + "\n" + text[j:]


def emit_table(table: str, out: str | os.PathLike | None = None) -> str:
    """Print a markdown table (what the scripts under ``benchmarks/`` report) and, with ``out``, write it
    there atomically; returns it."""
    print(table)
    if out:
        atomic_write_text(out, table)
    return table
