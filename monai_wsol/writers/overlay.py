"""Overlay PNGs a person can look at: the image, the CAM blended on it, the mask contour and the boxes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["overlay_slice", "write_overlay_png"]


def overlay_slice(
    image: np.ndarray, cam: np.ndarray, mask: np.ndarray, axis: int = -1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """The 2D view of one image: the arrays themselves in 2D; in 3D the slice along ``axis`` where the CAM
    peaks (returned as the fourth item, ``None`` in 2D).

    Args:
        image, cam, mask: arrays of the same spatial shape (2D or 3D), on the input grid.
        axis: the slicing axis of 3D arrays.
    """
    image, cam, mask = np.asarray(image), np.asarray(cam), np.asarray(mask)
    if not image.shape == cam.shape == mask.shape:
        raise ValueError(
            f"overlay: image, CAM and mask must share a shape, got {image.shape}, {cam.shape}, {mask.shape}."
        )
    if image.ndim == 2:
        return image, cam, mask, None
    if image.ndim != 3:
        raise ValueError(f"overlay: expected 2D or 3D arrays, got shape {image.shape}.")
    axis = axis % 3
    profile = cam.max(axis=tuple(a for a in range(3) if a != axis))
    index = int(np.argmax(profile))
    take = [slice(None)] * 3
    take[axis] = index
    return image[tuple(take)], cam[tuple(take)], mask[tuple(take)], index


def write_overlay_png(
    path: str | os.PathLike,
    image: np.ndarray,
    cam: np.ndarray,
    mask: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]] = (),
    title: str = "",
    alpha: float = 0.45,
    dpi: int = 100,
) -> Path:
    """Write a two-panel PNG (left: the image with the mask contour and boxes; right: the CAM blended on the
    image) to a temporary name, then rename it.

    Args:
        path: the PNG to write.
        image: (H, W) intensities, any range (shown between its 1st and 99th percentiles).
        cam: (H, W) CAM in [0, 1] on the image grid.
        mask: (H, W) binary mask.
        boxes: (N, 4) boxes in MONAI ``StandardMode`` voxel coordinates ``[row0, col0, row1, col1)`` of the
            array's first and second axes; drawn around the pixel centres they cover.
        title: the figure's title (e.g. the predicted class and its probability).
        alpha: the CAM's opacity.
        dpi: resolution.

    Rows are drawn top to bottom and columns left to right, as the array is stored (no reorientation).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image, cam, mask = (np.asarray(a, dtype=np.float32) for a in (image, cam, mask))
    if image.ndim != 2 or image.shape != cam.shape or image.shape != mask.shape:
        raise ValueError(
            f"write_overlay_png: image, CAM and mask must be 2D of one shape, got {image.shape}, "
            f"{cam.shape}, {mask.shape}."
        )
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = image[np.isfinite(image)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    shown = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4), dpi=dpi)
    try:
        for ax in axes:
            ax.imshow(shown, cmap="gray", interpolation="nearest")
            ax.set_axis_off()
        axes[1].imshow(np.clip(cam, 0.0, 1.0), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        axes[0].set_title("mask and boxes", fontsize=9)
        axes[1].set_title("CAM", fontsize=9)
        binary = mask > 0.5
        if binary.any() and not binary.all():  # a constant mask has no contour
            axes[0].contour(binary.astype(np.float32), levels=[0.5], colors="yellow", linewidths=1.0)
        for r0, c0, r1, c1 in boxes:
            axes[0].add_patch(
                Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="lime", lw=1.2)
            )
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path
