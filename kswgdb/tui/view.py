"""Snapshot -> text: what each part of the screen says, as pure functions.

Kept apart from the widgets so the wording can be tested without a terminal
and reused by anything else that shows a live session.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text

from kswgdb.poll.config import format_interval
from kswgdb.poll.poller import PollHit
from kswgdb.qemu.accel import AccelDecision
from kswgdb.render.hit import value
from kswgdb.run.livestate import EXITED, FAILED, FROZEN, RUNNING, PollRow, Snapshot, WatchRow
from kswgdb.watch.hits import Hit

STATE_STYLE = {RUNNING: "bold green", FROZEN: "bold yellow", EXITED: "bold blue",
               FAILED: "bold red"}

WATCH_COLUMNS = (("#", "index"), ("config", "config"), ("calls", "calls"), ("armed", "armed"),
                 ("not armed", "not_armed"), ("live", "live"), ("hits", "hits"),
                 ("watching", "what"))
POLL_COLUMNS = (("#", "id"), ("poll", "config"), ("memory", "memory"),
                ("interval achieved", "interval"), ("samples", "samples"), ("hits", "hits"))
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
    polls = sum(1 for p in snap.polls if not p.removed)
    hits = snap.hit_count + snap.poll_hit_count
    text.append(f"   {active} watch(es), {polls} poll(s), ")
    text.append(f"{hits} hit(s)", style="bold red" if hits else "")
    if log is not None:
        text.append(f"   log {log}", style="dim")
    if snap.state == FROZEN and snap.vmcore is not None:
        inspect = snap.inspect or f"gdb {symbols} {snap.vmcore}"
        text.append(f"\nvmcore {snap.vmcore}   inspect: {inspect}", style="yellow")
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


def poll_cells(row: PollRow) -> dict[str, str | Text]:
    """One poll-table row: what is sampled, from which memory, how often it really was."""
    style = "dim strike" if row.removed else ""
    state = " (removed)" if row.removed else " (done)" if row.done else ""
    memory = ("DRAM" if row.kind == "dram" else "MMIO, pauses the guest") + f" ({row.label})"
    interval = format_interval(row.median_interval) if row.median_interval else "-"
    errors = f" ({row.errors} failed)" if row.errors else ""
    return {
        "id": Text(f"P{row.id}", style=style),
        "config": Text(row.config + state, style=style),
        "memory": memory, "interval": interval, "samples": f"{row.samples}{errors}",
        "hits": Text(str(row.hits), style="bold red" if row.hits else ""),
    }


def poll_hit_cells(hit: PollHit) -> dict[str, str | Text]:
    """A poll hit in the hit list: no writer is known, only what changed where."""
    stamp = time.strftime("%H:%M:%S", time.localtime(hit.wall_time))
    return {
        "seq": f"P{hit.seq}",
        "time": f"{stamp}.{int(hit.wall_time % 1 * 1000):03d}",
        "writer": Text(f"poll #{hit.poll_id} ({hit.kind.upper()})", style="bold magenta"),
        "victim": f"pa {hit.addr:#x} ({hit.label})",
        "change": f"{value(hit.old)} -> {value(hit.new)}",
    }
