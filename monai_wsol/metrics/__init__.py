"""The WSOL protocol's metrics (Choe et al., CVPR 2020), exact and fast, 2D and 3D, as MONAI metrics.

2D core (reference-exact, see ``docs/metrics.md``):

- :func:`boxes_from_scoremap` / :func:`boxes_from_scoremaps`: per-threshold boxes of score maps;
- :func:`box_iou_inclusive`, :func:`best_iou_curve`: pixel-inclusive IoU and best IoU per threshold;
- :class:`BoxAccuracyMetric`, :class:`MaxBoxAccMetric`, :class:`MaxBoxAccV2Metric`: BoxAcc curves, MaxBoxAcc,
  MaxBoxAccV2 (3D volumes dispatch to ``volume.boxes_from_scorevolume``);
- :class:`PxAPMetric`, :func:`pxap_histograms`, :func:`pxap_from_histograms`: pixel average precision.

3D, mask overlap, per-lesion detection, map shape, localization accuracy, threshold choice and ignite handlers
live in sibling modules (``volume``, ``mask_overlap``, ``detection``, ``map_shapes``, ``localization``,
``threshold``, ``handlers``);
their public names are re-exported here lazily so that importing this package stays cheap and does not
depend on all of them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .box_accuracy import (
    BoxAccuracyMetric,
    MaxBoxAccMetric,
    MaxBoxAccV2Metric,
    as_gt_boxes,
    best_iou_curve,
    box_iou_inclusive,
)
from .contours import (
    boxes_from_scoremap,
    boxes_from_scoremaps,
    distinct_level_boxes,
    distinct_level_boxes_modes,
    scoremap_best_iou_curves,
)
from .pxap import PxAPMetric, pxap_bin_edges, pxap_from_histograms, pxap_histograms

_SIBLINGS = ("volume", "mask_overlap", "detection", "map_shapes", "localization", "threshold", "handlers")

__all__ = [
    "BoxAccuracyMetric",
    "MaxBoxAccMetric",
    "MaxBoxAccV2Metric",
    "PxAPMetric",
    "as_gt_boxes",
    "best_iou_curve",
    "box_iou_inclusive",
    "boxes_from_scoremap",
    "boxes_from_scoremaps",
    "distinct_level_boxes",
    "distinct_level_boxes_modes",
    "pxap_bin_edges",
    "pxap_from_histograms",
    "pxap_histograms",
    "scoremap_best_iou_curves",
]


def __getattr__(name: str) -> Any:
    """Resolve a public name of a sibling module (e.g. ``boxes_from_scorevolume``) on first access."""
    for module_name in _SIBLINGS:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{module_name}":
                continue  # that sibling is not part of this installation
            raise
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
