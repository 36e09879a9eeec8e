"""The end-of-run table: what was watched, how often, and what could not be.

"Never silently lose a watch": every call that reached a probe is accounted
for, armed or not and why, so a user can trust a zero in the hits column.
Kept narrow (one row per config, reasons folded into one cell) so it reads in
an 80-column terminal and in CI logs.
"""

from __future__ import annotations

from rich.table import Table

#: Why a call went unwatched, as the summary spells it.
NOT_ARMED = (("skipped_depth", "depth"), ("refused_pool", "no slot"),
             ("refused_check", "no canary"), ("refused_stub", "stub refused"),
             ("refused_below_sp", "below SP"), ("refused_max_watch", "mw full"))


def render_summary(rows: list[dict], title: str = "watch summary") -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("config", overflow="fold", ratio=3)
    table.add_column("calls", justify="right")
    table.add_column("armed", justify="right")
    table.add_column("not armed (why)", overflow="fold", ratio=2)
    table.add_column("returns", justify="right")
    table.add_column("hits", justify="right")
    for row in rows:
        reasons = ", ".join(f"{row[key]} {word}" for key, word in NOT_ARMED if row.get(key))
        not_armed = f"{row['not_armed']}" + (f" ({reasons})" if reasons else "")
        if row["not_armed"] - row["skipped_depth"]:
            not_armed = f"[yellow]{not_armed}"
        hits = f"[bold red]{row['hits']}" if row["hits"] else "0"
        if row.get("unchanged_hits"):
            hits += f" ({row['unchanged_hits']} unchanged)"
        if row.get("rep_repeats"):
            hits += f" (+{row['rep_repeats']} rep)"
        if row.get("filtered_reports"):
            hits += f" ({row['filtered_reports']} stub reports dropped)"
        table.add_row(row["config"], str(row["calls"]), str(row["armed"]), not_armed,
                      str(row["returns"]), hits)
    return table
