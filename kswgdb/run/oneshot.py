"""The one-shot run (`kswgdb run`): prepare once, drive one rig to its end, report.

`WatchSession` is the driver: `prepare` (every check, nothing started), then
`run`, which opens a rig, lets the engine handle stops until the guest exits,
the deadline passes, a hit freezes it or a watchdog ends it, keeps the frozen
moment (vmcore, ``--gdb-listen``), and turns what happened into a `RunReport`.
Whatever happens, the rig releases everything it holds.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kswgdb.gdbstub.errors import StubClosed
from kswgdb.gdbstub.relay import Relay
from kswgdb.poll.poller import PollHit, PollStatus
from kswgdb.qemu import reaper
from kswgdb.qemu.accel import AccelDecision
from kswgdb.qemu.exitnudge import NUDGED
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.run.faults import exit_fault, normal_exits
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import Plan, prepare
from kswgdb.run.progress import progress_reader
from kswgdb.run.rig import Rig, Sink, open_rig
from kswgdb.run.vmcore import FrozenCore, freeze_vmcore
from kswgdb.run.vmcore import describe as describe_vmcore
from kswgdb.symbols.slide import KernelSlide, gdb_symbols
from kswgdb.watch.engine import EngineResult
from kswgdb.watch.hits import Hit
from kswgdb.watch.kaslr import placement_ending
from kswgdb.watch.resolve import ResolvedWatch


@dataclass
class RunReport:
    """What happened, for rendering and for the exit code."""

    accel: AccelDecision
    watches: list[ResolvedWatch]
    result: EngineResult
    summary: list[dict]
    guest_exit: GuestExit | None
    verdict: str | None
    console_log: list[str]
    seconds: float
    vmcore: Path | None = None
    packets: int = 0
    steps: int = 0
    unexpected_stops: int = 0
    max_live_watches: int = 0
    symbols: Path | None = None
    poll_hits: list[PollHit] = field(default_factory=list)
    polls: list[PollStatus] = field(default_factory=list)
    poll_vmcores: list[Path] = field(default_factory=list)
    emulated: int = 0                  # breakpoint instructions run on the host
    emulation_refusals: dict[str, int] = field(default_factory=dict)  # why stepped instead
    backtrace: str = "fp"              # how hit backtraces were unwound: "gdb" | "fp"
    gdb_pid: int | None = None         # the backtrace gdb, if one was started (now gone)
    backtrace_failures: list[str] = field(default_factory=list)  # gdb failed: fp used
    backtrace_seconds: list[float] = field(default_factory=list)  # per gdb backtrace
    fault: str | None = None           # why the run ended badly (exit status 3), or None
    unarmed: list[str] = field(default_factory=list)   # one line per never-armed watch
    slide: KernelSlide | None = None   # where the kernel was found (KASLR)
    qemu_stderr: list[str] = field(default_factory=list)  # QEMU's last lines, after a fault
    qemu_log: Path | None = None       # its whole log, kept beside the event log
    lost_stops: int = 0                # watch stops QEMU lost on another vCPU, collected
    hit_count: int = 0                 # all hits; `hits` keeps the latest RunOptions.keep_hits
    pool: str = ""                     # the slot pool shared by every config, in one line
    frozen: FrozenCore | None = None   # the vmcore's ticks at the dump and how to open it

    @property
    def hits(self) -> list[Hit]:
        return self.result.hits


class _CallbackSink(Sink):
    """The callbacks `WatchSession` has always taken, as one sink."""

    def __init__(self, session: WatchSession) -> None:
        self._session = session

    def status(self, text: str) -> None:
        self._session.on_status(text)

    def hit(self, hit: Hit) -> None:
        if self._session.on_hit is not None:
            self._session.on_hit(hit)

    def poll_hit(self, hit: PollHit) -> None:
        if self._session.on_poll_hit is not None:
            self._session.on_poll_hit(hit)

    def logged(self, line: str) -> None:
        echo = self._session.log_echo
        if echo is not None:
            echo.write(line + "\n")
            echo.flush()


class WatchSession:
    """Prepare once, run once (`kswgdb run`, the benchmarks, the integration tests).

    ``sink`` receives everything the run reports; the older ``on_hit``,
    ``on_status``, ``log_echo`` and ``on_poll_hit`` callbacks are the same
    thing one by one and are used when no sink is given.
    """

    def __init__(
        self,
        options: RunOptions,
        on_hit: Callable[[Hit], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        log_echo=None,
        sink: Sink | None = None,
        rig_options: dict | None = None,
    ) -> None:
        self.options = options
        self.on_hit = on_hit
        self.on_status = on_status or (lambda _msg: None)
        self.log_echo = log_echo
        self.on_poll_hit: Callable[[PollHit], None] | None = None
        self.sink = sink or _CallbackSink(self)
        self.plan: Plan | None = None
        #: The vmcore of a hit that froze the guest, once dumped.
        self.vmcore: Path | None = None
        self.frozen: FrozenCore | None = None
        #: Extra `Rig` arguments (tests give fake machine, stub and target factories).
        self.rig_options = rig_options or {}
        #: The rig while `run` runs (tests and tools look at its machine or polls).
        self.rig: Rig | None = None

    # ----------------------------------------------------------- prepare
    def prepare(self) -> Plan:
        """Check every input; raise `BadInput` before anything is started."""
        if self.plan is None:
            self.plan = prepare(self.options)
        return self.plan

    @property
    def resolved(self) -> list[ResolvedWatch]:
        return self.plan.watches if self.plan is not None else []

    @property
    def specs(self) -> list:
        return self.plan.specs if self.plan is not None else []

    @property
    def phys(self):
        return self.rig.phys if self.rig is not None else None

    @property
    def placement(self):
        """Where `run` found the kernel (`kswgdb.watch.kaslr.KernelPlacement`), once it did."""
        return self.rig.placement if self.rig is not None else None

    # --------------------------------------------------------------- run
    def run(self) -> RunReport:
        plan = self.prepare()
        stub = bool(plan.specs or plan.module_watches)
        self.rig = open_rig(plan, self.sink, stub=stub, **self.rig_options)
        with self.rig as rig:
            if stub:
                result, vmcore = self._watch(rig)
            else:
                result, vmcore = self._poll_only(rig)
            console = rig.machine.console.lines() if rig.machine is not None else []
        return self._report(rig, result, vmcore, console)

    def _watch(self, rig: Rig) -> tuple[EngineResult, Path | None]:
        """The engine handles stops until the run ends; keep a frozen moment."""
        plan, opts = rig.plan, rig.plan.options
        assert rig.engine is not None and rig.machine is not None
        self.sink.running(progress_reader(rig))
        self.sink.status("guest running, watches installed")
        deadline = rig.started + opts.timeout
        try:
            result = placement_ending(rig.placement, rig.engine.hits) if rig.placement \
                else None
            result = result or rig.engine.run(
                deadline=deadline, should_stop=rig.should_stop,
                halt=rig.phys.freeze.is_set if rig.phys is not None else None)
        except StubClosed as exc:
            # QEMU went away in the middle of a request: same as an exit stop.
            result = EngineResult("exit", hits=rig.engine.hits, detail=str(exc))
        if rig.phys is not None:
            rig.phys.stop()         # a hit in hand (vCPU snapshot, dump) finishes first
        vmcore, fault, guest_exit = None, None, None
        if result.reason == "freeze" and opts.on_hit == "detach":
            pass                    # attach: the rig removes its watches and detaches
        elif result.reason == "freeze":
            self.frozen = freeze_vmcore(rig)
            vmcore = self.vmcore = self.frozen.path
            if plan.listener is not None:
                self._lend_to_gdb(rig, result.hits[-1].cpu + 1)
        elif result.reason == "stopped" and rig.watchdog is not None:
            fault = rig.watchdog.reason
        if result.reason in ("deadline", "stopped"):
            rig.interrupt()
        if result.reason == "exit":
            guest_exit = rig.machine.wait_exit(5.0)
            if rig.machine.exit_nudge.nudged:
                self.sink.status(NUDGED)
            fault = exit_fault(guest_exit, result.detail, normal_exits(plan.image.guest))
        rig.end(fault or result.reason, fault, guest_exit, result)
        return result, vmcore

    def _poll_only(self, rig: Rig) -> tuple[EngineResult, Path | None]:
        """No --watch: no gdbstub at all; the guest runs freely while the poller samples."""
        opts = rig.plan.options
        assert rig.machine is not None and rig.phys is not None
        rig.machine.resume()
        self.sink.running(progress_reader(rig))
        self.sink.status("guest running, polls sampling")
        deadline = rig.started + opts.timeout
        reason, guest_exit = "deadline", None
        while time.monotonic() < deadline:
            ended = rig.machine.wait_exit(min(0.05, max(0.0, deadline - time.monotonic())))
            if ended.kind != "timeout":
                reason, guest_exit = "exit", ended
                break
            if rig.poll_frozen:
                reason = "freeze"
                break
            if rig.phys.poller.failure is not None:
                raise rig.phys.poller.failure
        rig.end(reason, None, guest_exit)
        return EngineResult(reason), None

    def report_so_far(self) -> RunReport | None:
        """After `run` ended by a signal or an exception: what the run had, from its rig.

        None if the rig was never made. The rig has released everything and written
        ``end`` already; the hits, the summary, the polls and any vmcore are kept.
        """
        rig = self.rig
        if rig is None or not rig.closed:
            return None
        try:
            console = rig.machine.console.lines() if rig.machine is not None else []
        except Exception:  # noqa: BLE001 - a machine that never launched has no console
            console = []
        hits = rig.engine.hits if rig.engine is not None else []
        return self._report(rig, EngineResult(rig.ending, hits=hits), self.vmcore, console)

    def _report(self, rig: Rig, result: EngineResult, vmcore: Path | None,
                console: list[str]) -> RunReport:
        plan, target, unwinder, phys = rig.plan, rig.target, rig.unwinder, rig.phys
        verdict = next((ln for ln in reversed(console) if "KSWTEST verdict" in ln), None)
        polls = {}
        if vmcore is None and phys is not None and phys.freeze.is_set() and phys.vmcores:
            vmcore = phys.vmcores[-1]       # a poll froze the guest (its dump is done now)
        frozen = self.frozen if self.frozen is not None and self.frozen.path == vmcore else (
            describe_vmcore(rig, vmcore) if vmcore is not None else None)
        if phys is not None:
            polls = {"poll_hits": list(phys.poller.hits), "polls": rig.poll_statuses,
                     "poll_vmcores": list(phys.vmcores)}
        watching = rig.engine is not None
        return RunReport(
            accel=plan.accel, watches=plan.watches if watching else [], result=result,
            summary=rig.summary, guest_exit=rig.guest_exit, verdict=verdict,
            console_log=console, seconds=rig.seconds, vmcore=vmcore,
            packets=getattr(target, "packets_sent", 0), steps=getattr(target, "steps", 0),
            emulated=getattr(target, "emulated", 0),
            emulation_refusals=dict(getattr(target, "refusals", {})),
            backtrace=plan.backtrace_mode if watching else "fp",
            gdb_pid=unwinder.gdb_pid if unwinder is not None else None,
            backtrace_failures=list(unwinder.failures) if unwinder is not None else [],
            backtrace_seconds=list(unwinder.seconds) if unwinder is not None else [],
            unexpected_stops=rig.engine.unexpected_stops if rig.engine is not None else 0,
            max_live_watches=rig.pool.high_water if rig.pool is not None else 0,
            symbols=plan.image.symbols, fault=rig.fault, unarmed=rig.unarmed,
            slide=rig.placement.slide if rig.placement is not None else None,
            qemu_stderr=rig.qemu_stderr, qemu_log=rig.qemu_log,
            lost_stops=getattr(target, "lost_collected", 0),
            hit_count=rig.engine.hit_count if rig.engine is not None else 0,
            pool=rig.pool.describe(plan.accel.accel) if rig.pool is not None else "",
            frozen=frozen, **polls,
        )

    def _lend_to_gdb(self, rig: Rig, thread: int) -> None:
        """Serve the frozen guest, read-only, to gdb sessions until the user ends the run.

        Ctrl-C is the documented way to end the listen: the run then ends as a frozen
        run does (summary, ``end``, the hits' exit status), not as an interrupted one.
        The signal handler has already killed QEMU; nothing after this needs it.
        """
        listener = rig.plan.listener
        assert listener is not None and rig.client is not None
        symbols = gdb_symbols(rig.plan.image.symbols,
                              rig.placement.slide if rig.placement else None)
        self.sink.status(f"guest frozen; attach: gdb {symbols} "
                         f"-ex 'target remote {listener.address}'  (Ctrl-C ends the run)")
        try:
            while True:
                Relay(rig.client, None, thread).serve(listener.accept(None))
        except KeyboardInterrupt:
            reaper.consume(signal.SIGINT)
            self.sink.status("gdb listen ended (Ctrl-C)")
