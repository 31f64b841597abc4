"""Regenerate the README's benchmark table from a committed ``results.csv``: the section between
``<!-- benchmark-table -->`` and ``<!-- /benchmark-table -->`` becomes
:func:`monai_wsol.benchmark.report.readme_table` of the chosen setting. Run::

    python benchmarks/readme_results.py --results benchmarks/results/results.csv --readme README.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_wsol.benchmark.report import readme_table, records_from_csv, replace_marked_section
from monai_wsol.io_utils import atomic_write_text


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a results.csv written by the benchmark's report")
    parser.add_argument("--readme", required=True)
    parser.add_argument("--setting", default="default")
    parser.add_argument("--marker", default="benchmark-table")
    args = parser.parse_args(argv)
    table = readme_table(records_from_csv(args.results), args.setting)
    readme = Path(args.readme)
    atomic_write_text(readme, replace_marked_section(readme.read_text(), args.marker, table))
    print(table)
    return table


if __name__ == "__main__":
    main()
