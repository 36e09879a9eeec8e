"""One watched run: image -> symbols -> configs -> QEMU -> gdbstub -> engine.

Everything that can fail because of the user's input (image, config strings,
offsets) is checked in `prepare` *before* QEMU starts, so bad input costs
milliseconds and leaves nothing running. `run` owns the machine and the stub
connection for exactly its own duration: whatever happens inside, the machine
is closed on the way out.
"""

from __future__ import annotations

import contextlib
import signal
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
from kswgdb.qemu import reaper
from kswgdb.qemu.accel import AccelDecision, decide
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.machine import Machine
from kswgdb.symbols.match import check_kernel_matches
from kswgdb.symbols.program import Program
from kswgdb.symbols.slide import KernelSlide, gdb_symbols
from kswgdb.watch.checks import check_alignment, check_stack_reach, with_alignment_warning
from kswgdb.watch.config import parse_watches
from kswgdb.watch.engine import Engine, EngineResult
from kswgdb.watch.faults import Watchdog, exit_fault, normal_exits
from kswgdb.watch.gdb_backtrace import GdbUnwinder, gdb_available
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hang import (
    DEFAULT_HANG_TIMEOUT,
    GuestClock,
    StallReporter,
    tick_physical_address,
)
from kswgdb.watch.hits import EventLog, Hit
from kswgdb.watch.kaslr import KernelPlacement, place_kernel, placement_ending, slide_fields
from kswgdb.watch.layout import exit_hook_address, layout_for
from kswgdb.watch.loststops import LostStopFinder
from kswgdb.watch.modules import (
    ModuleArmer,
    ModuleFinder,
    ModuleSymbolizer,
    ModuleWatch,
    resolve_in_module,
)
from kswgdb.watch.physrun import PhysWatch
from kswgdb.watch.pollconfig import PollSpec, parse_polls
from kswgdb.watch.poller import PollHit, PollStatus
from kswgdb.watch.qemucrash import keep_qemu_log
from kswgdb.watch.resolve import ResolvedWatch, resolve_watch
from kswgdb.watch.slots import TCG_DEFAULT_SLOTS, SlotPool
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.stub_target import StubTarget
from kswgdb.watch.symbolize import ProgramSymbolizer
from kswgdb.watch.unarmed import run_warnings


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
    polls: list[str] = field(default_factory=list)   # --poll strings (physical memory)
    emulate: bool = True               # leave breakpoints by host emulation, not steps
    backtrace: str = "auto"            # "gdb" | "fp" | "auto" (gdb when installed)
    release_by_read: bool = False      # TCG: see releases by read watchpoints (readrelease)
    hang_timeout: float = DEFAULT_HANG_TIMEOUT  # no console, stop or tick this long: a wedge
                                       # (0: never; see kswgdb.watch.hang)
    gdb_listen: tuple[str, int] | None = None  # freeze: lend the frozen guest to gdb over TCP
    allow_unarmed: bool = False        # a never-armed watch is no failure (exit 0, not 4)
    keep_hits: int | None = 1000       # hits kept in RunReport.hits (the log has them all)


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
        self.layout: GuestLayout | None = None       # from prepare, for run
        self.poll_specs: list[PollSpec] = []
        self.on_poll_hit: Callable[[PollHit], None] | None = None
        #: The running poller's owner, while `run` runs (the TUI adds polls through it).
        self.phys: PhysWatch | None = None
        self.backtrace_mode = "fp"
        self.module_watches: list[ModuleWatch] = []
        self.placement: KernelPlacement | None = None   # where run found the kernel

    # ----------------------------------------------------------- prepare
    def prepare(self) -> None:
        """Check every input; raise `BadInput` before anything is started."""
        opts = self.options
        self.poll_specs = parse_polls(opts.polls)
        if not opts.watches and not self.poll_specs:
            raise BadInput("no --watch given (and no --poll): nothing to watch "
                           "(try `kswgdb disasm FUNC`)")
        self.image = image_mod.load(opts.image)
        self.program = Program.load(self.image.symbols)
        self.backtrace_mode = resolve_backtrace_mode(opts.backtrace)
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
        self.layout = layout = layout_for(self.program, self.image.guest)
        for resolved in self.resolved:
            check_stack_reach(resolved, layout.thread_size)
        self.resolved = [with_alignment_warning(r) for r in self.resolved]
        check_kernel_matches(self.image.kernel, self.image.symbols,
                             sorted({f"{r.function.name}@{r.function.addr:#x}"
                                     for r in self.resolved}))
        self.resolved += [m.resolved for m in self.module_watches]

    # --------------------------------------------------------------- run
    def run(self) -> RunReport:
        if self.image is None:
            self.prepare()
        if not self.specs and not self.module_watches:
            return self._run_polls_only()
        assert self.image is not None and self.program is not None
        opts = self.options
        accel = decide(opts.accel)
        self.on_status(f"accelerator: {accel.accel} ({accel.reason})")
        for resolved in self.resolved:
            check_alignment(resolved, accel.accel)
        layout = self.layout
        assert layout is not None
        pool = SlotPool.for_run(accel.accel, opts.slots or TCG_DEFAULT_SLOTS)
        log = EventLog(opts.log_path, echo=self.log_echo)
        self.on_status(f"backtraces: {BACKTRACE_WHAT[self.backtrace_mode]}")
        unwinder: GdbUnwinder | None = None
        started = time.monotonic()
        ending = "interrupted"
        fault: str | None = None
        qemu_said: list[str] = []
        qemu_log: Path | None = None
        try:
            with Machine(self.image, accel=accel, scenario=opts.scenario,
                         extra_cmdline=opts.cmdline, paused=True,
                         shared_ram="file" if self.poll_specs else False) as machine:
                client = RemoteClient.connect(str(machine.gdb_socket), timeout=10.0)
                try:
                    client.handshake()
                    target = StubTarget(client, emulate=opts.emulate,
                                        queue_watchpoints=accel.accel == "tcg",
                                        lost_stops=LostStopFinder(self.program.disasm)
                                        if accel.accel == "tcg" else None)
                    # KASLR: the guest runs to its entry point; from here on every
                    # address is the guest's (kswgdb.watch.kaslr).
                    self.placement = placement = place_kernel(
                        target, self.program, self.image.guest, accel.accel,
                        started + opts.timeout)
                    program = placement.program
                    if target.lost_stops is not None:
                        target.lost_stops.disasm = program.disasm    # the guest's addresses
                    specs = placement.specs(self.specs)
                    if program is not self.program:
                        layout = layout_for(program, self.image.guest)
                    self.on_status(placement.slide.describe())
                    log.write("start", image=str(self.image.path), accel=accel.accel,
                              accel_reason=accel.reason, scenario=opts.scenario,
                              watches=[r.describe() for r in self.resolved],
                              configs=[s.text for s in self.specs],
                              polls=[p.canonical() for p in self.poll_specs],
                              backtrace=self.backtrace_mode, **slide_fields(placement))
                    if self.poll_specs:
                        self._start_polls(machine, log, engine_attached=True)
                    exit_hook = exit_hook_address(program, layout)
                    modules_dir = self.image.modules_dir
                    with_modules = self.module_watches or (
                        self.image.guest == "linux" and modules_dir is not None
                        and modules_dir.is_dir())
                    symbolizer = (ModuleSymbolizer(program) if with_modules
                                  else ProgramSymbolizer(program))
                    if self.backtrace_mode == "gdb":
                        finder = None
                        if isinstance(symbolizer, ModuleSymbolizer) and modules_dir is not None:
                            with contextlib.suppress(BadInput):
                                finder = ModuleFinder(program, modules_dir, symbolizer,
                                                      target.read)
                        unwinder = GdbUnwinder(target, self.image.symbols, symbolizer,
                                               find_modules=finder,
                                               symbol_offset=placement.slide.virtual)
                    engine = Engine(
                        target, specs, layout, symbolizer, pool,
                        log=log, on_hit=self.on_hit,
                        freeze_on_hit=opts.on_hit == "freeze", exit_hook_addr=exit_hook,
                        backtracer=unwinder,
                        release_by_read=opts.release_by_read and accel.accel == "tcg",
                        keep_hits=opts.keep_hits,
                    )
                    engine.install()
                    if self.module_watches:
                        assert isinstance(symbolizer, ModuleSymbolizer)
                        ModuleArmer(program, self.module_watches, symbolizer,
                                    self.on_status).install(engine)
                    self.on_status("guest running, watches installed")
                    deadline = started + opts.timeout
                    ticks = GuestClock(machine, tick_physical_address(layout.ticks_addr,
                                                                      layout.flavour))
                    watchdog = Watchdog(
                        activity=lambda: machine.console.mark() + target.packets_sent + ticks(),
                        qmp_lost=lambda: not machine.qmp.connected and machine.running,
                        hang_timeout=opts.hang_timeout)
                    stalls = StallReporter(machine.console.lines, machine.console.mark,
                                           lambda line: self._stall(log, line))
                    phys = self.phys

                    def should_stop() -> bool:
                        # A poll's freeze stops the engine too; so does a hang or lost QMP.
                        stalls.check()
                        return (phys is not None and phys.freeze.is_set()) \
                            or watchdog.should_stop()

                    try:
                        result = placement_ending(placement, engine.hits) or engine.run(
                            deadline=deadline, should_stop=should_stop,
                            halt=phys.freeze.is_set if phys is not None else None)
                    except StubClosed as exc:
                        # QEMU went away in the middle of a request: same as an exit stop.
                        result = EngineResult("exit", hits=engine.hits, detail=str(exc))
                    if self.phys is not None:
                        self.phys.stop()    # a hit in hand (vCPU snapshot, dump) finishes first
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
                    if unwinder is not None:
                        unwinder.close()        # gdb never outlives the run
                    client.close()
                guest_exit = None
                if result.reason == "exit":
                    guest_exit = machine.wait_exit(5.0)
                    fault = exit_fault(guest_exit, result.detail,
                                       normal_exits(self.image.guest))
                if fault is not None:
                    qemu_said, qemu_log = keep_qemu_log(machine, opts.log_path)
                console = machine.console.lines()
                ending = fault or result.reason
        finally:
            polls = self._stop_polls()
            summary = engine.summary() if "engine" in locals() else []
            unarmed = run_warnings(summary, self.module_watches, self.placement,
                                   locals().get("result"), opts.timeout)
            if unarmed:
                log.write("unarmed", warnings=unarmed)
            log.write("summary", watches=summary, polls=[vars(p) for p in polls])
            failure = sys.exc_info()[1]
            if failure is not None:
                ending, fault = _ending_of(failure), fault or "exception"
            elif (signum := reaper.signalled()) is not None:
                # The signal handler's exception was lost on its way up and QEMU
                # is gone: the signal, not QEMU, ended the run.
                ending = ("interrupted (SIGINT)" if signum == signal.SIGINT
                          else f"terminated (exit status {128 + signum})")
                fault = fault or ending
            extra = {"qemu_stderr": qemu_said, "qemu_log": str(qemu_log)} if qemu_said else {}
            log.write("end", reason=ending, fault=fault is not None,
                      **_guest_exit_fields(locals().get("guest_exit")), **extra)
            log.close()
        verdict = next((ln for ln in reversed(console) if "KSWTEST verdict" in ln), None)
        if vmcore is None and self.phys is not None and self.phys.freeze.is_set():
            vmcore = self.phys.vmcores[-1] if self.phys.vmcores else None
        return RunReport(
            accel=accel, watches=self.resolved, result=result, summary=summary,
            guest_exit=guest_exit, verdict=verdict, console_log=console,
            seconds=time.monotonic() - started, vmcore=vmcore,
            packets=target.packets_sent, steps=target.steps,
            emulated=target.emulated, emulation_refusals=dict(target.refusals),
            backtrace=self.backtrace_mode,
            gdb_pid=unwinder.gdb_pid if unwinder is not None else None,
            backtrace_failures=list(unwinder.failures) if unwinder is not None else [],
            backtrace_seconds=list(unwinder.seconds) if unwinder is not None else [],
            unexpected_stops=engine.unexpected_stops, max_live_watches=pool.high_water,
            symbols=self.image.symbols, fault=fault, unarmed=unarmed,
            slide=self.placement.slide if self.placement is not None else None,
            qemu_stderr=qemu_said, qemu_log=qemu_log,
            lost_stops=target.lost_collected, hit_count=engine.hit_count,
            pool=pool.describe(accel.accel),
            **self._poll_report(polls),
        )

    def _stall(self, log: EventLog, line: str) -> None:
        """A kernel stall report on the console: said at once, and logged."""
        self.on_status(f"guest reports a stall: {line.strip()}")
        log.write("guest-stall", line=line.strip())

    # ------------------------------------------------------------- polls
    def _start_polls(self, machine: Machine, log: EventLog, engine_attached: bool) -> None:
        """Map the guest's RAM and start polling while the guest is still paused (-S)."""
        assert self.image is not None
        vmcores = self.options.log_path.parent if self.options.log_path else Path.cwd()
        placed = self.placement
        self.phys = PhysWatch(machine, placed.program if placed else self.program,
                              self.poll_specs, guest=self.image.guest,
                              log=log, on_hit=self.on_poll_hit,
                              engine_attached=engine_attached, vmcore_dir=vmcores,
                              slide=placed.slide if placed else None)
        self.phys.start()
        for line in self.phys.describe():
            self.on_status(line)
        log.write("polls", polls=self.phys.describe())

    def _stop_polls(self) -> list[PollStatus]:
        if self.phys is None:
            return []
        self.phys.stop()
        polls = self.phys.poller.polls()
        return polls

    def _poll_report(self, polls: list[PollStatus]) -> dict:
        phys = self.phys
        if phys is None:
            return {}
        phys.close()
        return {"poll_hits": list(phys.poller.hits), "polls": polls,
                "poll_vmcores": list(phys.vmcores)}

    def _run_polls_only(self) -> RunReport:
        """No --watch: no gdbstub at all; the guest runs freely while the poller samples."""
        assert self.image is not None
        opts = self.options
        accel = decide(opts.accel)
        self.on_status(f"accelerator: {accel.accel} ({accel.reason})")
        log = EventLog(opts.log_path, echo=self.log_echo)
        started = time.monotonic()
        polls: list[PollStatus] = []
        try:
            with Machine(self.image, accel=accel, scenario=opts.scenario,
                         extra_cmdline=opts.cmdline, paused=True, shared_ram="file",
                         gdb=False) as machine:
                log.write("start", image=str(self.image.path), accel=accel.accel,
                          accel_reason=accel.reason, scenario=opts.scenario, watches=[],
                          configs=[], polls=[p.canonical() for p in self.poll_specs])
                self._start_polls(machine, log, engine_attached=False)
                assert self.phys is not None
                machine.resume()
                self.on_status("guest running, polls sampling")
                deadline = started + opts.timeout
                reason, guest_exit = "deadline", None
                while time.monotonic() < deadline:
                    ended = machine.wait_exit(min(0.05, max(0.0, deadline - time.monotonic())))
                    if ended.kind != "timeout":
                        reason, guest_exit = "exit", ended
                        break
                    if self.phys.freeze.is_set():
                        reason = "freeze"
                        break
                    if self.phys.poller.failure is not None:
                        raise self.phys.poller.failure
                console = machine.console.lines()
                polls = self._stop_polls()
        finally:
            polls = polls or self._stop_polls()
            log.write("summary", watches=[], polls=[vars(p) for p in polls])
            log.close()
        verdict = next((ln for ln in reversed(console) if "KSWTEST verdict" in ln), None)
        extra = self._poll_report(polls)
        vmcores = extra.get("poll_vmcores", [])
        return RunReport(
            accel=accel, watches=[], result=EngineResult(reason), summary=[],
            guest_exit=guest_exit, verdict=verdict, console_log=console,
            seconds=time.monotonic() - started,
            vmcore=vmcores[-1] if reason == "freeze" and vmcores else None,
            symbols=self.image.symbols, **extra,
        )

    def _lend_to_gdb(self, client: RemoteClient, address: tuple[str, int], thread: int) -> None:
        """Serve the frozen guest, read-only, to gdb sessions until the user ends the run."""
        listener = Listener(port=address[1])
        try:
            symbols = gdb_symbols(self.image.symbols if self.image else "",
                                  self.placement.slide if self.placement else None)
            self.on_status(f"guest frozen; attach: gdb {symbols} "
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


def _guest_exit_fields(guest_exit: GuestExit | None) -> dict:
    """How the guest ended, for the log's ``end`` event (the kernel's panic line included)."""
    if guest_exit is None:
        return {}
    fields = {"guest_exit": guest_exit.kind, "guest_exit_reason": guest_exit.reason}
    if guest_exit.panic:
        fields["panic"] = guest_exit.panic
    return fields


def _ending_of(exc: BaseException) -> str:
    """One line for the log's ``end`` event when the run ended by an exception."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if isinstance(exc, SystemExit):
        return f"terminated (exit status {exc.code})"
    return " ".join(str(exc).split()) or type(exc).__name__
