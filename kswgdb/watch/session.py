"""One watched run: image -> symbols -> configs -> QEMU -> gdbstub -> engine.

Everything that can fail because of the user's input (image, config strings,
offsets) is checked in `prepare` *before* QEMU starts, so bad input costs
milliseconds and leaves nothing running. `run` owns the machine and the stub
connection for exactly its own duration: whatever happens inside, the machine
is closed on the way out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kswgdb import image as image_mod
from kswgdb.errors import BadInput
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.qemu.accel import AccelDecision, decide
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.machine import Machine
from kswgdb.symbols.program import Program
from kswgdb.watch.config import parse_watches
from kswgdb.watch.engine import Engine, EngineResult
from kswgdb.watch.gdb_backtrace import GdbUnwinder, gdb_available
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
    emulate: bool = True               # leave breakpoints by host emulation, not steps
    backtrace: str = "auto"            # "gdb" | "fp" | "auto" (gdb when installed)


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
    emulated: int = 0                  # breakpoint instructions run on the host
    emulation_refusals: dict[str, int] = field(default_factory=dict)  # why stepped instead
    backtrace: str = "fp"              # how hit backtraces were unwound: "gdb" | "fp"
    gdb_pid: int | None = None         # the backtrace gdb, if one was started (now gone)
    backtrace_failures: list[str] = field(default_factory=list)  # gdb failed: fp used

    @property
    def hits(self) -> list[Hit]:
        return self.result.hits


BACKTRACE_WHAT = {
    "gdb": "gdb (DWARF CFI unwinder, through a read-only relay of the stub connection)",
    "fp": "frame-pointer walk (RBP chain)",
}


def resolve_backtrace_mode(requested: str, gdb: str = "gdb") -> str:
    """``auto`` is gdb when it is installed, else the frame-pointer walk."""
    if requested == "auto":
        return "gdb" if gdb_available(gdb) else "fp"
    if requested == "gdb" and not gdb_available(gdb):
        raise BadInput("--backtrace gdb: gdb is not installed (install gdb or use "
                       "--backtrace fp)")
    if requested not in BACKTRACE_WHAT:
        raise BadInput(f"--backtrace {requested!r}: expected gdb or fp")
    return requested


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
        self.backtrace_mode = "fp"

    # ----------------------------------------------------------- prepare
    def prepare(self) -> None:
        """Check every input; raise `BadInput` before anything is started."""
        opts = self.options
        if not opts.watches:
            raise BadInput("no --watch given: nothing to watch (try `kswgdb disasm FUNC`)")
        self.image = image_mod.load(opts.image)
        self.program = Program.load(self.image.symbols)
        self.backtrace_mode = resolve_backtrace_mode(opts.backtrace)
        configs = parse_watches(opts.watches)
        self.resolved = [resolve_watch(cfg, self.program) for cfg in configs]
        self.specs = [r.to_arm_spec() for r in self.resolved]

    # --------------------------------------------------------------- run
    def run(self) -> RunReport:
        if self.image is None:
            self.prepare()
        assert self.image is not None and self.program is not None
        opts = self.options
        accel = decide(opts.accel)
        self.on_status(f"accelerator: {accel.accel} ({accel.reason})")
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
        self.on_status(f"backtraces: {BACKTRACE_WHAT[self.backtrace_mode]}")
        unwinder: GdbUnwinder | None = None
        started = time.monotonic()
        try:
            with Machine(self.image, accel=accel, scenario=opts.scenario,
                         extra_cmdline=opts.cmdline, paused=True) as machine:
                log.write("start", image=str(self.image.path), accel=accel.accel,
                          accel_reason=accel.reason, scenario=opts.scenario,
                          watches=[r.describe() for r in self.resolved],
                          configs=[s.text for s in self.specs],
                          backtrace=self.backtrace_mode)
                client = RemoteClient.connect(str(machine.gdb_socket), timeout=10.0)
                try:
                    client.handshake()
                    target = StubTarget(client, emulate=opts.emulate,
                                        queue_watchpoints=accel.accel == "tcg")
                    symbolizer = ProgramSymbolizer(self.program)
                    if self.backtrace_mode == "gdb":
                        unwinder = GdbUnwinder(target, self.image.symbols, symbolizer)
                    engine = Engine(
                        target, self.specs, layout, symbolizer, pool,
                        log=log, on_hit=self.on_hit,
                        freeze_on_hit=opts.on_hit == "freeze", exit_hook_addr=exit_hook,
                        backtracer=unwinder,
                    )
                    engine.install()
                    self.on_status("guest running, watches installed")
                    deadline = started + opts.timeout
                    result = engine.run(deadline=deadline)
                    vmcore = None
                    if result.reason == "freeze":
                        vmcore = self._freeze(machine)
                    elif result.reason in ("deadline", "stopped"):
                        client.interrupt()
                finally:
                    if unwinder is not None:
                        unwinder.close()        # gdb never outlives the run
                    client.close()
                guest_exit = None
                if result.reason == "exit":
                    guest_exit = machine.wait_exit(10.0)
                console = machine.console.lines()
        finally:
            summary = engine.summary() if "engine" in locals() else []
            log.write("summary", watches=summary)
            log.close()
        verdict = next((ln for ln in reversed(console) if "KSWTEST verdict" in ln), None)
        return RunReport(
            accel=accel, watches=self.resolved, result=result, summary=summary,
            guest_exit=guest_exit, verdict=verdict, console_log=console,
            seconds=time.monotonic() - started, vmcore=vmcore,
            packets=target.packets_sent, steps=target.steps,
            emulated=target.emulated, emulation_refusals=dict(target.refusals),
            backtrace=self.backtrace_mode,
            gdb_pid=unwinder.gdb_pid if unwinder is not None else None,
            backtrace_failures=list(unwinder.failures) if unwinder is not None else [],
            unexpected_stops=engine.unexpected_stops, max_live_watches=pool.high_water,
            symbols=self.image.symbols,
        )

    def _freeze(self, machine: Machine) -> Path:
        """Keep the moment: a vmcore through QMP while the guest is stopped."""
        where = self.options.log_path.parent if self.options.log_path else Path.cwd()
        path = where / f"kswgdb-vmcore-{time.strftime('%Y%m%d-%H%M%S')}.elf"
        machine.qmp.dump_guest_memory(path)
        return path
