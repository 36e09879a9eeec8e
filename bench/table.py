"""The benchmarks' result table: one row per measurement, median, min and max."""

from __future__ import annotations

import statistics


def print_medians(title: str, note: str, rows: dict[str, list[float]], width: int = 36,
                  digits: int = 2) -> None:
    """Print ``title``, the column heads and ``note``, then each non-empty row."""
    print(f"{title:<{width}} {'median s':>9} {'min s':>7} {'max s':>7}   ({note})")
    for label, values in rows.items():
        if values:
            print(f"{label:<{width}} {statistics.median(values):9.{digits}f} "
                  f"{min(values):7.{digits}f} {max(values):7.{digits}f}")
