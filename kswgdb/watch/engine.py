"""The KStackWatch state machine, driven by stops of the guest.

Per call of a watched function the engine sees two stops: the probe at
``fn+fo`` (post-handler semantics: the instruction there has run) and the
return to the caller. At the probe it identifies the task, computes the frame's
CFA and the watched slot, checks a canary slot against the live guard, takes a
slot from the pool and installs a write watchpoint plus a return breakpoint. At
the return it gives both back. A watchpoint stop in between is a hit: it is
recorded, logged, then handed to the caller for rendering. With
``release_by_check`` a canary watch is an access watchpoint instead, and the
function's own stack-protector check reading the slot is the return
(`kswgdb.watch.checkrelease`): one breakpoint stop per call, not two.

The engine never talks to QEMU, gdb or the terminal itself: it is given a
``Target`` (the wire), a ``Symbolizer`` (the kernel's symbols) and callbacks, so
it can be driven by a fake in unit tests exactly as by the real stub.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kswgdb.watch import guest
from kswgdb.watch.frames import ArmedWatch, Frame, TaskFrames
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hitbuild import HitBuilder
from kswgdb.watch.hits import BacktraceFrame, EventLog, Hit, SourceLine, TaskInfo
from kswgdb.watch.slots import SlotPool
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.target import Registers, Stop, Target

#: The most a single push-like write puts on the stack: an x86-64 interrupt frame
#: (SS, RSP, RFLAGS, CS, RIP and an error code).
PUSH_FRAME_BYTES = 48


class Symbolizer(Protocol):
    """The kernel's symbols, as the engine needs them to describe a hit."""

    def symbol(self, addr: int) -> str:
        """``name+0xoff/0xsize`` or ``0x...`` when no symbol covers it."""

    def function(self, addr: int) -> str | None: ...

    def source(self, addr: int) -> SourceLine | None: ...

    def writer(self, pc: int, regs: Registers) -> tuple[int, str, tuple[tuple[int, str], ...]]:
        """The storing instruction for a watch stop at ``pc``: (address, text, context)."""


@dataclass
class WatchStats:
    """Counts for one watch config; ``calls`` always equals the sum of outcomes."""

    calls: int = 0            # probe reached by a new call
    armed: int = 0
    skipped_depth: int = 0    # not at the configured depth
    refused_pool: int = 0     # no free slot: the call ran unwatched
    refused_check: int = 0    # no canary found where expected nor by the scan
    refused_stub: int = 0     # the stub would not insert the watchpoint
    refused_below_sp: int = 0  # slot below SP at the probe: interrupt frames land there
    refused_max_watch: int = 0  # this config's own mw= watches were all live
    live: int = 0             # watches of this config armed now
    live_high: int = 0        # the most armed at once
    reentries: int = 0        # probe fired again for a live call (a loop)
    returns: int = 0
    stale: int = 0            # frames found dead without their return being seen
    hits: int = 0
    found_by_scan: int = 0    # canary located by the upward scan, not the prologue
    dead_frame_writes: int = 0  # the owner wrote into its own already-left frame
    rep_repeats: int = 0      # further traps of a `rep` store already reported as a hit
    read_releases: int = 0    # returns seen by a read watchpoint (release_by_read)
    foreign_reads: int = 0    # read-watch stops that were not this frame's release
    check_releases: int = 0   # returns seen by the canary check's read (release_by_check)
    slot_reads: int = 0       # access-watch stops that were a read, not the check's
    unchanged_hits: int = 0   # hits whose store wrote the value already there (in hits)
    filtered_reports: int = 0  # stub reports with no new store behind them (dropped)

    @property
    def not_armed(self) -> int:
        return (self.skipped_depth + self.refused_pool + self.refused_check + self.refused_stub
                + self.refused_below_sp + self.refused_max_watch)


@dataclass
class EngineResult:
    """Why the engine loop ended and what it saw."""

    reason: str               # "exit" | "freeze" | "deadline" | "stopped"
    exit_status: int | None = None
    hits: list[Hit] = field(default_factory=list)
    detail: str = ""          # for "exit": how the stub said so (W/X packet, closed link)


class Engine:
    """Arms and disarms watches on a target as its stops arrive."""

    def __init__(
        self,
        target: Target,
        specs: list[ArmSpec],
        layout: GuestLayout,
        symbolizer: Symbolizer,
        pool: SlotPool,
        log: EventLog | None = None,
        on_hit: Callable[[Hit], None] | None = None,
        freeze_on_hit: bool = False,
        exit_hook_addr: int | None = None,
        backtracer: Callable[[Stop, Registers], list[BacktraceFrame] | None] | None = None,
        release_by_read: bool = False,
        keep_hits: int | None = None,
        release_by_check: bool = False,
    ) -> None:
        """``release_by_read``: see a config's release by a read watchpoint when it can.

        For a config whose every release point is followed, in the same TCG
        translation block, by a read of a saved register (``ArmSpec.read_exits``,
        `kswgdb.watch.readrelease`), a read watchpoint on that slot replaces the
        release-point breakpoint: QEMU 7.2 flushes its translation cache at every
        breakpoint stop and at no watchpoint stop. TCG only (read watchpoints are
        refused by KVM's debug registers).

        ``release_by_check``: for a canary config whose every release point
        follows a read of the slot by its stack-protector check
        (``ArmSpec.check_ends``, `kswgdb.watch.checkrelease`), the watch is an
        access watchpoint and the check's read is the release: no release-point
        breakpoint, no translation-cache flush. TCG only.
        """
        self.target = target
        self.specs = specs
        self.layout = layout
        self.sym = symbolizer
        self.pool = pool
        self.log = log
        self.on_hit = on_hit
        self.freeze_on_hit = freeze_on_hit
        self.exit_hook_addr = exit_hook_addr
        self.backtracer = backtracer
        self.stats = [WatchStats() for _ in specs]
        self.frames = TaskFrames()
        self.hits: list[Hit] = []       # the latest ``keep_hits`` (all when None)
        self.hit_count = 0
        self.keep_hits = keep_hits
        self.hit_repeats: dict[int, int] = {}      # hit seq -> later traps of its rep store
        self.unexpected_stops = 0
        self.spurious_watch_reports = 0
        self._probes: dict[int, list[int]] = {}
        self._exits: dict[int, list[tuple[int, str, int]]] = {}
        self.release_by_read = release_by_read
        self.release_by_check = release_by_check
        for index, spec in enumerate(specs):
            self._probes.setdefault(spec.probe_addr, []).append(index)
            for addr, base, offset in self._exit_breakpoints(spec):
                self._exits.setdefault(addr, []).append((index, base, offset))
        self._return_bps: dict[int, int] = {}     # address -> live frames using it
        self._hooks: dict[int, Callable[[Stop], None]] = {}   # breakpoint -> callback
        self._last_writer: dict[int, int] = {}    # id(watch) -> insn of its last hit
        self._read = target.read
        self.removed: set[int] = set()            # indices given to remove_spec
        self.hit_builder = HitBuilder(layout, symbolizer, target.read, backtracer)
        self._exit_hook_in = False                # the task-exit hook is wanted now

    # ---------------------------------------------------------------- set-up
    def install(self) -> None:
        """Insert the probe breakpoints before the guest runs.

        The task-exit hook is not inserted here: it matters only while some
        task has a live watched frame (see `_sync_exit_hook`), and every stop
        it would cause costs a Linux guest a whole translation-cache flush.
        """
        for addr in {*self._probes, *self._exits}:
            self.target.set_breakpoint(addr)
        self._ask_per_cpu_prefetch()

    def _ask_per_cpu_prefetch(self) -> None:
        """Let a target that can read per-CPU data along with each stop's registers do so."""
        prefetch = getattr(self.target, "prefetch_per_cpu", None)
        if prefetch is None:
            return
        if self.layout.current_gs_offset is not None:
            prefetch(self.layout.current_gs_offset, 8)
        for spec in self.specs:
            guard = spec.guard if spec.mode == "canary" else None
            if guard is not None and guard.kind == "gs":
                prefetch(guard.offset, 8)
                break

    # ------------------------------------------------- watches added live
    def add_spec(self, spec: ArmSpec) -> int:
        """Watch one more config from now on; the guest must be stopped. Returns its index.

        Indices are never reused, so stats, frames and hits keep pointing at the
        config they were counted for even after others are removed.
        """
        index = len(self.specs)
        self.specs.append(spec)
        self.stats.append(WatchStats())
        addrs = [spec.probe_addr, *(addr for addr, _, _ in self._exit_breakpoints(spec))]
        for addr in dict.fromkeys(addrs):
            if not self._static_breakpoint(addr) and addr not in self._return_bps:
                self.target.set_breakpoint(addr)
        self._probes.setdefault(spec.probe_addr, []).append(index)
        for addr, base, offset in self._exit_breakpoints(spec):
            self._exits.setdefault(addr, []).append((index, base, offset))
        return index

    def _reads_release(self, spec: ArmSpec) -> bool:
        return self.release_by_read and bool(spec.read_exits)

    def _checks_release(self, spec: ArmSpec) -> bool:
        return self.release_by_check and bool(spec.check_ends) and not self._reads_release(spec)

    def _exit_breakpoints(self, spec: ArmSpec) -> tuple[tuple[int, str, int], ...]:
        """Release points that need a breakpoint: none when a read or the check sees them."""
        return () if self._reads_release(spec) or self._checks_release(spec) else spec.exits

    def remove_spec(self, index: int) -> None:
        """Stop watching config ``index`` now; the guest must be stopped.

        Its live watchpoints are removed at once (a hit after this moment is
        not reported) and its probes no longer count calls; its stats stay,
        so a summary still shows what it saw while it was active.
        """
        if not 0 <= index < len(self.specs) or index in self.removed:
            raise ValueError(f"no active watch #{index}")
        for frame in [f for f in self.frames.all() if f.spec_index == index]:
            self._drop_frame(frame, counted=False)
        self.removed.add(index)
        spec = self.specs[index]
        gone = []
        users = self._probes.get(spec.probe_addr, [])
        if index in users:
            users.remove(index)
            if not users:
                del self._probes[spec.probe_addr]
                gone.append(spec.probe_addr)
        for addr, _, _ in spec.exits:
            kept = [e for e in self._exits.get(addr, []) if e[0] != index]
            if kept:
                self._exits[addr] = kept
            elif self._exits.pop(addr, None) is not None:
                gone.append(addr)
        for addr in dict.fromkeys(gone):
            if not self._static_breakpoint(addr) and addr not in self._return_bps:
                self.target.clear_breakpoint(addr)

    # ------------------------------------------------------------ main loop
    def run(
        self,
        deadline: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        poll: float = 0.25,
        halt: Callable[[], bool] | None = None,
    ) -> EngineResult:
        """Resume the guest and handle stops until it exits, freezes or time runs out.

        ``should_stop`` is asked between stops (at most every ``poll`` seconds);
        ``halt``, which must be cheap, after every stop, so that a guest frozen by
        someone else (a physical-memory poll) is not resumed by the engine.
        """
        self.target.resume()
        checked = time.monotonic()
        while True:
            timeout = poll
            if deadline is not None:
                timeout = max(0.0, min(poll, deadline - time.monotonic()))
            stop = self.target.wait_stop(timeout)
            now = time.monotonic()
            if stop is None or now - checked >= poll:
                # Checked between stops too: a guest that stops all the time
                # must still end at its deadline or when the caller says so.
                checked = now
                if deadline is not None and now >= deadline:
                    return self._ended_between_stops("deadline", stop)
                if should_stop is not None and should_stop():
                    return self._ended_between_stops("stopped", stop)
            if stop is None:
                continue
            verdict = self.handle(stop)
            if verdict == "exit":
                return EngineResult("exit", exit_status=stop.exit_status, hits=self.hits,
                                    detail=stop.detail)
            if verdict == "freeze":
                return EngineResult("freeze", hits=self.hits)
            if halt is not None and halt():
                return EngineResult("stopped", hits=self.hits)   # e.g. a poll froze the guest
            self.target.resume()

    def _ended_between_stops(self, reason: str, stop: Stop | None) -> EngineResult:
        """End the loop; a stop already received is handled first so no hit is lost."""
        if stop is not None:
            verdict = self.handle(stop)
            if verdict == "exit":
                return EngineResult("exit", exit_status=stop.exit_status, hits=self.hits,
                                    detail=stop.detail)
            if verdict == "freeze":
                return EngineResult("freeze", hits=self.hits)
        return EngineResult(reason, hits=self.hits)

    def handle(self, stop: Stop) -> str:
        """React to one stop; returns "continue", "freeze" or "exit"."""
        if stop.kind == "exit":
            return "exit"
        verdict = "continue"
        if stop.watch_addr is not None and stop.watch_access == "read":
            self._on_release_read(stop)
            if stop.kind != "break":
                return verdict
        elif stop.watch_addr is not None and stop.watch_access == "access":
            verdict = self._on_access(stop)
            if stop.kind != "break":
                return verdict
        elif stop.watch_addr is not None:
            verdict = self._on_watch(stop)
            if stop.kind != "break":
                return verdict
        if stop.kind == "break":
            handled = False
            if stop.pc in self._probes:
                self._on_probe(stop)
                handled = True
            if stop.pc in self._exits:
                self._on_exit(stop)
                handled = True
            if stop.pc in self._return_bps:
                self._on_return(stop)
                handled = True
            if stop.pc == self.exit_hook_addr:
                self._on_task_exit(stop)
                handled = True
            if stop.pc in self._hooks:
                self._hooks[stop.pc](stop)
                handled = True
            if handled:
                return verdict
        self.unexpected_stops += 1
        return verdict

    # ---------------------------------------------------------------- probe
    def _on_probe(self, stop: Stop) -> None:
        """One pipelined batch of reads serves every config sharing this probe.

        When every config here is released by its check, nothing decided before
        the resume depends on what is read (the access watch goes in, armed or
        not), so a target that can (`read_with_resume`) sends the reads in the
        resume's own write and hands them back before the next stop.
        """
        regs = self.target.registers(stop.thread)
        sp, fp = regs.sp, regs.fp
        reads: list[tuple[int, int]] = []
        current_at = guest.current_task_address(self.layout, regs)
        plans = []
        for index in self._probes[stop.pc]:
            spec = self.specs[index]
            cfa = spec.cfa(sp, fp)
            slot = spec.slot_address(sp, fp)
            first = len(reads)
            reads += [(cfa - 8, 8), (slot, spec.length)]
            if spec.mode == "canary" and spec.guard is not None:
                reads.append((guest.canary_address(spec.guard, regs), 8))
            plans.append((index, cfa, slot, first, len(reads)))
        later = getattr(self.target, "read_with_resume", None)
        if later is not None and all(self._sensor_fits(self.specs[index], slot, sp)
                                     for index, _, slot, _, _ in plans):
            # The current task first: prefetched along with the registers, it costs nothing.
            task_word = self.target.read_many([(current_at, 8)])[0] if current_at else None
            task = guest.current_task_from(self.layout, regs, task_word)
            waiting = [(frame, first, end) for index, cfa, slot, first, end in plans
                       if (frame := self._probe_one(index, task, sp, cfa, slot, None))]
            if waiting:
                later(reads, lambda data: self._arm_read(waiting, sp, data))
            return
        if current_at is not None:
            reads.insert(0, (current_at, 8))
        data = self.target.read_many(reads)
        task = guest.current_task_from(self.layout, regs, data[0] if current_at else None)
        shift = 1 if current_at is not None else 0
        for index, cfa, slot, first, end in plans:
            self._probe_one(index, task, sp, cfa, slot, data[first + shift:end + shift])

    def _sensor_fits(self, spec: ArmSpec, slot: int, sp: int) -> bool:
        """Released by its check here: the slot is above SP (an interrupt frame never
        lands on it) and under no other config's write watch (QEMU 7.2 aborts on
        watchpoints of two kinds over one slot); otherwise its return breakpoint."""
        if not self._checks_release(spec) or slot < sp:
            return False
        end = slot + spec.length
        return not any(f.watch is not None and f.sensor is None
                       and f.watch.addr < end and slot < f.watch.addr + f.watch.length
                       for f in self.frames.all())

    def _under_sensor(self, addr: int, length: int) -> bool:
        """Does another frame's access watch (release by check) cover these bytes?"""
        return any(f.sensor is not None and f.sensor[0] < addr + length
                   and addr < f.sensor[0] + f.sensor[1] for f in self.frames.all())

    def _arm_read(self, waiting: list[tuple[Frame, int, int]], sp: int,
                  data: list[bytes] | None) -> None:
        """The probe's reads, back from the resume's write: arm the frames that wait."""
        for frame, first, end in waiting:
            if not any(f is frame for f in self.frames.of_task(frame.task)):
                continue                    # dropped meanwhile
            if data is None:
                self.stats[frame.spec_index].refused_check += 1   # unreadable: not armed
                continue
            frame.return_addr = int.from_bytes(data[first], "little")
            assert frame.sensor is not None
            self._arm(frame, sp, frame.sensor[0], data[first + 1:end])

    def _probe_one(
        self, index: int, task: int, sp: int, cfa: int, slot: int, data: list[bytes] | None,
    ) -> Frame | None:
        """Count and track one call; arm it with ``data`` (return address, slot[, guard]).

        ``data`` None: it is read with the resume; the frame to arm then is returned.
        """
        spec, stats = self.specs[index], self.stats[index]
        for stale in self.frames.stale_below(task, cfa):
            self._drop_frame(stale, counted=True)
        if self.frames.find(task, index, cfa) is not None:
            stats.reentries += 1
            return None
        return_addr = int.from_bytes(data[0], "little") if data is not None else 0
        stats.calls += 1
        depth = self.frames.depth_at(task, index, cfa)
        frame = Frame(spec_index=index, task=task, cfa=cfa, return_addr=return_addr, depth=depth)
        self.frames.push(frame)
        self._sync_exit_hook()
        by_check = self._sensor_fits(spec, slot, sp)
        if self._reads_release(spec):
            self._watch_release_reads(frame, spec)
        elif by_check:
            # The slot's access watch is the frame's release sensor, armed or not:
            # the check's read ends the frame (see `_on_access`).
            self.target.set_watchpoint(slot, spec.length, "access")
            frame.sensor = (slot, spec.length)
        elif not spec.exits or self._checks_release(spec):
            frame.holds_return = True
            self._hold_return(return_addr)
        if depth != spec.depth:
            stats.skipped_depth += 1
            return None
        if data is None:
            return frame
        self._arm(frame, sp, slot, data[1:])
        return None

    def _arm(self, frame: Frame, sp: int, slot: int, data: list[bytes]) -> None:
        """Check the slot (``data``: its bytes[, the guard's]) and watch it if it may be."""
        index, cfa = frame.spec_index, frame.cfa
        spec, stats = self.specs[index], self.stats[index]
        old = data[0]
        if spec.mode == "canary" and len(data) > 1:
            expected = data[1]
            if old != expected and frame.sensor is not None:
                stats.refused_check += 1        # the check reads this slot only: no scan
                return
            if old != expected:
                found = self._scan_for_canary(spec, sp, cfa, expected)
                if found is None:
                    stats.refused_check += 1
                    return
                if any(a < found + spec.length and found < a + n for a, n in frame.release_reads):
                    stats.refused_check += 1    # QEMU 7.2 aborts on read+write watches there
                    return
                slot, old = found, expected
                stats.found_by_scan += 1
        if slot < sp:
            # Free stack: the next call or interrupt frame lands there. Under
            # TCG a watchpoint hit while the CPU pushes an interrupt or
            # exception frame loses that interrupt, and a second push aborts
            # QEMU 7.2 (see kswgdb.watch.loststops): never armed.
            stats.refused_below_sp += 1
            return
        if spec.max_watch and stats.live >= spec.max_watch:
            stats.refused_max_watch += 1    # KStackWatch's mw: this config's own bound
            return
        if frame.sensor is None and self._under_sensor(slot, spec.length):
            stats.refused_check += 1        # QEMU 7.2 aborts on watches of two kinds there
            return
        if not self.pool.take():
            stats.refused_pool += 1         # the run's pool (debug registers, --slots)
            return
        try:
            if frame.sensor is None:
                self.target.set_watchpoint(slot, spec.length)
        except Exception:  # noqa: BLE001 - the stub refusing is counted, never fatal
            self.pool.give()
            stats.refused_stub += 1
            return
        frame.watch = ArmedWatch(
            addr=slot, length=spec.length, old_value=old, spec_index=index,
            owner_task=frame.task, depth=frame.depth, armed_at=time.time(), armed_value=old,
        )
        stats.armed += 1
        stats.live += 1
        stats.live_high = max(stats.live_high, stats.live)

    def _watch_release_reads(self, frame: Frame, spec: ArmSpec) -> None:
        reads = tuple(dict.fromkeys((frame.cfa + offset, length)
                                    for offset, length, _ in spec.read_exits))
        for addr, length in reads:
            self.target.set_watchpoint(addr, length, "read")
        frame.release_reads = reads

    def _on_release_read(self, stop: Stop) -> None:
        """A read of a saved-register slot: the owner's epilogue, past its release point.

        Any other reader (an unwinder walking the stack, another task) is
        ignored: the frame ends only when its own task reads with SP where the
        epilogue leaves it, i.e. above the released slot.
        """
        addr = stop.watch_addr
        assert addr is not None
        frames = [f for f in self.frames.all()
                  if any(a <= addr < a + n for a, n in f.release_reads)]
        if not frames:
            self.unexpected_stops += 1      # a late report of a read watch already removed
            return
        regs = self.target.registers(stop.thread)
        task = guest.current_task(self.layout, regs, self._read)
        for frame in frames:
            spec, stats = self.specs[frame.spec_index], self.stats[frame.spec_index]
            lowest = min(frame.cfa + after for _, _, after in spec.read_exits)
            if frame.task != task or regs.sp < lowest:
                stats.foreign_reads += 1
                continue
            for deeper in self.frames.stale_below(task, frame.cfa):
                self._drop_frame(deeper, counted=True)
            stats.returns += 1
            stats.read_releases += 1
            self._drop_frame(frame, counted=False)

    def _scan_for_canary(self, spec: ArmSpec, sp: int, cfa: int, expected: bytes) -> int | None:
        """KStackWatch's fallback: the first word equal to the guard, upward from SP."""
        limit = min(spec.scan_words * 8, max(8, cfa - sp))
        window = self._read(sp, limit)
        for off in range(0, len(window) - 7, 8):
            if window[off:off + 8] == expected:
                return sp + off
        return None

    # --------------------------------------------------------------- return
    def _on_return(self, stop: Stop) -> None:
        regs = self.target.registers(stop.thread)
        task = guest.current_task(self.layout, regs, self._read)
        for frame in self.frames.returning(task, regs.sp, stop.pc):
            self.stats[frame.spec_index].returns += 1
            self._drop_frame(frame, counted=False)

    def _on_exit(self, stop: Stop) -> None:
        """A release point: the frame with this (task, CFA) is about to give up its slot."""
        regs = self.target.registers(stop.thread)
        task = guest.current_task(self.layout, regs, self._read)
        for index, base, offset in self._exits[stop.pc]:
            cfa = (regs.fp if base == "rbp" else regs.sp) + offset
            frame = self.frames.find(task, index, cfa)
            if frame is None:
                continue            # a call that never reached the probe (early return)
            for deeper in self.frames.stale_below(task, cfa):
                self._drop_frame(deeper, counted=True)
            self.stats[index].returns += 1
            self._drop_frame(frame, counted=False)

    def _on_task_exit(self, stop: Stop) -> None:
        regs = self.target.registers(stop.thread)
        task = guest.current_task(self.layout, regs, self._read)
        for frame in self.frames.of_task(task):
            self._drop_frame(frame, counted=True)

    def _drop_frame(self, frame: Frame, counted: bool) -> None:
        """Disarm a frame's watch and release its return breakpoint."""
        if counted:
            self.stats[frame.spec_index].stale += 1
        if frame.watch is not None:
            if frame.sensor is None:
                self.target.clear_watchpoint(frame.watch.addr, frame.watch.length)
            self.pool.give()
            self.stats[frame.spec_index].live -= 1
            self._last_writer.pop(id(frame.watch), None)
            frame.watch = None
        if frame.sensor is not None:
            self.target.clear_watchpoint(*frame.sensor, "access")
            frame.sensor = None
        for addr, length in frame.release_reads:
            self.target.clear_watchpoint(addr, length, "read")
        frame.release_reads = ()
        self.frames.remove(frame)
        if frame.holds_return:
            self._release_return(frame.return_addr)
        self._sync_exit_hook()

    def _sync_exit_hook(self) -> None:
        """Have the task-exit hook in exactly while some task has a live watched frame.

        The hook exists to drop the frames of a task that dies inside a watched
        call (its stack is freed and reused: a watch left there would report the
        next owner's writes). With no live frame there is nothing to drop, so
        it is taken out and a process exit costs no stop. Both changes are made
        while the guest is already stopped (a probe, a release), so they ride
        on that stop's resume and cost no stop of their own.
        """
        addr = self.exit_hook_addr
        want = bool(self.frames.by_task)
        if addr is None or want == self._exit_hook_in:
            return
        self._exit_hook_in = want
        if (addr in self._probes or addr in self._exits or addr in self._hooks
                or addr in self._return_bps):
            return          # the breakpoint is held for another reason as well
        if want:
            self.target.set_breakpoint(addr)
        else:
            self.target.clear_breakpoint(addr)

    def _hold_return(self, addr: int) -> None:
        count = self._return_bps.get(addr, 0)
        if count == 0 and not self._static_breakpoint(addr):
            self.target.set_breakpoint(addr)
        self._return_bps[addr] = count + 1

    def _release_return(self, addr: int) -> None:
        count = self._return_bps.get(addr, 0) - 1
        if count > 0:
            self._return_bps[addr] = count
            return
        self._return_bps.pop(addr, None)
        if not self._static_breakpoint(addr):
            self.target.clear_breakpoint(addr)

    def _static_breakpoint(self, addr: int) -> bool:
        """Probe, release and hook breakpoints, and the task-exit hook while it is in."""
        return (addr in self._probes or addr in self._exits or addr in self._hooks
                or (self._exit_hook_in and addr == self.exit_hook_addr))

    # ------------------------------------------------------ release by check
    def _on_access(self, stop: Stop) -> str:
        """An access-watch stop: the owner's canary check (its release), a read, or a write.

        The stop names the slot, the slot names the frame: a stop whose PC ends
        one of the function's slot-reading instructions is that frame's check,
        run by its owner (no other task's code reads this stack), so the frame
        ends here with no register or memory read. QEMU reports reads and writes
        alike (``awatch``); any other stop is a read when the slot still holds
        its value and no store is at the PC, otherwise the write path judges it.
        """
        addr = stop.watch_addr
        assert addr is not None
        frames = [f for f in self.frames.all()
                  if f.sensor is not None and f.sensor[0] <= addr < f.sensor[0] + f.sensor[1]]
        if not frames:
            self.unexpected_stops += 1      # a late report of a watch already removed
            return "continue"
        writes = []
        for frame in frames:
            spec, stats = self.specs[frame.spec_index], self.stats[frame.spec_index]
            if stop.pc in spec.check_ends:
                for deeper in self.frames.stale_below(frame.task, frame.cfa):
                    self._drop_frame(deeper, counted=True)
                if self._check_fails(frame):
                    # The canary holds what a caught hit wrote: the check fails and the
                    # task dies in __stack_chk_fail, it does not return (as the
                    # release-point breakpoint, which then never comes, would count).
                    self._drop_frame(frame, counted=True)
                    continue
                stats.returns += 1
                stats.check_releases += 1
                self._drop_frame(frame, counted=False)
            elif frame.watch is None or self._pure_read(stop, frame.watch):
                stats.slot_reads += 1
            else:
                writes.append(frame)
        return self._judge_writes(stop, writes) if writes else "continue"

    @staticmethod
    def _check_fails(frame: Frame) -> bool:
        """Every write into an armed slot is a hit that records what it wrote, so the
        slot's bytes are known without a read: not the armed canary, the check fails."""
        watch = frame.watch
        return watch is not None and watch.hits > 0 and watch.old_value != watch.armed_value

    def _pure_read(self, stop: Stop, watch: ArmedWatch) -> bool:
        """An access-watch stop that wrote nothing: the bytes are as armed and the
        instruction stores nothing (a same-value store is still judged as a write)."""
        if self._read(watch.addr, watch.length) != watch.old_value:
            return False
        is_store = getattr(self.sym, "is_store", None)
        return is_store is None or not is_store(stop.pc)

    # ------------------------------------------------------------------ hit
    def _on_watch(self, stop: Stop) -> str:
        addr = stop.watch_addr
        assert addr is not None
        owners = [
            f for f in self.frames.all()
            if f.watch is not None and f.watch.addr <= addr < f.watch.addr + f.watch.length
        ]
        if not owners:
            self.unexpected_stops += 1
            return "continue"
        return self._judge_writes(stop, owners)

    def _judge_writes(self, stop: Stop, owners: list[Frame]) -> str:
        """A write into the watches of ``owners``: a hit, a duplicate report or the owner's own."""
        regs = self.target.registers(stop.thread)
        writer_task = guest.current_task(self.layout, regs, self._read)
        verdict = "continue"
        for frame in owners:
            watch = frame.watch
            assert watch is not None
            new = self._read(watch.addr, watch.length)
            unchanged = new == watch.old_value
            if unchanged and not self._new_store(stop, watch):
                # Same bytes and no store behind the report (or the store just
                # reported again): the stub's duplicate, not a write.
                self.spurious_watch_reports += 1
                self.stats[frame.spec_index].filtered_reports += 1
                continue
            if writer_task == watch.owner_task and (
                    self._frame_is_dead(frame, regs) or self._pushed_over(watch, regs, stop.pc)):
                # The owner itself writes into a frame it has already left: an
                # interrupt taken between its `ret` and our return breakpoint
                # pushes into the old frame (KStackWatch's exit-trampoline false
                # positive). Not a corruption; the return stop follows.
                self.stats[frame.spec_index].dead_frame_writes += 1
                if frame.sensor is not None:
                    # Released by check, and its check was never seen: the frame is
                    # gone, drop its watch before an interrupt frame lands on it.
                    self._drop_frame(frame, counted=True)
                continue
            if self._record_hit(stop, regs, frame, watch, writer_task, new, unchanged):
                verdict = "freeze"
        return verdict

    def _new_store(self, stop: Stop, watch: ArmedWatch) -> bool:
        """A store at the reported instruction, other than the one last reported:
        a write of the value already there (a hardware watchpoint fires on it, and a
        foreign write into a live frame is the bug whatever it wrote)."""
        is_store = getattr(self.sym, "is_store", None)
        if is_store is None or not is_store(stop.pc):
            return False
        regs = self.target.registers(stop.thread)
        misses = getattr(self.sym, "store_misses", None)
        if misses is not None and misses(stop.pc, regs, watch.addr, watch.length):
            return False            # its store went elsewhere: a report, not a write
        insn_addr = self.sym.writer(stop.pc, regs)[0]
        return self._last_writer.get(id(watch)) != insn_addr

    def _pushed_over(self, watch: ArmedWatch, regs: Registers, pc: int) -> bool:
        """The owner pushed onto the slot: its SP was above it, so the frame is gone.

        A live frame lies above SP and pushes write below SP, so a push by the
        owner task landing on the slot proves the frame was already released
        (an epilogue interrupted after `lea rsp`/`leave`, before `ret`).
        """
        if not regs.sp <= watch.addr < regs.sp + PUSH_FRAME_BYTES:
            return False
        is_push = getattr(self.sym, "stack_push", None)
        return bool(is_push is not None and is_push(pc))

    def _frame_is_dead(self, frame: Frame, regs: Registers) -> bool:
        """Has the owner task, now running, already left ``frame``?

        An SP above the slot proves it. Otherwise, with frame pointers, the
        frame is live exactly when its saved-RBP slot (CFA-16) is on the
        current RBP chain: interrupt entry and context-switch code keep the
        interrupted RBP, so this also holds in the middle of their pushes.
        """
        watch = frame.watch
        assert watch is not None
        if regs.sp > watch.addr + watch.length - 1:
            return True
        if self.specs[frame.spec_index].cfa_base != "rbp":
            return False
        want = frame.cfa - 16
        fp = regs.fp
        base, top = guest.stack_bounds(self.layout, want, frame.task, self._read)
        if not base <= fp < top:
            return False            # RBP is not on this stack: cannot tell, keep the hit
        if fp > want:
            return True
        if fp == want:
            return False
        chain = self._read(fp, frame.cfa - fp)
        while fp < want:
            nxt = int.from_bytes(chain[fp - regs.fp:fp - regs.fp + 8], "little")
            if nxt <= fp or nxt > want:
                return True
            fp = nxt
        return fp != want

    def _record_hit(
        self, stop: Stop, regs: Registers, frame: Frame, watch: ArmedWatch, writer_task: int,
        new: bytes, unchanged: bool = False,
    ) -> bool:
        spec, stats = self.specs[frame.spec_index], self.stats[frame.spec_index]
        insn_addr, text, context = self.sym.writer(stop.pc, regs)
        previous = self._last_writer.get(id(watch))
        self._last_writer[id(watch)] = insn_addr
        if previous == insn_addr and text.startswith("rep"):
            # A `rep stos`/`rep movs` traps once per element: one catch per
            # instruction per armed call, the repeats only counted.
            stats.rep_repeats += 1
            self.hit_repeats[self.hits[-1].seq] = self.hit_repeats.get(self.hits[-1].seq, 0) + 1
            if self.log is not None:
                self.log.write("hit-repeat", seq=self.hits[-1].seq, insn=hex(insn_addr),
                               repeats=self.hit_repeats[self.hits[-1].seq])
            watch.old_value = new
            return False
        hit = self.hit_builder.build(self.hit_count + 1, stop, regs, spec, watch, writer_task,
                                     new, (insn_addr, text, context), unchanged)
        watch.old_value = new
        watch.hits += 1
        stats.hits += 1
        stats.unchanged_hits += unchanged
        self.hits.append(hit)
        self.hit_count += 1
        if self.keep_hits is not None and len(self.hits) > self.keep_hits:
            # Written to the event log and rendered already: a storm of hits
            # must not grow the process (the log holds them all).
            del self.hits[:len(self.hits) - max(self.keep_hits, 1)]
        if self.log is not None:
            self.log.write_hit(hit)
        if self.on_hit is not None:
            self.on_hit(hit)
        return spec.panic or self.freeze_on_hit

    # -------------------------------------------------------------- summary
    # ------------------------------------------------------- late additions
    def add_hook(self, addr: int, callback: Callable[[Stop], None]) -> None:
        """Call ``callback(stop)`` whenever the guest reaches ``addr`` (a breakpoint)."""
        if not self._static_breakpoint(addr) and addr not in self._return_bps:
            self.target.set_breakpoint(addr)
        self._hooks[addr] = callback

    def remove_hook(self, addr: int) -> None:
        """Stop calling the hook at ``addr``; its breakpoint goes unless held otherwise."""
        if self._hooks.pop(addr, None) is None:
            return
        if not self._static_breakpoint(addr) and addr not in self._return_bps:
            self.target.clear_breakpoint(addr)

    def live_watches(self) -> int:
        return sum(1 for f in self.frames.all() if f.watch is not None)

    def summary(self) -> list[dict]:
        """Per-config counts, for the log and the final table."""
        out = []
        for spec, stats in zip(self.specs, self.stats, strict=True):
            out.append({
                "config": spec.text, "func": spec.func, "mode": spec.mode,
                "calls": stats.calls, "armed": stats.armed, "not_armed": stats.not_armed,
                "skipped_depth": stats.skipped_depth, "refused_pool": stats.refused_pool,
                "refused_check": stats.refused_check, "refused_stub": stats.refused_stub,
                "refused_below_sp": stats.refused_below_sp,
                "refused_max_watch": stats.refused_max_watch, "max_watch": spec.max_watch,
                "live_high": stats.live_high,
                "reentries": stats.reentries, "returns": stats.returns, "stale": stats.stale,
                "hits": stats.hits, "found_by_scan": stats.found_by_scan,
                "dead_frame_writes": stats.dead_frame_writes,
                "rep_repeats": stats.rep_repeats,
                "read_releases": stats.read_releases, "foreign_reads": stats.foreign_reads,
                "check_releases": stats.check_releases, "slot_reads": stats.slot_reads,
                "unchanged_hits": stats.unchanged_hits,
                "filtered_reports": stats.filtered_reports,
            })
        return out


__all__ = ["Engine", "EngineResult", "Symbolizer", "TaskInfo", "WatchStats"]
