"""What a live session says and hears: its commands and its snapshots.

Kept apart from the driver (`kswgdb.run.live`) so a screen, a test or a
future command kind can use these shapes without the machinery behind them.
A command is a frozen dataclass; the driver maps its type to a handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kswgdb.poll.config import PollSpec
from kswgdb.poll.live import PollRow  # noqa: F401 - part of a Snapshot
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.watch.resolve import ResolvedWatch
from kswgdb.watch.spec import ArmSpec

# Guest states as a screen shows them.
STARTING, RUNNING, FROZEN, EXITED, FAILED, CLOSED = (
    "starting", "running", "frozen", "exited", "failed", "closed")


@dataclass(frozen=True)
class AddWatch:
    """Arm one more config (already resolved against the kernel's symbols)."""

    resolved: ResolvedWatch | None
    spec: ArmSpec


@dataclass(frozen=True)
class RemoveWatch:
    index: int


@dataclass(frozen=True)
class AddPoll:
    """Start one more physical-memory poll (already parsed; see `LiveSession.add_poll`)."""

    spec: PollSpec


@dataclass(frozen=True)
class RemovePoll:
    poll_id: int


@dataclass(frozen=True)
class Freeze:
    """Keep the guest stopped and dump a vmcore of this moment."""


@dataclass(frozen=True)
class Continue:
    """Let a frozen guest run again."""


@dataclass(frozen=True)
class Quit:
    """Stop the worker; the machine is closed on the way out."""


# ------------------------------------------------------------------ snapshots
@dataclass(frozen=True)
class WatchRow:
    """One watch config as a table row: what it watches and what it has seen."""

    index: int
    config: str
    what: str
    active: bool
    calls: int = 0
    armed: int = 0
    not_armed: int = 0
    not_armed_why: str = ""
    not_armed_counts: tuple[tuple[str, int], ...] = ()   # (WatchStats field, count)
    live: int = 0
    returns: int = 0
    hits: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Everything a screen shows except the hits and the console (read those apart)."""

    state: str
    detail: str = ""
    watches: tuple[WatchRow, ...] = ()
    hit_count: int = 0
    vmcore: Path | None = None
    inspect: str = ""                   # the command that opens the vmcore ("": gdb's)
    guest_exit: GuestExit | None = None
    notice: str = ""
    notice_seq: int = 0
    error: str = ""
    polls: tuple[PollRow, ...] = ()
    poll_hit_count: int = 0


NOT_ARMED_WORDS = (("skipped_depth", "depth"), ("refused_pool", "no slot"),
                    ("refused_check", "no canary"), ("refused_stub", "stub refused"),
                    ("refused_below_sp", "below SP"), ("refused_max_watch", "mw full"))
