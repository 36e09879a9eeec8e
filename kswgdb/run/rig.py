"""One guest wired for watching, and everything it holds: `Rig` and `open_rig`.

A rig owns, for one `Plan`: the event log, the machine (QEMU), the stub client
and its target, the symbolizer, the gdb unwinder, the engine and module armer,
the physical-memory polls, the watchdog and the ``--gdb-listen`` port. Each is
registered for release the moment it exists, so whatever way the rig ends
(normally, frozen at a hit, by an exception, a signal or QEMU going away) it
releases all of them, in reverse order, and the event log ends with
``summary`` and ``end``. Drivers (the one-shot run, the TUI's live controller)
only decide when to resume, stop and end.

Everything the rig reports while it runs goes to one `Sink`: status lines,
hits, poll hits and the event-log lines themselves.

Two phases, because of threads: `launch` starts QEMU and must run in the
thread that lives as long as the guest (PR_SET_PDEATHSIG follows the thread);
`attach` connects the stub and builds the engine and may run in a worker.
`open_rig` does both for a driver that needs no worker.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kswgdb.errors import BadInput, KswError
from kswgdb.gdb.backtrace import GdbUnwinder
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import ErrorReply, StubError
from kswgdb.plugin.engine import PluginEngine, PluginRunError, plugin_engine
from kswgdb.poll.physrun import PhysWatch
from kswgdb.poll.poller import PollHit, PollStatus
from kswgdb.qemu import reaper
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.machine import Machine
from kswgdb.run.consolelog import ConsoleRecorder
from kswgdb.run.faults import Watchdog
from kswgdb.run.hang import GuestClock, StallReporter, tick_physical_address
from kswgdb.run.prepare import BACKTRACE_WHAT, Plan
from kswgdb.run.progress import RunProgress
from kswgdb.run.qemucrash import keep_qemu_log
from kswgdb.run.startevent import start_fields
from kswgdb.run.stub_target import StubTarget
from kswgdb.symbols.program import Program
from kswgdb.watch.engine import Engine, EngineResult
from kswgdb.watch.hits import EventLog, Hit
from kswgdb.watch.kaslr import KernelPlacement, place_kernel, slide_fields
from kswgdb.watch.layout import exit_hook_address, layout_for
from kswgdb.watch.loststops import LostStopFinder
from kswgdb.watch.modules import ModuleArmer, ModuleFinder, ModuleSymbolizer
from kswgdb.watch.slots import TCG_DEFAULT_SLOTS, SlotPool
from kswgdb.watch.symbolize import ProgramSymbolizer
from kswgdb.watch.target import Target
from kswgdb.watch.unarmed import live_warnings, run_warnings


class Sink:
    """Where a rig's news goes; every method may be called from the poller's thread too.

    The defaults drop everything: a driver overrides what it shows.
    """

    def status(self, text: str) -> None:
        """A one-line progress message (accelerator, backtrace mode, polls...)."""

    def hit(self, hit: Hit) -> None:
        """A watch caught a write (already in the event log)."""

    def poll_hit(self, hit: PollHit) -> None:
        """A physical-memory poll saw a change (already in the event log)."""

    def logged(self, line: str) -> None:
        """One event-log line (JSON) as written: for a JSONL echo on stdout."""

    def running(self, progress: Callable[[], RunProgress]) -> None:
        """The guest is about to run: ``progress`` reads how far it got (any thread)."""

    def console(self, line: str) -> None:
        """One line of the guest's console (already in the event log), on its reader thread."""


class _SinkEcho:
    """The file-like echo `EventLog` writes to, turned into `Sink.logged` calls."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, text: str) -> None:
        self._sink.logged(text.rstrip("\n"))

    def flush(self) -> None:
        pass


class LockedSymbols:
    """A symbolizer or program serialised by one lock across threads.

    The engine, the poller's thread and an interactive user's config checks
    read the same ELF/DWARF file objects; pyelftools streams are not safe to
    seek from two threads at once. Used at hits and checks only, never per stop.
    """

    def __init__(self, inner: Any, lock: threading.Lock) -> None:
        self._inner = inner
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return locked


class Rig:
    """The resources of one watched guest (module docstring): `launch`, `attach`, `close`."""

    def __init__(self, plan: Plan, sink: Sink | None = None, *, stub: bool = True,
                 interactive: bool = False,
                 machine_factory: Callable[..., Machine] = Machine,
                 connect: Callable[..., RemoteClient] | None = None,
                 target_factory: Callable[..., Target] | None = None,
                 unwinder_factory: Callable[..., GdbUnwinder] | None = None,
                 phys_factory: Callable[..., PhysWatch] = PhysWatch,
                 symbolizer: Any = None, symbols_lock: threading.Lock | None = None,
                 plugin_extra: tuple[str, ...] = (),
                 placer: Callable[..., KernelPlacement] | None = None,
                 release_target: Callable[..., None] | None = None) -> None:
        """The factories are QEMU's, the stub's and the poller's; tests pass fakes.

        ``plugin_extra``: more arguments for the TCG plugin (measurements, bench/).
        ``placer(rig, target, deadline)`` and ``release_target(rig, target, client)``
        replace placing the kernel and (before the stub is closed) releasing it: how
        `kswgdb.run.attach` watches a QEMU it did not start.
        """
        self.plan = plan
        self.sink = sink or Sink()
        self.stub = stub or interactive
        self.interactive = interactive
        self._machine_factory = machine_factory
        self._connect = connect or RemoteClient.connect     # looked up now: patchable
        self._target_factory = target_factory or self._stub_target
        self._phys_factory = phys_factory
        self._unwinder_factory = unwinder_factory or GdbUnwinder
        self._given_symbolizer = symbolizer
        self._placer = placer
        self._release_target = release_target
        self.symbols_lock = symbols_lock or threading.Lock()
        self.program = LockedSymbols(plan.program, self.symbols_lock)
        self.log: EventLog | None = None
        self.machine: Machine | None = None
        self.client: RemoteClient | None = None
        self.target: Target | None = None
        self.symbolizer: Any = None
        self.unwinder: GdbUnwinder | None = None
        self.engine: Engine | PluginEngine | None = None
        self.plugin: PluginEngine | None = None     # the TCG plugin engine, when chosen
        self._plugin_extra = plugin_extra
        self.pool: SlotPool | None = None
        self.phys: PhysWatch | None = None
        self.watchdog: Watchdog | None = None
        self._stalls: StallReporter | None = None
        self.console_record: ConsoleRecorder | None = None
        #: Where the kernel runs (KASLR; set by `attach`), and the program, layout,
        #: specs and exit hook at the guest's addresses (the plan's when not slid).
        self.placement: KernelPlacement | None = None
        self.program_view: Program | None = plan.program
        self.layout = plan.layout
        self.specs: list = plan.specs
        self.exit_hook = plan.exit_hook
        #: The driver's engine result (`end`), and the never-armed warnings (`close`).
        self.result: EngineResult | None = None
        self.unarmed: list[str] = []
        #: QEMU's last stderr lines and its kept log, after a fault.
        self.qemu_stderr: list[str] = []
        self.qemu_log: Path | None = None
        self._logged_start = False
        self.started = time.monotonic()
        #: How the rig ended, for the ``end`` event (set by the driver through `end`).
        self.ending, self.fault = "interrupted", None
        self.guest_exit: GuestExit | None = None
        #: Filled by `close`: the engine's per-watch stats and the final poll statuses.
        self.summary: list[dict] = []
        self.poll_statuses: list[PollStatus] = []
        self.closed = False
        self._stack = contextlib.ExitStack()

    # -------------------------------------------------------------- wiring
    def launch(self) -> None:
        """Open the event log, boot QEMU paused at its first instruction.

        The polls start here when there is no stub (nothing to wait for) or in
        an interactive session (its RAM is shared from the start); a watched
        one-shot run starts them in `attach`, once the kernel is placed.
        """
        plan, opts = self.plan, self.plan.options
        self.log = EventLog(opts.log_path, echo=_SinkEcho(self.sink),
                            exclusive=opts.log_exclusive)
        self._stack.callback(self.log.close)
        self._stack.callback(self._write_end)
        self._stack.callback(plan.close)                 # the --gdb-listen port
        self.sink.status(f"accelerator: {plan.accel.accel} ({plan.accel.reason})")
        self.sink.status(plan.engine.describe())
        # RAM in a shared file whenever a poll may come: given now, or added later.
        shared = bool(plan.poll_specs) or self.interactive
        plugin = {}
        if plan.engine.engine == "plugin" and self.stub:
            self.plugin = plugin_engine(plan, self.pool_capacity(), self._plugin_extra)
            self._stack.callback(self.plugin.close)
            plugin = {"extra_args": self.plugin.qemu_args()}
        machine = self._machine_factory(plan.image, accel=plan.accel, scenario=opts.scenario,
                                        extra_cmdline=plan.cmdline, paused=True,
                                        shared_ram="file" if shared else False,
                                        gdb=self.stub and self.plugin is None,
                                        **_machine_kwargs(plan.additions.machine_kwargs(),
                                                          plugin))
        for line in plan.additions.describe():
            self.sink.status(line)
        self._stack.callback(machine.close)
        machine.launch()
        self.machine = machine
        self._log_start()                   # first, whatever comes next (polls, the TUI)
        if shared and (self.interactive or not self.stub):
            self._start_polls(machine)

    def _log_start(self) -> None:
        """The log's first event (once): what was asked for and which QEMU runs it."""
        if self._logged_start or self.log is None:
            return
        self._logged_start = True
        self.log.write("start", **start_fields(self.plan, self.machine, stub=self.stub,
                                               interactive=self.interactive))
        self._record_console()

    def _record_console(self) -> None:
        """The console into the log (`kswgdb.run.consolelog`), once ``start`` is written."""
        if self.console_record is not None or not self._logged_start or self.machine is None:
            return
        assert self.log is not None
        self.console_record = ConsoleRecorder(self.log, self.sink.console)
        follow = getattr(self.machine.console, "follow", None)
        if follow is not None:          # a test's fake machine may have none
            follow(self.console_record.line)

    def _start_polls(self, machine: Machine) -> None:
        """Map the guest's RAM and start polling while it is still stopped."""
        plan, placed = self.plan, self.placement
        program = LockedSymbols(placed.program, self.symbols_lock) if placed else self.program
        self.phys = self._phys_factory(
            machine, program, plan.poll_specs, guest=plan.image.guest, log=self.log,
            on_hit=self.sink.poll_hit, engine_attached=self.stub, vmcore_dir=plan.vmcore_dir,
            slide=placed.slide if placed else None)
        self._stack.callback(self.phys.close)
        self.phys.start()
        for line in self.phys.describe():
            self.sink.status(line)
        if self._logged_start and self.log is not None:
            self.log.write("polls", polls=self.phys.describe())

    def attach(self, target: Target | None = None, symbolizer: Any = None) -> Engine:
        """Connect the stub (or take ``target``), place the kernel, build the engine.

        KASLR (`kswgdb.watch.kaslr`): a Linux guest runs to its entry point
        first; from then on every address (specs, symbols, polls, gdb) is the
        guest's. Tests pass a fake ``target`` and ``symbolizer``.
        """
        plan, opts = self.plan, self.plan.options
        if self.plugin is not None:
            assert self.machine is not None
            self.plugin.connect(self.machine)
            self._adopt_placement(self.plugin.place(plan.program, self._deadline()))
            return self._attach_plugin(self.plugin, symbolizer)
        if target is None:
            assert self.machine is not None
            client = self._connect(str(self.machine.gdb_socket), timeout=10.0)
            self._stack.callback(client.close)
            self.client = client
            client.handshake()
            target = self._target_factory(client)
            if self._release_target is not None:
                self._stack.callback(self._release_target, self, target, client)
        self.target = target
        self._place_kernel(target)
        if self.placement is not None and self.log is not None:
            self.log.write("kaslr", **slide_fields(self.placement))
        if plan.poll_specs and self.phys is None and self.machine is not None:
            self._start_polls(self.machine)
        program = self.program_view
        if symbolizer is None:
            symbolizer = self._given_symbolizer or self._symbolizer(program)
        self.symbolizer = LockedSymbols(symbolizer, self.symbols_lock)
        self.sink.status(f"backtraces: {BACKTRACE_WHAT[plan.backtrace_mode]}")
        if plan.backtrace_mode == "gdb":
            self.unwinder = self._unwinder_factory(
                target, plan.image.symbols, self.symbolizer,
                find_modules=self._module_finder(program, symbolizer, target),
                symbol_offset=self.placement.slide.virtual if self.placement else 0)
            self._stack.callback(self.unwinder.close)     # gdb never outlives the rig
        self.pool = SlotPool(capacity=self.pool_capacity())
        # The engine appends to ``self.specs`` as watches are added (modules, the TUI).
        self.engine = Engine(
            target, self.specs, self.layout, self.symbolizer, self.pool,
            log=self.log, on_hit=self.sink.hit,
            freeze_on_hit=opts.on_hit in ("freeze", "detach"), exit_hook_addr=self.exit_hook,
            backtracer=self.unwinder,
            release_by_read=opts.release_by_read and plan.accel.accel == "tcg",
            keep_hits=opts.keep_hits,
            release_by_check=opts.release_by_check and plan.accel.accel == "tcg",
        )
        self.engine.install()
        if plan.module_watches:
            assert isinstance(symbolizer, ModuleSymbolizer)
            ModuleArmer(program, plan.module_watches, self.symbolizer,
                        self.sink.status, unreadable=(ErrorReply,)).install(self.engine)
        self._start_watchdog(target)
        return self.engine

    def _attach_plugin(self, plugin: PluginEngine, symbolizer: Any) -> Any:
        """The plugin engine's `attach`: the kernel is placed; symbols, engine, watchdog."""
        if self.placement is not None and self.log is not None:
            self.log.write("kaslr", **slide_fields(self.placement))
        program = self.program_view
        self.symbolizer = LockedSymbols(symbolizer or self._given_symbolizer
                                        or self._symbolizer(program), self.symbols_lock)
        self.sink.status(f"backtraces: {BACKTRACE_WHAT[self.plan.backtrace_mode]}, "
                         "read inside QEMU by the plugin")
        self.engine = plugin.start(self.specs, self.layout, self.symbolizer, self.log,
                                   self.sink.hit)
        if self.plan.module_watches:
            ModuleArmer(program, self.plan.module_watches, self.symbolizer, self.sink.status,
                        unreadable=(PluginRunError,)).install(plugin)
        self._start_watchdog(plugin)
        return self.engine

    def _start_watchdog(self, activity: Any) -> None:
        """Hang and lost-QMP checks; ``activity.packets_sent`` grows while the engine works."""
        if self.machine is None or getattr(self.machine, "attached", False):
            return                  # an attached QEMU: no console, not ours to judge
        machine, opts = self.machine, self.plan.options
        ticks = GuestClock(machine, tick_physical_address(self.layout.ticks_addr,
                                                          self.layout.flavour))
        self.watchdog = Watchdog(
            activity=lambda: machine.console.mark() + activity.packets_sent + ticks(),
            qmp_lost=lambda: not machine.qmp.connected and machine.running,
            hang_timeout=opts.hang_timeout)
        self._stalls = StallReporter(machine.console.lines, machine.console.mark,
                                     self._stall)

    def _deadline(self) -> float:
        timeout = self.plan.options.timeout
        return self.started + timeout if timeout else float("inf")

    def _stall(self, line: str) -> None:
        """A kernel stall report on the console: said at once, and logged."""
        self.sink.status(f"guest reports a stall: {line.strip()}")
        if self.log is not None:
            self.log.write("guest-stall", line=line.strip())

    def _place_kernel(self, target: Target) -> None:
        """Where the kernel runs (KASLR); the program, layout, specs and exit hook there."""
        plan = self.plan
        if plan.program is None:
            return                  # a hand-made test plan: the fake guest is not slid
        deadline = self._deadline()
        placement = self._placer(self, target, deadline) if self._placer is not None else \
            place_kernel(target, plan.program, plan.image.guest, plan.accel.accel, deadline)
        if self.interactive and not placement.found:
            raise KswError(placement.unarmed_reason() or "the kernel was not found")
        self._adopt_placement(placement)
        if placement.program is not plan.program:
            lost = getattr(target, "lost_stops", None)
            if lost is not None:
                lost.disasm = placement.program.disasm      # the guest's addresses

    def _adopt_placement(self, placement: KernelPlacement) -> None:
        """The program, layout, specs and exit hook at the guest's addresses."""
        plan = self.plan
        self.placement = placement
        self.sink.status(placement.slide.describe())
        if placement.program is not plan.program:
            with self.symbols_lock:
                self.program_view = placement.program
                self.layout = layout_for(placement.program, plan.image.guest)
                self.specs = placement.specs(plan.specs)
                self.exit_hook = exit_hook_address(placement.program, self.layout)

    def _stub_target(self, client: RemoteClient) -> StubTarget:
        """The engine's target over the stub: host emulation, queued Z2 and, under TCG, the
        watch stops QEMU loses on another vCPU collected (`kswgdb.watch.loststops`)."""
        tcg = self.plan.accel.accel == "tcg"
        return StubTarget(client, emulate=self.plan.options.emulate, queue_watchpoints=tcg,
                          lost_stops=LostStopFinder(self.plan.program.disasm) if tcg else None)

    def _symbolizer(self, program: Program) -> Any:
        plan = self.plan
        with_modules = plan.module_watches or (
            plan.image.guest == "linux" and bool(plan.module_files))
        return ModuleSymbolizer(program) if with_modules else ProgramSymbolizer(program)

    def _module_finder(self, program: Program, symbolizer: Any,
                       target: Target) -> ModuleFinder | None:
        files = self.plan.module_files
        if not isinstance(symbolizer, ModuleSymbolizer) or not files:
            return None
        with contextlib.suppress(BadInput):
            return ModuleFinder(program, files, symbolizer, target.read)
        return None

    def pool_capacity(self) -> int:
        """Watchpoint slots shared by every config: KVM's 4 debug registers, else --slots
        (a config's ``mw`` is its own bound, counted by the engine)."""
        return SlotPool.for_run(self.plan.accel.accel,
                                self.plan.options.slots or TCG_DEFAULT_SLOTS).capacity

    # ------------------------------------------------------------- running
    @property
    def poll_frozen(self) -> bool:
        """A poll's ``on-hit=freeze`` stopped the guest."""
        return self.phys is not None and self.phys.freeze.is_set()

    def should_stop(self) -> bool:
        """Between stops: a poll froze the guest, it hung, or QMP was lost."""
        return self.poll_frozen or self.hung()

    def hung(self) -> bool:
        """Between stops: the guest wedged or QMP was lost (`watchdog.reason` says which);
        kernel stall reports on the console are passed on meanwhile."""
        if self._stalls is not None:
            self._stalls.check()
        return self.watchdog is not None and self.watchdog.should_stop()

    def interrupt(self) -> None:
        """Stop a running guest through the stub, if the link is still there."""
        if self.client is not None and not self.client.transport.closed:
            with contextlib.suppress(StubError):
                self.client.interrupt()

    def end(self, reason: str, fault: str | None = None, guest_exit: GuestExit | None = None,
            result: EngineResult | None = None) -> None:
        """Say how the run ended (the ``end`` event); an exception or signal overrides it.

        ``result``: the engine's, for the never-armed warnings of a one-shot run.
        """
        self.ending, self.fault, self.guest_exit = reason, fault, guest_exit
        self.result = result

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    # ------------------------------------------------------------- ending
    def __enter__(self) -> Rig:
        try:
            self.launch()
            if self.stub:
                self.attach()
        except BaseException as exc:
            self.close(exc)
            raise
        return self

    def __exit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> None:
        self.close(exc)

    def close(self, exc: BaseException | None = None) -> None:
        """Release everything, in reverse order of acquisition; idempotent.

        ``exc``: the exception that ended the run, if one did (the ``end``
        event names it and the run counts as a fault).
        """
        if self.closed:
            return
        self.closed = True
        if exc is not None:
            self.ending = _ending_of(exc)
            self.fault = self.fault or self.ending
        elif (signum := reaper.signalled()) is not None:
            # The signal handler's exception was lost on its way up and QEMU is
            # gone: the signal, not QEMU, ended the run.
            self.ending = ("interrupted (SIGINT)" if signum == signal.SIGINT
                           else f"terminated (exit status {128 + signum})")
            self.fault = self.fault or self.ending
        try:
            if self.phys is not None:
                self.phys.stop()        # a hit in hand (vCPU snapshot, dump) finishes first
            if self.fault is not None and self.machine is not None:
                # What QEMU said, kept beside the event log before its run directory goes.
                self.qemu_stderr, self.qemu_log = keep_qemu_log(self.machine,
                                                                self.plan.options.log_path)
        finally:
            self._stack.close()         # whatever failed above, everything is released

    def _write_end(self) -> None:
        """The log's last two events (registered first, so it runs last before the close)."""
        if self.phys is not None:
            with contextlib.suppress(Exception):
                self.poll_statuses = self.phys.poller.polls()
        self.summary = self.engine.summary() if self.engine is not None else []
        assert self.log is not None
        self._log_start()           # a launch that failed still leaves a whole log
        if self.console_record is not None:
            self.console_record.finish()
        if not self.interactive and self.stub:
            self.unarmed = run_warnings(self.summary, self.plan.module_watches, self.placement,
                                        self.result, self.plan.options.timeout)
        elif self.interactive and self.engine is not None:
            self.unarmed = live_warnings(self.summary, self.engine.removed,
                                         self.plan.module_watches)
        if self.unarmed:
            self.log.write("unarmed", warnings=self.unarmed)
        self.log.write("summary", watches=self.summary,
                       polls=[vars(p) for p in self.poll_statuses])
        failure = sys.exc_info()[1]
        if failure is not None and self.fault is None:
            self.ending = self.fault = _ending_of(failure)
        extra = ({"qemu_stderr": self.qemu_stderr, "qemu_log": str(self.qemu_log)}
                 if self.qemu_stderr else {})
        self.log.write("end", reason=self.ending, fault=self.fault is not None,
                       **_guest_exit_fields(self.guest_exit), **extra)


def open_rig(plan: Plan, sink: Sink | None = None, **kwargs: Any) -> Rig:
    """A rig for a ``with`` block: launched and attached on entry, released on the way out.

    A plan with ``options.attach`` watches the user's QEMU (`kswgdb.run.attach`).
    """
    if plan.options.attach is not None:
        from kswgdb.run.attach import rig_options

        kwargs = {**rig_options(plan), **kwargs}
    return Rig(plan, sink, **kwargs)


def _guest_exit_fields(guest_exit: GuestExit | None) -> dict:
    """How the guest ended, for the log's ``end`` event (the kernel's panic line included)."""
    if guest_exit is None:
        return {}
    fields = {"guest_exit": guest_exit.kind, "guest_exit_reason": guest_exit.reason,
              "guest_exit_status": guest_exit.status, "guest_exit_code": guest_exit.code}
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


def _machine_kwargs(additions: dict[str, Any], plugin: dict[str, Any]) -> dict[str, Any]:
    """``Machine(...)`` keywords: the user's additions, then the plugin engine's QEMU
    arguments after the user's ``--qemu-arg`` ones (both are plain argv elements)."""
    out = dict(additions)
    extra = (*out.pop("extra_args", ()), *plugin.get("extra_args", ()))
    if extra:
        out["extra_args"] = tuple(extra)
    return out
