"""The benchmark: methods x seeds x settings, results tables with paired tests, and figures.

- ``report``: collect the runs' ``result.json``, summarise (mean ± std), paired t-tests,
  ``results.csv``/``.md``.
- ``figures``: accuracy-versus-tau curves and the grid of test images under every method (matplotlib, lazily).
"""

from monai_wsol.benchmark.figures import plot_example_grid, plot_threshold_curves
from monai_wsol.benchmark.report import (
    DEFAULT_METHOD_ORDER,
    DEFAULT_METRICS,
    PAIRED_METRICS,
    collect_results,
    method_order,
    paired_tests,
    summarize,
    write_results,
)

__all__ = [
    "DEFAULT_METHOD_ORDER",
    "DEFAULT_METRICS",
    "PAIRED_METRICS",
    "collect_results",
    "method_order",
    "paired_tests",
    "summarize",
    "write_results",
    "plot_threshold_curves",
    "plot_example_grid",
]
