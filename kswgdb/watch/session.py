"""One watched run: image -> symbols -> configs -> QEMU -> gdbstub -> engine.

Everything that can fail because of the user's input (image, config strings,
offsets) is checked in `prepare` *before* QEMU starts, so bad input costs
milliseconds and leaves nothing running. `run` owns the machine and the stub
connection for exactly its own duration: whatever happens inside, the machine
is closed on the way out.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kswgdb import image as image_mod
from kswgdb.errors import BadInput
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import StubClosed, StubError
from kswgdb.gdbstub.relay import Relay
from kswgdb.gdbstub.server import Listener
from kswgdb.qemu.accel import AccelDecision, decide
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.machine import Machine
from kswgdb.symbols.match import check_kernel_matches
from kswgdb.symbols.program import Program
from kswgdb.watch.checks import check_alignment, check_stack_reach, with_alignment_warning
from kswgdb.watch.config import parse_watches
from kswgdb.watch.engine import Engine, EngineResult
from kswgdb.watch.faults import Watchdog, exit_fault
from kswgdb.watch.hits import EventLog, Hit
from kswgdb.watch.layout import layout_for
from kswgdb.watch.resolve import ResolvedWatch, resolve_watch
from kswgdb.watch.slots import TCG_DEFAULT_SLOTS, SlotPool
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.stub_target import StubTarget
from kswgdb.watch.symbolize import ProgramSymbolizer


@dataclass
class RunOptions:
    """What a user asked for on the command line (or a test, or the benchmark)."""

    image: str | Path | None = None
    scenario: int | None = None
    watches: list[str] = field(default_factory=list)
    accel: str = "auto"
    timeout: float = 120.0
    cmdline: str = ""
    on_hit: str = "continue"           # "continue" | "freeze"
    log_path: Path | None = None
    slots: int | None = None
    hang_timeout: float = 0.0          # > 0: a guest silent and stop-less this long is a fault
    gdb_listen: tuple[str, int] | None = None  # freeze: lend the frozen guest to gdb over TCP


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
    fault: str | None = None           # why the run ended badly (exit status 3), or None

    @property
    def hits(self) -> list[Hit]:
        return self.result.hits


class WatchSession:
    """Prepare once, run once."""

    def __init__(
        self,
        options: RunOptions,
        on_hit: Callable[[Hit], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        log_echo=None,
    ) -> None:
        self.options = options
        self.on_hit = on_hit
        self.on_status = on_status or (lambda _msg: None)
        self.log_echo = log_echo
        self.image: image_mod.Image | None = None
        self.program: Program | None = None
        self.resolved: list[ResolvedWatch] = []
        self.specs: list[ArmSpec] = []

    # ----------------------------------------------------------- prepare
    def prepare(self) -> None:
        """Check every input; raise `BadInput` before anything is started."""
        opts = self.options
        if not opts.watches:
            raise BadInput("no --watch given: nothing to watch (try `kswgdb disasm FUNC`)")
        self.image = image_mod.load(opts.image)
        self.program = Program.load(self.image.symbols)
        configs = parse_watches(opts.watches)
        self.resolved = [resolve_watch(cfg, self.program) for cfg in configs]
        self.specs = [r.to_arm_spec() for r in self.resolved]
        layout = layout_for(self.program, self.image.guest)
        for resolved in self.resolved:
            check_stack_reach(resolved, layout.thread_size)
        self.resolved = [with_alignment_warning(r) for r in self.resolved]
        check_kernel_matches(self.image.kernel, self.image.symbols,
                             sorted({r.function.name for r in self.resolved}))

    # --------------------------------------------------------------- run
    def run(self) -> RunReport:
        if self.image is None:
            self.prepare()
        assert self.image is not None and self.program is not None
        opts = self.options
        accel = decide(opts.accel)
        self.on_status(f"accelerator: {accel.accel} ({accel.reason})")
        for resolved in self.resolved:
            check_alignment(resolved, accel.accel)
        layout = layout_for(self.program, self.image.guest)
        max_watch = max((s.max_watch for s in self.specs), default=0)
        pool = SlotPool.for_run(accel.accel, max_watch, opts.slots or TCG_DEFAULT_SLOTS)
        exit_hook = None
        if layout.exit_function:
            try:
                exit_hook = self.program.function(layout.exit_function).addr
            except BadInput:
                exit_hook = None
        log = EventLog(opts.log_path, echo=self.log_echo)
        started = time.monotonic()
        ending = "interrupted"
        fault: str | None = None
        try:
            with Machine(self.image, accel=accel, scenario=opts.scenario,
                         extra_cmdline=opts.cmdline, paused=True) as machine:
                log.write("start", image=str(self.image.path), accel=accel.accel,
                          accel_reason=accel.reason, scenario=opts.scenario,
                          watches=[r.describe() for r in self.resolved],
                          configs=[s.text for s in self.specs])
                client = RemoteClient.connect(str(machine.gdb_socket), timeout=10.0)
                try:
                    client.handshake()
                    target = StubTarget(client)
                    engine = Engine(
                        target, self.specs, layout, ProgramSymbolizer(self.program), pool,
                        log=log, on_hit=self.on_hit,
                        freeze_on_hit=opts.on_hit == "freeze", exit_hook_addr=exit_hook,
                    )
                    engine.install()
                    self.on_status("guest running, watches installed")
                    deadline = started + opts.timeout
                    watchdog = Watchdog(
                        activity=lambda: machine.console.mark() + target.packets_sent,
                        qmp_lost=lambda: not machine.qmp.connected and machine.running,
                        hang_timeout=opts.hang_timeout)
                    try:
                        result = engine.run(deadline=deadline, should_stop=watchdog.should_stop)
                    except StubClosed as exc:
                        # QEMU went away in the middle of a request: same as an exit stop.
                        result = EngineResult("exit", hits=engine.hits, detail=str(exc))
                    vmcore = None
                    if result.reason == "freeze":
                        vmcore = self._freeze(machine)
                        if opts.gdb_listen is not None:
                            self._lend_to_gdb(client, opts.gdb_listen, result.hits[-1].cpu + 1)
                    elif result.reason == "stopped":
                        fault = watchdog.reason
                    if result.reason in ("deadline", "stopped") and not client.transport.closed:
                        with contextlib.suppress(StubError):
                            client.interrupt()
                finally:
                    client.close()
                guest_exit = None
                if result.reason == "exit":
                    guest_exit = machine.wait_exit(5.0)
                    fault = exit_fault(guest_exit, result.detail)
                console = machine.console.lines()
                ending = fault or result.reason
        finally:
            summary = engine.summary() if "engine" in locals() else []
            log.write("summary", watches=summary)
            failure = sys.exc_info()[1]
            if failure is not None:
                ending, fault = _ending_of(failure), fault or "exception"
            log.write("end", reason=ending, fault=fault is not None)
            log.close()
        verdict = next((ln for ln in reversed(console) if "KSWTEST verdict" in ln), None)
        return RunReport(
            accel=accel, watches=self.resolved, result=result, summary=summary,
            guest_exit=guest_exit, verdict=verdict, console_log=console,
            seconds=time.monotonic() - started, vmcore=vmcore,
            packets=target.packets_sent, steps=target.steps,
            unexpected_stops=engine.unexpected_stops, max_live_watches=pool.high_water,
            symbols=self.image.symbols, fault=fault,
        )

    def _lend_to_gdb(self, client: RemoteClient, address: tuple[str, int], thread: int) -> None:
        """Serve the frozen guest, read-only, to gdb sessions until the user ends the run."""
        listener = Listener(port=address[1])
        try:
            self.on_status(f"guest frozen; attach: gdb {self.image.symbols if self.image else ''} "
                           f"-ex 'target remote {listener.address}'  (Ctrl-C ends the run)")
            while True:
                Relay(client, None, thread).serve(listener.accept(None))
        finally:
            listener.close()

    def _freeze(self, machine: Machine) -> Path:
        """Keep the moment: a vmcore through QMP while the guest is stopped."""
        where = self.options.log_path.parent if self.options.log_path else Path.cwd()
        path = where / f"kswgdb-vmcore-{time.strftime('%Y%m%d-%H%M%S')}.elf"
        machine.qmp.dump_guest_memory(path)
        return path


def _ending_of(exc: BaseException) -> str:
    """One line for the log's ``end`` event when the run ended by an exception."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if isinstance(exc, SystemExit):
        return f"terminated (exit status {exc.code})"
    return " ".join(str(exc).split()) or type(exc).__name__
