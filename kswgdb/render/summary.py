"""The end-of-run table: what was watched, how often, and what could not be.

"Never silently lose a watch": every call that reached a probe is accounted
for here, armed or not and why, so a user can trust a zero in the hits column.
"""

from __future__ import annotations

from rich.table import Table

COLUMNS = (
    ("calls", "calls"), ("armed", "armed"), ("not armed", "not_armed"),
    ("depth skip", "skipped_depth"), ("no slot", "refused_pool"),
    ("no canary", "refused_check"), ("stub refused", "refused_stub"),
    ("loop re-fires", "reentries"), ("returns", "returns"), ("stale", "stale"),
    ("hits", "hits"),
)


def render_summary(rows: list[dict], title: str = "watch summary") -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("config", overflow="fold", max_width=40)
    for header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        cells = [str(row[key]) for _, key in COLUMNS]
        if row["hits"]:
            cells[-1] = f"[bold red]{cells[-1]}"
        if row["not_armed"] - row["skipped_depth"]:
            cells[2] = f"[yellow]{cells[2]}"
        table.add_row(row["config"], *cells)
    return table
