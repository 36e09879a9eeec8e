"""The physical-memory poller: a host thread sampling guest memory, never the guest.

The in-kernel timer watchpoint samples every 30-100 ms because each sample
costs the guest a timer interrupt. Here a sample of DRAM is a memcpy from the
mapped RAM file, so the period can go down to microseconds (busy-waiting below
half a millisecond, sleeping above) without stopping a vCPU.

Thread-safety: `add_poll`, `remove_poll` and `polls` may be called from any
thread while the poller runs (the TUI's command queue does so); one lock guards
the table of polls, and a wake-up event makes a new poll take effect at once.
Hits are handed to ``on_hit`` from the poller thread.

What a hit can and cannot say: the change happened between the previous sample
and this one. The vCPU state captured on a hit is what each vCPU was running
*when the change was seen*: a window, not the writing instruction (DMA has no
writing instruction at all). A CPU write watchpoint names the writer exactly.
"""

from __future__ import annotations

import collections
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kswgdb.errors import BadInput
from kswgdb.poll.config import PollSpec, parse_poll
from kswgdb.poll.physmem import PhysMemory, Source
from kswgdb.watch.hits import value_fields

log = logging.getLogger(__name__)

#: Below this wait the poller spins (sched_yield between checks); above it, it sleeps.
SPIN_BELOW = 0.0005
#: How many bytes of a changed region a hit carries.
REGION_BYTES_SHOWN = 64
GAPS_KEPT = 4096
#: One sampling thread per source kind (see `Poller.step`).
LANES = ("dram", "mmio")


@dataclass(frozen=True)
class VcpuState:
    """What one vCPU was executing when the poller looked (not necessarily the writer)."""

    cpu: int
    pc: int
    symbol: str = ""
    halted: bool = False

    def __str__(self) -> str:
        where = self.symbol or f"{self.pc:#x}"
        return f"CPU {self.cpu}: {where}" + (" (halted)" if self.halted else "")


@dataclass(frozen=True)
class HitContext:
    """What the run around the poller adds to a hit (vCPUs, guest clock, hints)."""

    vcpus: tuple[VcpuState, ...] = ()
    guest_time: int | None = None
    note: str = ""
    hint: str | None = None
    vmcore: str | None = None


@dataclass(frozen=True)
class PollHit:
    """One change seen in guest physical memory."""

    seq: int
    poll_id: int
    config: str
    kind: str              # "dram" | "mmio"
    label: str             # memory map name of the range
    wall_time: float
    addr: int              # first changed byte for a region, the value's address otherwise
    length: int
    old: str               # hex, guest byte order
    new: str
    trigger: str           # "to" | "from" | "any"
    window: float          # seconds between the last sample showing the old value and now
    first_sample: bool = False  # a to= value already present at the very first sample
    region_offset: int | None = None
    action: str = "report"
    context: HitContext = field(default_factory=HitContext)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["event"] = "poll-hit"
        data["addr"] = hex(self.addr)
        data.update(value_fields(self.old, self.new))
        data["context"]["vcpus"] = [
            {**v, "pc": hex(v["pc"])} for v in data["context"]["vcpus"]]
        return data


@dataclass
class _Poll:
    id: int
    spec: PollSpec
    source: Source
    next_due: float = 0.0
    prev: bytes | None = None
    prev_at: float = 0.0
    samples: int = 0
    errors: int = 0
    hits: int = 0
    done: bool = False
    gaps: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=GAPS_KEPT))


@dataclass(frozen=True)
class PollStatus:
    """A poll's state, for the summary and the TUI."""

    id: int
    config: str
    kind: str
    label: str
    samples: int
    hits: int
    errors: int
    median_interval: float | None
    active: bool


class Poller:
    """Samples every poll on its own period in one background thread."""

    def __init__(
        self,
        memory: PhysMemory,
        *,
        on_hit: Callable[[PollHit], None] | None = None,
        context: Callable[[PollSpec, int], HitContext] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.memory = memory
        self.on_hit = on_hit
        self.context = context
        self.clock = clock
        self.hits: list[PollHit] = []
        self._lock = threading.RLock()
        self._polls: dict[int, _Poll] = {}
        self._next_id = 1
        self._wakes = {lane: threading.Event() for lane in LANES}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.failure: BaseException | None = None

    # ----------------------------------------------------------- the table
    def add_poll(self, spec: PollSpec | str) -> int:
        """Start polling (now, also while the guest runs); returns the poll's id."""
        if isinstance(spec, str):
            spec = parse_poll(spec)
        source = self.memory.source(spec.addr, spec.length)
        with self._lock:
            poll = _Poll(self._next_id, spec, source, next_due=self.clock())
            self._polls[poll.id] = poll
            self._next_id += 1
        self._wake_all()
        return poll.id

    def remove_poll(self, poll_id: int) -> PollSpec:
        """Stop one poll; `BadInput` when there is no such poll."""
        with self._lock:
            poll = self._polls.pop(poll_id, None)
        if poll is None:
            raise BadInput(f"no poll with id {poll_id}")
        self._wake_all()
        return poll.spec

    def polls(self) -> list[PollStatus]:
        with self._lock:
            return [PollStatus(
                p.id, p.spec.canonical(), p.source.kind, p.source.label, p.samples, p.hits,
                p.errors, statistics.median(p.gaps) if p.gaps else None, not p.done)
                for p in self._polls.values()]

    def active(self) -> int:
        with self._lock:
            return sum(1 for p in self._polls.values() if not p.done)

    # ------------------------------------------------------------ sampling
    def step(self, now: float | None = None, lane: str | None = None) -> float | None:
        """Sample every due poll once; returns when the next one is due (None: no polls).

        ``lane`` restricts the pass to one source kind ("dram" or "mmio"): each
        lane has its own thread, so a QEMU round trip for a device register
        never delays a microsecond-period DRAM poll.
        """
        now = self.clock() if now is None else now
        with self._lock:
            live = [p for p in self._polls.values()
                    if not p.done and (lane is None or p.source.kind == lane)]
        for poll in live:
            if poll.next_due <= now:
                self._sample(poll)
        pending = [p.next_due for p in live if not p.done]
        return min(pending) if pending else None

    def _sample(self, poll: _Poll) -> None:
        try:
            cur = poll.source.read()
        except Exception as exc:  # a QEMU read can fail while the guest shuts down
            poll.errors += 1
            poll.next_due = self.clock() + max(poll.spec.interval, 0.01)
            log.debug("poll %d: read failed: %s", poll.id, exc)
            return
        at = self.clock()
        if poll.samples:
            poll.gaps.append(at - poll.prev_at)
        poll.samples += 1
        poll.next_due = at + poll.spec.interval
        hit = self._evaluate(poll, cur, at)
        poll.prev, poll.prev_at = cur, at
        if hit is not None:
            self._fire(poll, hit)

    def _evaluate(self, poll: _Poll, cur: bytes, at: float) -> PollHit | None:
        spec, prev = poll.spec, poll.prev
        if prev == cur:                 # the common case: nothing moved, no edge
            return None
        window = at - poll.prev_at if prev is not None else 0.0
        common = dict(poll_id=poll.id, config=spec.canonical(), kind=poll.source.kind,
                      label=poll.source.label, wall_time=time.time(), trigger=spec.trigger,
                      window=window, action=spec.on_hit)
        if spec.region:
            if prev is None or prev == cur:
                return None
            first = next(i for i in range(len(cur)) if cur[i] != prev[i])
            last = next(i for i in range(len(cur) - 1, -1, -1) if cur[i] != prev[i])
            end = min(last + 1, first + REGION_BYTES_SHOWN)
            return PollHit(seq=0, addr=spec.addr + first, length=end - first,
                           old=prev[first:end].hex(), new=cur[first:end].hex(),
                           region_offset=first, **common)
        value = _masked(cur, spec.mask)
        old_value = _masked(prev, spec.mask) if prev is not None else None
        fired = first_sample = False
        if spec.to is not None:
            fired = value == spec.to and old_value != spec.to
            first_sample = fired and prev is None
        elif spec.from_ is not None:
            fired = old_value == spec.from_ and value != spec.from_
        else:
            fired = old_value is not None and old_value != value
        if not fired:
            return None
        return PollHit(seq=0, addr=spec.addr, length=spec.length,
                       old=(prev if prev is not None else cur).hex(), new=cur.hex(),
                       first_sample=first_sample, **common)

    def _fire(self, poll: _Poll, hit: PollHit) -> None:
        context = HitContext()
        if self.context is not None:
            try:
                context = self.context(poll.spec, hit.addr)
            except Exception as exc:  # the hit itself must never be lost
                context = HitContext(note=f"no vCPU context: {exc}")
        with self._lock:
            poll.hits += 1
            if poll.spec.once:
                poll.done = True
            hit = PollHit(**{**_fields(hit), "seq": len(self.hits) + 1, "context": context})
            self.hits.append(hit)
        if self.on_hit is not None:
            self.on_hit(hit)

    # -------------------------------------------------------------- thread
    def start(self) -> None:
        """Run the sampling loop in a daemon thread until `stop`."""
        if self._threads:
            return
        self._threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                          name=f"kswgdb-poller-{lane}")
                         for lane in LANES]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop sampling; waits for a hit being handled (a vmcore dump takes seconds)."""
        self._stop.set()
        self._wake_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _wake_all(self) -> None:
        for wake in self._wakes.values():
            wake.set()

    def _loop(self, lane: str) -> None:
        wake = self._wakes[lane]
        try:
            while not self._stop.is_set():
                next_due = self.step(lane=lane)
                if next_due is None:
                    wake.wait(0.1)
                    wake.clear()
                    continue
                wait = next_due - self.clock()
                if wait > SPIN_BELOW:
                    wake.wait(wait - SPIN_BELOW / 2)   # then spin the rest
                    wake.clear()
                elif wait > 0:
                    os.sched_yield()     # releases the GIL; sleep(0) costs ~50 us of timer slack
        except BaseException as exc:  # surfaced by the session; never dies silently
            self.failure = exc
            log.exception("poller failed")


def _masked(raw: bytes, mask: int | None) -> int:
    value = int.from_bytes(raw, "little")
    return value & mask if mask is not None else value


def _fields(hit: PollHit) -> dict[str, Any]:
    return {name: getattr(hit, name) for name in hit.__dataclass_fields__}
