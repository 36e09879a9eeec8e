"""The physical-memory polls of a live session: added, removed and read while the guest runs.

A poll is sampled by a host thread from the mapped RAM file (or through QEMU's
monitor for device memory), never by stopping the guest, and `Poller` is
thread-safe. So unlike a watch, adding or removing a poll needs no stop of the
guest: `LiveSession.add_poll` applies it from the caller's thread at once, and
the `AddPoll`/`RemovePoll` commands (for whoever drives the session through
its queue) do the same from the worker.

What this keeps that `Poller` does not: the rows of removed polls (a table
should still show what a removed poll saw), the hits in arrival order for
readers, and the freeze a poll asked for (``on-hit=freeze``), which the live
loop must honour by not resuming the guest until the user continues.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from kswgdb.errors import BadInput
from kswgdb.poll.config import PollSpec, parse_poll
from kswgdb.poll.poller import Poller, PollHit, PollStatus
from kswgdb.watch.hits import EventLog


@dataclass(frozen=True)
class PollRow:
    """One physical-memory poll as a table row (a removed poll keeps its last counts)."""

    id: int
    config: str
    kind: str                       # "dram" | "mmio"
    label: str                      # what the memory map calls the range
    samples: int = 0
    hits: int = 0
    errors: int = 0
    median_interval: float | None = None
    done: bool = False              # once=1 and it fired
    removed: bool = False



class LivePolls:
    """One session's polls; every method is safe from any thread."""

    def __init__(self) -> None:
        self.poller: Poller | None = None
        self.freeze = threading.Event()
        self._vmcores: list[Path] = []
        self._log: EventLog | None = None
        self._lock = threading.Lock()
        self._hits: list[PollHit] = []
        self._removed: dict[int, PollRow] = {}
        self._freezer: PollHit | None = None

    def attach(self, poller: Poller, freeze: threading.Event | None = None,
               vmcores: list[Path] | None = None, log: EventLog | None = None) -> None:
        """Use ``poller`` (whose ``on_hit`` must be `record`); ``freeze`` is shared with
        whoever stops the guest on a freeze hit (`PhysWatch` sets it before QMP ``stop``)."""
        self.poller = poller
        if freeze is not None:
            self.freeze = freeze
        if vmcores is not None:
            self._vmcores = vmcores
        self._log = log

    # ----------------------------------------------------------- the table
    def check(self, text: str) -> PollSpec:
        """Parse ``text`` and check its range against the memory map; `BadInput` changes nothing."""
        spec = parse_poll(text)
        poller = self.poller
        if poller is None:
            raise BadInput("polls start with the guest; the machine is not up")
        for status in poller.polls():
            if status.config == spec.canonical() and status.active:
                raise BadInput(f"already polling {status.config} (poll #{status.id})")
        poller.memory.source(spec.addr, spec.length)     # BadInput: outside memory, straddles
        return spec

    def add(self, spec: PollSpec) -> int:
        poller = self._require()
        poll_id = poller.add_poll(spec)
        if self._log is not None:
            self._log.write("poll-add", id=poll_id, config=spec.canonical())
        return poll_id

    def remove(self, poll_id: int) -> PollSpec:
        """Stop poll ``poll_id``; its row stays, marked removed. `BadInput` if no such poll."""
        poller = self._require()
        last = next((s for s in poller.polls() if s.id == poll_id), None)
        spec = poller.remove_poll(poll_id)
        if last is not None:
            with self._lock:
                self._removed[poll_id] = _row(last, removed=True)
        if self._log is not None:
            self._log.write("poll-remove", id=poll_id, config=spec.canonical())
        return spec

    def rows(self) -> tuple[PollRow, ...]:
        live = [_row(s) for s in self.poller.polls()] if self.poller is not None else []
        with self._lock:
            rows = live + list(self._removed.values())
        return tuple(sorted(rows, key=lambda r: r.id))

    def statuses(self) -> list[PollStatus]:
        return self.poller.polls() if self.poller is not None else []

    # ---------------------------------------------------------------- hits
    def record(self, hit: PollHit) -> None:
        """The poller's ``on_hit`` (poller thread): keep the hit, note a freeze."""
        with self._lock:
            self._hits.append(hit)
            if hit.action == "freeze":
                self._freezer = hit
        if hit.action == "freeze":
            self.freeze.set()

    def hits(self, since: int = 0) -> list[PollHit]:
        with self._lock:
            return self._hits[since:]

    def hit_count(self) -> int:
        with self._lock:
            return len(self._hits)

    # -------------------------------------------------------------- freeze
    def freeze_pending(self) -> bool:
        """True from a freeze hit until `thaw`: the guest must not be resumed."""
        return self.freeze.is_set()

    def freezer(self) -> PollHit | None:
        """The hit that froze the guest, once the poller has handed it over."""
        with self._lock:
            return self._freezer if self.freeze.is_set() else None

    def freeze_vmcore(self) -> Path | None:
        """The vmcore dumped for the pending freeze (None while it is being written)."""
        hit = self.freezer()
        return Path(hit.context.vmcore) if hit is not None and hit.context.vmcore else None

    def thaw(self) -> None:
        with self._lock:
            self._freezer = None
        self.freeze.clear()

    def _require(self) -> Poller:
        if self.poller is None:
            raise BadInput("polls start with the guest; the machine is not up")
        return self.poller


def _row(status: PollStatus, removed: bool = False) -> PollRow:
    return PollRow(id=status.id, config=status.config, kind=status.kind, label=status.label,
                   samples=status.samples, hits=status.hits, errors=status.errors,
                   median_interval=status.median_interval, done=not status.active,
                   removed=removed)
