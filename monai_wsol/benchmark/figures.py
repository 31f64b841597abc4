"""Benchmark figures: accuracy-versus-threshold curves, a grid of the same test images under every method, and
the distributions of the maps' shapes on their lesions (:func:`plot_map_shapes`).

The curves and the grid read a benchmark folder written by the runner
(``<bench_dir>/runs/<setting>/<method>/seed<k>/``):

- :func:`plot_threshold_curves` uses each run's ``curves.npz`` (``thresholds`` (T,), ``boxacc`` (3, T) in
  percent at IoU 0.3/0.5/0.7, optional ``dice`` (T,));
- :func:`plot_orthogonal_slices` draws volumes (3D runs): three orthogonal planes through each lesion, the CAM
  over the image with the ground-truth and predicted mask contours;
- :func:`plot_example_grid` uses ``examples.npz`` (``images``, ``cams`` (N, H, W) in [0, 1], ``gt_masks`` (N,
  H, W) bool, ``gt_boxes``/``pred_boxes`` per image (k, 4) ``[x0, y0, x1, y1]`` in the WSOL protocol's
  convention (``monai_wsol.boxes``: x = column, y = row, ends at start + extent),
  ``tau``, ``image_ids`` (N,)).

matplotlib (the ``viz`` extra) is imported lazily; figures are drawn on an Agg canvas (no display, no pyplot
global state) at a fixed size (``figsize`` x ``dpi`` pixels, no tight bounding box) and saved atomically: a
failure while drawing or saving leaves any previous file untouched and no partial file behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_wsol.benchmark.report import collect_results, method_order
from monai_wsol.boxes import Boxes
from monai_wsol.io_utils import atomic_path
from monai_wsol.metrics.map_shapes import MAP_SHAPE_KEYS

__all__ = [
    "plot_threshold_curves",
    "plot_example_grid",
    "plot_orthogonal_slices",
    "plot_map_shapes",
    "orthogonal_planes",
    "CURVE_IOUS",
]

#: IoU thresholds of the rows of ``curves.npz``'s ``boxacc``.
CURVE_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)
GT_COLOR, PRED_COLOR, PRED_CONTOUR_COLOR = "lime", "red", "white"


def _new_figure(figsize: tuple[float, float], dpi: int) -> Any:
    """A matplotlib Figure attached to an Agg canvas (not managed by pyplot, so never shown, never leaked)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "monai_wsol.benchmark.figures needs matplotlib: "
            "pip install 'monai_wsol[viz]' (or matplotlib>=3.7)."
        ) from e
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_path: str | os.PathLike) -> Path:
    """Save ``fig`` to a temporary file beside ``out_path`` and rename it over ``out_path``."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"out_path {str(out_path)!r} needs an image suffix (.png, .pdf, .svg).")
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=fig.dpi)
    return out_path


def _setting_runs(bench_dir: str | os.PathLike, setting: str) -> list[dict]:
    runs = [r for r in collect_results(bench_dir) if r["setting"] == setting]
    if not runs:
        raise ValueError(f"setting {setting!r}: no finished run under {str(bench_dir)!r}/runs/{setting}.")
    return runs


def _load_npz(path: Path, keys: Sequence[str], pickled: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of ``path``; only ``pickled`` keys (object arrays of boxes) may be unpickled.

    These files are the runner's own outputs; unpickling is still limited to the keys that need it.
    """
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing} (has {data.files}).")
        out = {k: data[k] for k in keys if k not in pickled}
    if pickled:
        with np.load(path, allow_pickle=True) as data:
            out.update({k: data[k] for k in pickled})
    return out


def _validation_tau(rec: dict) -> float:
    """The run's threshold chosen on validation: ``val["tau"]``, else ``hyperparameters["tau"]``, else NaN."""
    for value in (rec["val"].get("tau"), rec["hyperparameters"].get("tau"), rec.get("tau")):
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return math.nan


def _method_curves(runs: list[dict], curve: str, row: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds (T,) and the per-seed curves (S, T) of one method's runs.

    Runs without the curve are skipped.
    """
    thresholds, stack = None, []
    for rec in runs:
        path = Path(rec["run_dir"]) / "curves.npz"
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as data:
            if curve not in data.files:
                continue
            t, y = np.asarray(data["thresholds"], dtype=np.float64), np.asarray(data[curve], dtype=np.float64)
        y = y[row] if row is not None else y
        if t.ndim != 1 or y.shape != t.shape:
            raise ValueError(f"{path}: {curve!r} (row {row}) has shape {y.shape}, thresholds {t.shape}.")
        if thresholds is not None and not np.array_equal(t, thresholds):
            raise ValueError(f"{path}: thresholds differ from the other seeds of {rec['method']!r}.")
        thresholds = t
        stack.append(y)
    if thresholds is None:
        return np.zeros(0), np.zeros((0, 0))
    return thresholds, np.stack(stack)


def plot_threshold_curves(
    bench_dir: str | os.PathLike,
    setting: str,
    out_path: str | os.PathLike,
    iou: float = 0.5,
    curve: str = "boxacc",
    methods: Sequence[str] | None = None,
    figsize: tuple[float, float] = (6.4, 4.0),
    dpi: int = 150,
) -> Path:
    """Test accuracy versus CAM threshold tau, one line per method (mean over seeds, std shaded).

    A marker on each line shows the method's mean validation tau (the threshold used for the reported
    ``BoxAccV2@val_tau``/``Top-1 Loc``), when the runs recorded it (``val["tau"]`` or
    ``hyperparameters["tau"]`` of ``result.json``).

    Args:
        bench_dir: the benchmark folder.
        setting: the setting to plot (``"default"``, ``"distractor"``, ...).
        out_path: the image file; its suffix gives the format.
        iou: the IoU threshold of the BoxAcc curve, one of :data:`CURVE_IOUS` (ignored for ``curve="dice"``).
        curve: ``"boxacc"`` (BoxAcc-v2, percent) or ``"dice"`` (mean Dice on lesion images).
        methods: methods to plot, in legend order (default: every method with curves).
        figsize: inches; the image is ``figsize * dpi`` pixels.
        dpi: resolution.

    Returns:
        ``Path(out_path)``.

    Raises:
        ValueError: unknown ``iou``/``curve``, no run of the setting, no curves, or inconsistent
            ``curves.npz``.
    """
    if curve not in ("boxacc", "dice"):
        raise ValueError(f"curve must be 'boxacc' or 'dice', got {curve!r}.")
    matches = [i for i, d in enumerate(CURVE_IOUS) if math.isclose(d, iou)]
    if curve == "boxacc" and not matches:
        raise ValueError(f"iou must be one of {CURVE_IOUS} (the rows of curves.npz 'boxacc'), got {iou!r}.")
    row = matches[0] if curve == "boxacc" else None
    runs = _setting_runs(bench_dir, setting)
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    present = method_order(runs)
    unknown = [m for m in methods or () if m not in present]
    if unknown:
        raise ValueError(f"methods: {unknown} have no run in setting {setting!r} (found {present}).")
    plotted = 0
    for method in present if methods is None else methods:
        mine = [r for r in runs if r["method"] == method]
        thresholds, ys = _method_curves(mine, curve, row)
        if not len(ys):
            continue
        mean = ys.mean(axis=0)
        (line,) = ax.plot(thresholds, mean, lw=1.5, label=f"{method} (n={len(ys)})")
        if len(ys) > 1:
            std = ys.std(axis=0, ddof=1)
            ax.fill_between(thresholds, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        taus = [t for t in map(_validation_tau, mine) if math.isfinite(t)]
        if taus:
            tau = float(np.mean(taus))
            ax.plot(
                [tau], [np.interp(tau, thresholds, mean)], marker="|", ms=14, mew=2, color=line.get_color()
            )
        plotted += 1
    if not plotted:
        raise ValueError(f"setting {setting!r}: no run has a {curve!r} curve in curves.npz.")
    ylabel = f"BoxAcc-v2 at IoU {iou:g} (%)" if curve == "boxacc" else "mean Dice (lesion images)"
    ax.set(xlabel="CAM threshold tau", ylabel=ylabel, xlim=(0, 1), title=f"{setting}: test {ylabel} vs tau")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="| = mean validation tau", title_fontsize="x-small")
    fig.tight_layout()
    return _save(fig, out_path)


def _boxes_per_image(boxes: np.ndarray, n: int, path: Path, key: str) -> list[np.ndarray]:
    """``boxes`` as a list of n (k, 4) int arrays; accepts an object array of (k, 4) arrays or a flat (M, 5)
    int array ``[image_index, x0, y0, x1, y1]`` (pickle-free)."""
    if boxes.dtype == object:
        per = [np.asarray(b, dtype=np.int64).reshape(-1, 4) for b in boxes]
    elif boxes.ndim == 2 and boxes.shape[1] == 5:
        per = [boxes[boxes[:, 0] == i, 1:].astype(np.int64) for i in range(n)]
    else:
        raise ValueError(
            f"{path}: {key!r} must be an object array of (k, 4) boxes or (M, 5), got {boxes.shape}."
        )
    if len(per) != n:
        raise ValueError(f"{path}: {key!r} has boxes for {len(per)} images, expected {n}.")
    return per


def _load_examples(path: Path) -> dict[str, Any]:
    keys = ("images", "cams", "gt_masks", "gt_boxes", "pred_boxes", "tau", "image_ids")
    ex = _load_npz(path, keys, pickled=("gt_boxes", "pred_boxes"))
    shape = ex["images"].shape
    if len(shape) != 3 or ex["cams"].shape != shape or ex["gt_masks"].shape != shape:
        raise ValueError(
            f"{path}: images, cams and gt_masks must share one (N, H, W) shape, got {shape}, "
            f"{ex['cams'].shape}, {ex['gt_masks'].shape}."
        )
    n = shape[0]
    for key in ("gt_boxes", "pred_boxes"):
        ex[key] = _boxes_per_image(ex[key], n, path, key)
    ex["image_ids"] = [str(i) for i in ex["image_ids"]]
    ex["tau"] = float(ex["tau"])
    return ex


def _draw_boxes(ax: Any, boxes: np.ndarray, color: str) -> None:
    """Protocol-convention ``[x0, y0, x1, y1]`` boxes, drawn from their StandardMode form
    ``[row0, col0, row1, col1)``: the rectangle covers the pixel centres ``col0 .. col1 - 1``, so its edges
        sit
    half a pixel outside them."""
    from matplotlib.patches import Rectangle

    for r0, c0, r1, c1 in Boxes.protocol(boxes, 2).to_standard().coords:
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec=color, lw=1.2))


def _draw_contour(ax: Any, mask: np.ndarray, color: str) -> None:
    # a constant mask has no boundary (matplotlib would warn "no contour levels")
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=1.0)


def plot_example_grid(
    bench_dir: str | os.PathLike,
    setting: str,
    out_path: str | os.PathLike,
    methods: Sequence[str] | None = None,
    seed: int = 0,
    max_images: int = 6,
    cell_inches: float = 2.0,
    dpi: int = 100,
    alpha: float = 0.5,
) -> Path:
    """The same test images under every method: rows = images, columns = input then one per method.

    Column 0 shows the image with the ground-truth mask contour and boxes (green); each method's column shows
    its CAM (``jet``, transparency ``alpha``) over the image, the GT boxes (green), the predicted boxes (red)
    and the predicted mask contour (``cam >= tau``, white), all at the method's validation tau.

    Args:
        bench_dir: the benchmark folder.
        setting: the setting.
        out_path: the image file; its suffix gives the format.
        methods: the methods (columns), default every method of the setting with ``examples.npz`` for
            ``seed``.
        seed: the seed whose runs are shown.
        max_images: at most this many rows (the first images of ``examples.npz``).
        cell_inches: size of one panel; the image is ``(1 + len(methods)) x rows`` panels of
            ``cell_inches * dpi`` pixels.
        dpi: resolution.
        alpha: opacity of the CAM overlay.

    Returns:
        ``Path(out_path)``.

    Raises:
        ValueError: no examples, a requested method without ``examples.npz`` for ``seed``, methods whose image
            ids differ, or malformed arrays (the message names the file).
    """
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images!r}.")
    runs = {r["method"]: r for r in _setting_runs(bench_dir, setting) if r["seed"] == seed}
    paths = {m: Path(r["run_dir"]) / "examples.npz" for m, r in runs.items()}
    if methods is None:
        methods = [m for m in method_order(runs.values()) if paths[m].is_file()]
    missing = [m for m in methods if m not in paths or not paths[m].is_file()]
    if missing or not methods:
        raise ValueError(
            f"setting {setting!r}, seed {seed}: no examples.npz for method(s) {missing or 'any'}."
        )
    examples = {m: _load_examples(paths[m]) for m in methods}
    first = examples[methods[0]]
    for m in methods[1:]:
        if examples[m]["image_ids"] != first["image_ids"]:
            raise ValueError(
                f"{paths[m]}: image_ids {examples[m]['image_ids']} differ from {paths[methods[0]]} "
                f"{first['image_ids']}; the grid needs the same images for every method."
            )
    rows, cols = min(max_images, len(first["image_ids"])), 1 + len(methods)
    fig = _new_figure((cols * cell_inches, rows * cell_inches), dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        image, gt_mask = first["images"][i], first["gt_masks"][i].astype(bool)
        ax = axes[i, 0]
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        _draw_contour(ax, gt_mask, GT_COLOR)
        _draw_boxes(ax, first["gt_boxes"][i], GT_COLOR)
        ax.set_ylabel(first["image_ids"][i], fontsize="small")
        for j, m in enumerate(methods, start=1):
            ex, ax = examples[m], axes[i, j]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.imshow(ex["cams"][i], cmap="jet", vmin=0, vmax=1, alpha=alpha, interpolation="nearest")
            _draw_contour(ax, ex["cams"][i] >= ex["tau"], PRED_CONTOUR_COLOR)
            _draw_boxes(ax, ex["gt_boxes"][i], GT_COLOR)
            _draw_boxes(ax, ex["pred_boxes"][i], PRED_COLOR)
            if i == 0:
                ax.set_title(f"{m} (tau {ex['tau']:.2f})", fontsize="small")
    axes[0, 0].set_title("input + GT", fontsize="small")
    h, w = image.shape
    for ax in axes.flat:
        # fixed limits: the half-pixel-outside box edges stay visible and contours never rescale the panel
        ax.set(xticks=[], yticks=[], xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.94, wspace=0.03, hspace=0.03)
    return _save(fig, out_path)


def orthogonal_planes(volume: np.ndarray, centre: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three planes of an ``(X, Y, Z)`` volume through voxel ``centre``: ``(volume[:, :, z], volume[:, y,
    :], volume[x, :, :])`` (axial, coronal, sagittal for a RAS-ordered volume), each transposed so that its
    second axis runs across the picture."""
    x, y, z = (int(c) for c in centre)
    return volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T


def _centre(gt_mask: np.ndarray, cam: np.ndarray) -> tuple[int, ...]:
    """The lesion's centroid voxel, or the CAM's peak when the volume has no lesion."""
    if gt_mask.any():
        return tuple(int(round(c)) for c in np.argwhere(gt_mask).mean(0))
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(cam)), cam.shape))


def plot_orthogonal_slices(
    volumes: Sequence[dict[str, Any]],
    out_path: str | os.PathLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    cell_inches: float = 2.2,
    dpi: int = 100,
    alpha: float = 0.5,
) -> Path:
    """Orthogonal slices through a few volumes: rows = volumes, columns = the three planes through the
    lesion's centroid (the CAM's peak without a lesion); each shows the CAM (``jet``, ``alpha``) over the
    image, the ground-truth mask's contour (green) and the predicted mask's (``cam >= tau``, white).

    Args:
        volumes: dicts with ``image``, ``cam`` (in [0, 1]) and ``gt_mask``, ``(X, Y, Z)`` arrays of one shape,
            ``tau`` and an optional ``name`` (the row's label).
        out_path: the image file; its suffix gives the format.
        spacing: voxel size along X, Y, Z (mm), for the planes' aspect ratios.
        cell_inches, dpi, alpha: panel size, resolution, CAM opacity.

    Returns:
        ``Path(out_path)``.

    Raises:
        ValueError: no volume, or arrays that are not 3D of one shape (the message names the row).
    """
    if not volumes:
        raise ValueError("plot_orthogonal_slices: no volume given.")
    sx, sy, sz = (float(v) for v in spacing)
    fig = _new_figure((3 * cell_inches, len(volumes) * cell_inches), dpi)
    axes = fig.subplots(len(volumes), 3, squeeze=False)
    for i, item in enumerate(volumes):
        image, cam = np.asarray(item["image"], float), np.asarray(item["cam"], float)
        gt_mask = np.asarray(item["gt_mask"]) > 0
        if image.ndim != 3 or not image.shape == cam.shape == gt_mask.shape:
            raise ValueError(
                f"plot_orthogonal_slices: row {i} ({item.get('name', '')}): image, cam and gt_mask must be "
                f"3D of one shape, got {image.shape}, {cam.shape}, {gt_mask.shape}."
            )
        centre = _centre(gt_mask, cam)
        low, high = np.percentile(image, [1.0, 99.0])
        gray = np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image)
        planes = zip(
            orthogonal_planes(gray, centre),
            orthogonal_planes(cam, centre),
            orthogonal_planes(gt_mask, centre),
            (sy / sx, sz / sx, sz / sy),  # each plane's (row step / column step)
            ("axial", "coronal", "sagittal"),
            strict=True,
        )
        for j, (picture, heat, truth, aspect, title) in enumerate(planes):
            ax = axes[i, j]
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect)
            ax.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=alpha, origin="lower", aspect=aspect)
            _draw_contour(ax, truth, GT_COLOR)
            _draw_contour(ax, heat >= float(item["tau"]), PRED_CONTOUR_COLOR)
            ax.set(xticks=[], yticks=[])
            if i == 0:
                ax.set_title(title, fontsize="small")
        axes[i, 0].set_ylabel(str(item.get("name", f"volume {i}")), fontsize="small")
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.01, top=0.93, wspace=0.03, hspace=0.05)
    return _save(fig, out_path)


#: the map shape figures drawn on a log axis (ratios spanning orders of magnitude)
_LOG_SHAPE_KEYS = frozenset({"area_ratio"})


def plot_map_shapes(
    values: Mapping[str, np.ndarray],
    out_path: str | os.PathLike,
    keys: Sequence[str] = MAP_SHAPE_KEYS,
    title: str = "",
    cell_inches: tuple[float, float] = (2.4, 2.4),
    ncols: int = 4,
    dpi: int = 120,
) -> Path:
    """The shape of each method's maps on its lesions as distributions: one panel per map shape figure, one
    box per method (quartiles, whiskers at 1.5 IQR, no outlier marks; a dot at the mean).

    Args:
        values: ``{method: (N, len(keys))}``, one row per lesion image (the rows of
            :func:`monai_wsol.benchmark.shapes.map_shape_values`), in the boxes' order.
        out_path: the image file; its suffix gives the format.
        keys: the column names of ``values``' arrays (:data:`MAP_SHAPE_KEYS`); ``area_ratio`` is drawn on a
            log axis.
        title: the figure's title.
        cell_inches: one panel's (width, height); the image is ``ncols`` panels wide.
        ncols: panels per row.
        dpi: resolution.

    Returns:
        ``Path(out_path)``.

    Raises:
        ValueError: no method, or an array that is not ``(N, len(keys))``.
    """
    if not values:
        raise ValueError("plot_map_shapes: no method given.")
    arrays = {m: np.asarray(v, dtype=np.float64) for m, v in values.items()}
    for method, v in arrays.items():
        if v.ndim != 2 or v.shape[1] != len(keys):
            raise ValueError(f"plot_map_shapes: {method!r} has shape {v.shape}; expected (N, {len(keys)}).")
    nrows = math.ceil(len(keys) / ncols)
    fig = _new_figure((ncols * cell_inches[0], nrows * cell_inches[1]), dpi)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    names = list(arrays)
    for k, (ax, key) in enumerate(zip(axes, keys, strict=False)):
        columns = [v[:, k][np.isfinite(v[:, k])] for v in arrays.values()]
        ax.boxplot(columns, showfliers=False, widths=0.6)
        ax.plot(range(1, len(columns) + 1), [c.mean() if len(c) else np.nan for c in columns], "o", ms=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right", fontsize="x-small")
        ax.set_title(key, fontsize="small")
        ax.tick_params(axis="y", labelsize="x-small")
        if key in _LOG_SHAPE_KEYS:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    return _save(fig, out_path)
