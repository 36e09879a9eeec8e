"""Snapshot -> text: what each part of the screen says, as pure functions.

Kept apart from the widgets so the wording can be tested without a terminal
and reused by anything else that shows a live session.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text

from kswgdb.qemu.accel import AccelDecision
from kswgdb.render.hit import value
from kswgdb.watch.hits import Hit
from kswgdb.watch.livestate import EXITED, FAILED, FROZEN, RUNNING, Snapshot, WatchRow

STATE_STYLE = {RUNNING: "bold green", FROZEN: "bold yellow", EXITED: "bold blue",
               FAILED: "bold red"}

WATCH_COLUMNS = (("#", "index"), ("config", "config"), ("calls", "calls"), ("armed", "armed"),
                 ("not armed", "not_armed"), ("live", "live"), ("hits", "hits"),
                 ("watching", "what"))
HIT_COLUMNS = (("#", "seq"), ("time", "time"), ("writer", "writer"), ("victim", "victim"),
               ("old -> new", "change"))


def header(image: str, scenario: int | None, accel: AccelDecision | None, snap: Snapshot,
           symbols: Path | None, log: Path | None) -> Text:
    """Two or three lines: what is booted how, and what the guest is doing now."""
    text = Text()
    text.append("kswgdb ", style="bold")
    text.append(f"image {image}")
    if scenario is not None:
        text.append(f"  scenario {scenario}")
    if accel is not None:
        text.append(f"  accelerator {accel.accel}", style="bold")
        text.append(f" ({accel.reason})", style="dim")
    text.append("\nguest ")
    text.append(snap.state.upper(), style=STATE_STYLE.get(snap.state, "bold"))
    detail = snap.detail
    if snap.state == EXITED and snap.guest_exit is not None:
        detail = str(snap.guest_exit)
    if snap.state == FAILED and snap.error:
        detail = snap.error
    if detail:
        text.append(f" {detail}")
    active = sum(1 for w in snap.watches if w.active)
    text.append(f"   {active} watch(es), ")
    text.append(f"{snap.hit_count} hit(s)", style="bold red" if snap.hit_count else "")
    if log is not None:
        text.append(f"   log {log}", style="dim")
    if snap.state == FROZEN and snap.vmcore is not None:
        text.append(f"\nvmcore {snap.vmcore}   inspect: gdb {symbols} {snap.vmcore}",
                    style="yellow")
    return text


def watch_cells(row: WatchRow) -> dict[str, str | Text]:
    """One watch-table row, keyed by column key."""
    style = "" if row.active else "dim strike"
    not_armed = str(row.not_armed) + (f" ({row.not_armed_why})" if row.not_armed_why else "")
    return {
        "index": Text(str(row.index), style=style),
        "config": Text(row.config + ("" if row.active else " (removed)"), style=style),
        "what": Text(row.what, style=style),
        "calls": str(row.calls), "armed": str(row.armed), "not_armed": not_armed,
        "live": str(row.live),
        "hits": Text(str(row.hits), style="bold red" if row.hits else ""),
    }


def hit_cells(hit: Hit) -> dict[str, str | Text]:
    """One hit-list row: when, who wrote, whose frame, what changed."""
    stamp = time.strftime("%H:%M:%S", time.localtime(hit.wall_time))
    victim = f"{hit.watched_func} ({hit.owner})"
    return {
        "seq": str(hit.seq),
        "time": f"{stamp}.{int(hit.wall_time % 1 * 1000):03d}",
        "writer": Text(hit.writer.symbol, style="bold red"),
        "victim": victim,
        "change": f"{value(hit.old)} -> {value(hit.new)}",
    }
