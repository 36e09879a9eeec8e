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
from kswgdb.watch.hits import EventLog, Hit
from kswgdb.watch.layout import layout_for
from kswgdb.watch.modules import ModuleArmer, ModuleSymbolizer, ModuleWatch, resolve_in_module
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
        self.module_watches: list[ModuleWatch] = []

    # ----------------------------------------------------------- prepare
    def prepare(self) -> None:
        """Check every input; raise `BadInput` before anything is started."""
        opts = self.options
        if not opts.watches:
            raise BadInput("no --watch given: nothing to watch (try `kswgdb disasm FUNC`)")
        self.image = image_mod.load(opts.image)
        self.program = Program.load(self.image.symbols)
        configs = parse_watches(opts.watches)
        for cfg in configs:
            in_module = None
            if not self.program.symtab.lookup_all(cfg.func):
                in_module = resolve_in_module(cfg, self.image.modules_dir)
            if in_module is not None:
                self.module_watches.append(in_module)
            else:
                self.resolved.append(resolve_watch(cfg, self.program))
        self.specs = [r.to_arm_spec() for r in self.resolved]
        self.resolved += [m.resolved for m in self.module_watches]

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
        started = time.monotonic()
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
                    symbolizer = (ModuleSymbolizer(self.program) if self.module_watches
                                  else ProgramSymbolizer(self.program))
                    engine = Engine(
                        target, self.specs, layout, symbolizer, pool,
                        log=log, on_hit=self.on_hit,
                        freeze_on_hit=opts.on_hit == "freeze", exit_hook_addr=exit_hook,
                    )
                    engine.install()
                    if self.module_watches:
                        assert isinstance(symbolizer, ModuleSymbolizer)
                        ModuleArmer(self.program, self.module_watches, symbolizer,
                                    self.on_status).install(engine)
                    self.on_status("guest running, watches installed")
                    deadline = started + opts.timeout
                    result = engine.run(deadline=deadline)
                    vmcore = None
                    if result.reason == "freeze":
                        vmcore = self._freeze(machine)
                    elif result.reason in ("deadline", "stopped"):
                        client.interrupt()
                finally:
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
            unexpected_stops=engine.unexpected_stops, max_live_watches=pool.high_water,
            symbols=self.image.symbols,
        )

    def _freeze(self, machine: Machine) -> Path:
        """Keep the moment: a vmcore through QMP while the guest is stopped."""
        where = self.options.log_path.parent if self.options.log_path else Path.cwd()
        path = where / f"kswgdb-vmcore-{time.strftime('%Y%m%d-%H%M%S')}.elf"
        machine.qmp.dump_guest_memory(path)
        return path
