"""A watched guest that keeps running while its user changes what is watched.

`WatchSession` is prepare-once, run-once: every watch is known before QEMU
starts. An interactive user adds and removes watches while the guest runs,
freezes it to look around, and lets it go again. The gdbstub is all-stop and
the engine may only be changed while the guest is stopped, so one worker
thread owns the machine, the stub connection and the engine, and everyone
else talks to it through a queue of commands:

- the worker resumes the guest and handles its stops exactly as `Engine.run`
  does;
- when a command is queued while the guest runs, it interrupts the guest
  (``target.interrupt``), takes whatever stop comes first (the interrupt, or a
  breakpoint that raced it, which is handled normally), applies every queued
  command, and resumes unless a command asked for the guest to stay frozen;
- it publishes what a screen needs as immutable `Snapshot`s plus an
  append-only list of hits, which a UI polls from its own thread.

A new command kind is a frozen dataclass plus a handler given to
`LiveSession.handle`; the loop does not change.

Physical-memory polls (`kswgdb.watch.livepolls`) run beside all this in the
poller's own thread: the guest's RAM is always a shared file here, so a poll
can be added at any time without stopping the guest. The loop only has to
honour a poll's ``on-hit=freeze``: the poller stops the guest through QMP, and
the worker then keeps it stopped instead of resuming it.

Inputs that can be wrong are checked in the caller's thread, before anything
is queued: `prepare` raises `BadInput` before QEMU starts, `add_watch` raises it
and changes nothing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kswgdb import image as image_mod
from kswgdb.errors import BadInput, InfraError, KswError
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.qemu.accel import AccelDecision, decide
from kswgdb.qemu.errors import MachineError
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.machine import Machine
from kswgdb.symbols.program import Program
from kswgdb.watch.config import parse_watch, parse_watches
from kswgdb.watch.engine import Engine
from kswgdb.watch.gdb_backtrace import GdbUnwinder, gdb_available
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hits import EventLog, Hit
from kswgdb.watch.kaslr import place_kernel, slide_fields
from kswgdb.watch.layout import layout_for
from kswgdb.watch.livepolls import LivePolls
from kswgdb.watch.livestate import (  # noqa: F401 - re-exported for screens and tests
    CLOSED,
    EXITED,
    FAILED,
    FROZEN,
    NOT_ARMED_WORDS,
    RUNNING,
    STARTING,
    AddPoll,
    AddWatch,
    Continue,
    Freeze,
    PollRow,
    Quit,
    RemovePoll,
    RemoveWatch,
    Snapshot,
    WatchRow,
)
from kswgdb.watch.loststops import LostStopFinder
from kswgdb.watch.physrun import PhysWatch
from kswgdb.watch.pollconfig import PollSpec, parse_polls
from kswgdb.watch.poller import PollHit
from kswgdb.watch.resolve import ResolvedWatch, resolve_watch
from kswgdb.watch.session import RunOptions
from kswgdb.watch.slots import TCG_DEFAULT_SLOTS, SlotPool
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.stub_target import StubTarget
from kswgdb.watch.symbolize import ProgramSymbolizer
from kswgdb.watch.target import Stop, Target

#: How long the worker waits for a stop before looking at its queue again.
POLL_SECONDS = 0.1
#: How long a running guest may take to stop after an interrupt.
HALT_SECONDS = 30.0
#: Stats are republished at most this often while the guest runs.
PUBLISH_SECONDS = 0.2



class _LockedSymbolizer:
    """The engine's symbolizer, serialised with the UI thread's config checks.

    Both read the same ELF/DWARF file objects; pyelftools streams are not
    safe to seek from two threads at once.
    """

    def __init__(self, inner: ProgramSymbolizer, lock: threading.Lock) -> None:
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


class LiveSession:
    """One guest, watched interactively. `prepare`, `start`, commands..., `close`.

    The machine is booted by `start` in a worker thread; every method here is
    safe to call from any other thread.
    """

    def __init__(self, options: RunOptions, paused: bool = False,
                 machine_factory: Callable[..., Machine] = Machine) -> None:
        self.options = options
        self.paused = paused
        self._machine_factory = machine_factory
        self.image: image_mod.Image | None = None
        self.program: Program | None = None
        self.layout: GuestLayout | None = None
        self.accel: AccelDecision | None = None
        self.machine: Machine | None = None
        self.log: EventLog | None = None
        self.error: KswError | None = None
        self._resolved: list[ResolvedWatch | None] = []
        self._specs: list[ArmSpec] = []
        self._symbols_lock = threading.Lock()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._hits: list[Hit] = []
        self._snapshot = Snapshot(STARTING, "not started")
        self._notice, self._notice_seq = "", 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            AddWatch: self._do_add, RemoveWatch: self._do_remove, Freeze: self._do_freeze,
            Continue: self._do_continue, Quit: self._do_quit,
            AddPoll: self._do_add_poll, RemovePoll: self._do_remove_poll,
        }
        #: Physical-memory polls; started with the machine (see `start`).
        self.polls = LivePolls()
        self.phys: PhysWatch | None = None
        self._poll_specs: list[PollSpec] = []
        # Worker-only state.
        self._engine: Engine | None = None
        self._target: Target | None = None
        self._unwinder: GdbUnwinder | None = None
        self._pool: SlotPool | None = None
        self._state = STARTING
        self._detail = ""
        self._running = False
        self._run_wanted = not paused
        self._quit = False
        self._interrupted = False
        self._vmcore: Path | None = None
        self._guest_exit: GuestExit | None = None
        self._published_at = 0.0

    # ================================================== caller's thread
    def prepare(self) -> None:
        """Check every input and decide the accelerator; `BadInput` before anything starts."""
        opts = self.options
        self.image = image_mod.load(opts.image)
        if (opts.scenario is not None and self.image.scenarios
                and str(opts.scenario) not in self.image.scenarios):
            known = ", ".join(sorted(self.image.scenarios, key=int))
            raise BadInput(f"--scenario {opts.scenario}: image {self.image.name} has "
                           f"scenarios {known}")
        if opts.slots is not None and opts.slots < 1:
            raise BadInput(f"--slots must be at least 1, not {opts.slots}")
        self.program = Program.load(self.image.symbols)
        self.layout = layout_for(self.program, self.image.guest)
        configs = parse_watches(list(opts.watches)) if opts.watches else []
        self._resolved = [resolve_watch(cfg, self.program) for cfg in configs]
        self._specs = [r.to_arm_spec() for r in self._resolved]
        self._poll_specs = parse_polls(list(opts.polls))
        self.accel = decide(opts.accel)
        if opts.log_path is not None and not opts.log_path.parent.is_dir():
            raise BadInput(f"--log {opts.log_path}: no such directory {opts.log_path.parent}")
        self._publish(force=True)

    def check_watch(self, text: str) -> ResolvedWatch:
        """Parse and resolve one config string; `BadInput` if it cannot be watched."""
        if self.program is None:
            raise BadInput("session not prepared")
        cfg = parse_watch(text)
        with self._lock:
            known = list(self._resolved)
        for i, other in enumerate(known):
            if other is not None and other.config == cfg and self._is_active(i):
                raise BadInput(f"already watching {cfg.canonical()} (watch #{i})")
        with self._symbols_lock:
            return resolve_watch(cfg, self.program)

    def start(self) -> None:
        """Boot the guest and start watching, in a worker thread."""
        if self.image is None:
            self.prepare()
        if self._thread is not None or self.error is not None:
            return                  # started already, or its launch failed
        try:
            self.log = EventLog(self.options.log_path)
        except OSError as exc:
            raise BadInput(f"--log {self.options.log_path}: {exc.strerror}") from None
        # Launched here, not in the worker: a child's PR_SET_PDEATHSIG follows the
        # thread that spawned it, and QEMU (started with -S) must live as long as
        # the session, not as long as whichever thread happened to start it.
        assert self.image is not None and self.accel is not None
        opts = self.options
        # RAM always in a shared file: a poll can be added later even if none is
        # given now (bench/shared_ram.py: the guest runs no slower for it).
        machine = self._machine_factory(self.image, accel=self.accel, scenario=opts.scenario,
                                        extra_cmdline=opts.cmdline, paused=True,
                                        shared_ram="file")
        try:
            machine.launch()
            self._start_polls(machine)
        except Exception as exc:  # noqa: BLE001 - one line on screen, exit status 3
            if self.phys is not None:
                self.phys.close()
            machine.close()
            self._fail(exc if isinstance(exc, KswError)
                       else InfraError(f"{type(exc).__name__}: {exc}"))
            return
        self.machine = machine
        self._thread = threading.Thread(target=self._main, name="kswgdb-live", daemon=True)
        self._thread.start()

    def add_watch(self, text: str) -> ResolvedWatch:
        """Check ``text`` now (`BadInput` changes nothing) and arm it at the next stop."""
        self._require_guest("add a watch")
        resolved = self.check_watch(text)
        self.submit(AddWatch(resolved, resolved.to_arm_spec()))
        return resolved

    def remove_watch(self, index: int) -> None:
        self._require_guest("remove a watch")
        rows = self.snapshot().watches
        if not any(r.index == index and r.active for r in rows):
            raise BadInput(f"no active watch #{index}")
        self.submit(RemoveWatch(index))

    def add_poll(self, text: str) -> int:
        """Check ``text`` now (`BadInput` changes nothing) and start polling at once.

        Not queued: the poller samples from its own thread, so the guest need
        not stop for a poll to be added (`AddPoll` is the queued equivalent).
        """
        self._require_guest("add a poll")
        return self.polls.add(self.polls.check(text))

    def remove_poll(self, poll_id: int) -> PollSpec:
        """Stop poll ``poll_id`` at once; `BadInput` if there is no such active poll."""
        self._require_guest("remove a poll")
        return self.polls.remove(poll_id)

    def poll_hits(self, since: int = 0) -> list[PollHit]:
        """Poll hits so far, from number ``since`` (0-based) on."""
        return self.polls.hits(since)

    def freeze(self) -> None:
        self._require_guest("freeze the guest")
        self.submit(Freeze())

    def resume(self) -> None:
        self._require_guest("continue the guest")
        self.submit(Continue())

    def submit(self, command: Any) -> None:
        """Queue any command a handler is registered for (see `handle`)."""
        if type(command) not in self._handlers:
            raise TypeError(f"no handler for {type(command).__name__}")
        self._queue.put(command)

    def handle(self, kind: type, handler: Callable[[Any], None]) -> None:
        """Register ``handler`` for commands of ``kind``; it runs in the worker, guest stopped.

        A handler may use `engine`, `target` and `machine`, call `note`, and set
        `run_wanted` False to keep the guest stopped after it.
        """
        self._handlers[kind] = handler

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker and the machine; nothing is left running when this returns."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(Quit())
            thread.join(timeout)
            if thread.is_alive() and self.machine is not None:
                self.machine.close()        # last resort: the worker is stuck in I/O
                thread.join(5.0)
        if self.log is not None and (thread is None or not thread.is_alive()):
            self.log.close()
        if self._state in (STARTING, RUNNING, FROZEN):
            self._state, self._detail = CLOSED, "machine closed"
        self._running = False
        self._publish(force=True)

    @property
    def gdb_unwinder(self) -> GdbUnwinder | None:
        """The gdb that unwinds hit backtraces (None without gdb); closed with the worker."""
        return self._unwinder

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def hits(self, since: int = 0) -> list[Hit]:
        """Hits caught so far, from number ``since`` (0-based) on."""
        with self._lock:
            return self._hits[since:]

    def console_since(self, seen: int) -> tuple[list[str], int]:
        """Console lines after the first ``seen`` ones, and the new count."""
        machine = self.machine
        try:
            console = machine.console if machine is not None else None
        except MachineError:
            console = None                  # not launched yet
        if console is None:
            return [], seen
        total = console.mark()
        lines = console.lines()
        new = total - seen
        if new <= 0:
            return [], seen
        return lines[-new:], total

    @property
    def symbols_path(self) -> Path | None:
        return self.image.symbols if self.image is not None else None

    # ====================================================== worker thread
    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def target(self) -> Target | None:
        return self._target

    @property
    def run_wanted(self) -> bool:
        return self._run_wanted

    @run_wanted.setter
    def run_wanted(self, value: bool) -> None:
        self._run_wanted = value

    def note(self, text: str) -> None:
        """A one-line message for the screen (worker thread: it republishes the stats)."""
        with self._lock:
            self._notice, self._notice_seq = text, self._notice_seq + 1
        self._publish(force=True)

    def _main(self) -> None:
        machine = self.machine
        assert machine is not None
        try:
            client = RemoteClient.connect(str(machine.gdb_socket), timeout=10.0)
            try:
                client.handshake()
                self.run_on(StubTarget(client, lost_stops=LostStopFinder(self.program.disasm)
                                       if self.program is not None else None))
            finally:
                if self._unwinder is not None:
                    self._unwinder.close()      # gdb never outlives the session
                client.close()
            if self._state == EXITED:
                self._guest_exit = machine.wait_exit(10.0)
                self._detail = str(self._guest_exit)
                self._publish(force=True)
                self._wait_for_quit()
        except KswError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - shown on screen, exit status 3
            self._fail(KswError(f"{type(exc).__name__}: {exc}"))
        finally:
            self._running = False
            if self.phys is not None:
                self.phys.close()       # a hit in hand (vCPU snapshot, dump) finishes first
            machine.close()
            if self.log is not None and self._engine is not None:
                self.log.write("summary", watches=self._engine.summary(),
                               polls=[vars(p) for p in self.polls.statuses()])

    def _fail(self, exc: KswError) -> None:
        self.error = exc
        self._state, self._detail = FAILED, " ".join(str(exc).split())
        self._publish(force=True)

    def run_on(self, target: Target, symbolizer: Any = None) -> None:
        """Watch ``target`` until a `Quit` or the guest's exit (the worker's loop).

        Public so unit tests can drive it with a fake target (and a fake
        ``symbolizer``) in their own thread, with `layout` and `accel` set by hand.
        """
        assert self.layout is not None and self.accel is not None
        self._target = target
        self._pool = SlotPool(capacity=self._pool_capacity())
        slide = self._place_kernel(target)
        if symbolizer is None:
            assert self.program is not None
            symbolizer = ProgramSymbolizer(self.program)
        exit_hook = None
        if self.layout.exit_function and self.program is not None:
            try:
                with self._symbols_lock:
                    exit_hook = self.program.function(self.layout.exit_function).addr
            except BadInput:
                exit_hook = None
        locked = _LockedSymbolizer(symbolizer, self._symbols_lock)
        if isinstance(target, StubTarget) and self.image is not None and gdb_available():
            # Hit backtraces from gdb's DWARF CFI unwinder, as `kswgdb run` gives them;
            # gdb starts at the first hit only and is closed with the worker.
            self._unwinder = GdbUnwinder(target, self.image.symbols, locked,
                                         symbol_offset=slide.get("kaslr_slide", 0))
        self._engine = Engine(
            target, self._specs, self.layout, locked,
            self._pool, log=self.log, on_hit=self._on_hit,
            freeze_on_hit=self.options.on_hit == "freeze", exit_hook_addr=exit_hook,
            backtracer=self._unwinder,
        )
        self._engine.install()
        if self.log is not None and self.image is not None:
            self.log.write("start", image=str(self.image.path), accel=self.accel.accel,
                           accel_reason=self.accel.reason, scenario=self.options.scenario,
                           watches=[r.describe() for r in self._resolved],
                           configs=[s.text for s in self._specs], interactive=True, **slide)
        self._loop()

    def _place_kernel(self, target: Target) -> dict:
        """KASLR (`kswgdb.watch.kaslr`): run a Linux guest to its entry, then work at the
        guest's addresses: watches added later resolve against the relocated program."""
        if not isinstance(target, StubTarget) or self.image is None or self.program is None:
            return {}
        assert self.accel is not None
        timeout = self.options.timeout
        placement = place_kernel(target, self.program, self.image.guest, self.accel.accel,
                                 time.monotonic() + timeout if timeout else float("inf"))
        if not placement.found:
            raise KswError(placement.unarmed_reason() or "the kernel was not found")
        if placement.program is not self.program:
            with self._symbols_lock:
                self.program = placement.program
                self.layout = layout_for(self.program, self.image.guest)
                self._specs = placement.specs(self._specs)
            self.note(placement.slide.describe())
        return slide_fields(placement)

    def _loop(self) -> None:
        assert self._target is not None
        target = self._target
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout if timeout and timeout > 0 else None
        if self._run_wanted:
            self._resume()
        else:
            self._state, self._detail = FROZEN, "paused before the first instruction"
        self._publish(force=True)
        while not self._quit:
            was = self._state
            if self._running:
                stop = target.wait_stop(POLL_SECONDS)
                if stop is None:
                    timed_out = deadline is not None and time.monotonic() >= deadline
                    if not timed_out and self._queue.empty() and not self.polls.freeze_pending():
                        self._publish()
                        continue
                    stop = self._halt()
                    if timed_out:
                        deadline = None
                        self._run_wanted = False
                        self._detail = f"stopped after --timeout {timeout:g}s"
                        self.note(f"--timeout {timeout:g}s reached: guest stopped (c continues)")
                self._running = False
                if not self._on_stop(stop):
                    return
            else:
                try:
                    command = self._queue.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    self._publish()         # the polls keep counting while the guest is stopped
                    continue
                self._apply(command)
            applied = self._drain()
            if self._run_wanted and not self._quit:
                self._resume()
            elif not self._quit:
                self._state = FROZEN
            # Per stop only when something changed: this is the engine's hot path.
            self._publish(force=applied or self._state != was or not self._running)

    def _resume(self) -> None:
        assert self._target is not None
        self._target.resume()
        self._running = True
        self._state, self._detail = RUNNING, ""

    def _halt(self) -> Stop:
        """Interrupt the running guest; return the first stop that follows."""
        assert self._target is not None
        self._target.interrupt()
        self._interrupted = True
        give_up = time.monotonic() + HALT_SECONDS
        while True:
            stop = self._target.wait_stop(1.0)
            if stop is not None:
                return stop
            if time.monotonic() > give_up:
                raise KswError(f"the guest did not stop within {HALT_SECONDS:g}s of an "
                               "interrupt")

    def _on_stop(self, stop: Stop) -> bool:
        """Handle one stop with the engine; False when the guest has ended."""
        assert self._engine is not None
        interrupted, self._interrupted = self._interrupted, False
        poll_froze = self.polls.freeze_pending()
        if stop.kind == "other" and (interrupted or poll_froze):
            if poll_froze:
                self._poll_freeze()      # a poll's QMP stop: nothing for the engine either
            return True                  # our own interrupt: nothing for the engine
        verdict = self._engine.handle(stop)
        if verdict == "exit":
            self._state, self._detail = EXITED, "guest ended"
            self._run_wanted = False
            self._publish(force=True)
            return False
        if verdict == "freeze":
            self._freeze("a ph=1 / --on-hit freeze hit")
        elif self.polls.freeze_pending():
            self._poll_freeze()
        return True

    def _drain(self) -> bool:
        """Apply every queued command now (the guest is stopped); True if there were any."""
        applied = False
        while not self._quit:
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                break
            self._apply(command)
            applied = True
        return applied

    def _apply(self, command: Any) -> None:
        try:
            self._handlers[type(command)](command)
        except KswError as exc:
            self.note(f"error: {' '.join(str(exc).split())}")

    def _wait_for_quit(self) -> None:
        while not self._quit:
            try:
                command = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._publish()             # poll counts (a removed poll) stay current
                continue
            if isinstance(command, Quit):
                self._quit = True
            else:
                self.note(f"the guest has ended: {type(command).__name__} ignored")

    # --------------------------------------------------------- handlers
    def _do_add(self, command: AddWatch) -> None:
        assert self._engine is not None and self._pool is not None
        with self._lock:
            index = self._engine.add_spec(command.spec)
            self._resolved += [None] * (index - len(self._resolved))
            self._resolved.append(command.resolved)
        self._pool.capacity = self._pool_capacity()
        what = self._describe(index)
        if self.log is not None:
            self.log.write("watch-add", index=index, config=command.spec.text, watch=what)
        warnings = command.resolved.warnings if command.resolved is not None else ()
        self.note(f"watch #{index} armed: {command.spec.text} ({what})"
                  + "".join(f"; warning: {w}" for w in warnings))

    def _do_remove(self, command: RemoveWatch) -> None:
        assert self._engine is not None and self._pool is not None
        try:
            self._engine.remove_spec(command.index)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        self._pool.capacity = self._pool_capacity()
        if self.log is not None:
            self.log.write("watch-remove", index=command.index,
                           config=self._engine.specs[command.index].text)
        self.note(f"watch #{command.index} removed: {self._engine.specs[command.index].text}")

    def _do_freeze(self, _command: Freeze) -> None:
        self._freeze("requested")

    def _do_continue(self, _command: Continue) -> None:
        if not self._run_wanted:
            self._vmcore = None
            self.polls.thaw()
            self.note("guest continues")
        self._run_wanted = True

    def _do_add_poll(self, command: AddPoll) -> None:
        poll_id = self.polls.add(command.spec)
        self.note(f"poll #{poll_id} started: {command.spec.canonical()}")

    def _do_remove_poll(self, command: RemovePoll) -> None:
        spec = self.polls.remove(command.poll_id)
        self.note(f"poll #{command.poll_id} removed: {spec.canonical()}")

    def _do_quit(self, _command: Quit) -> None:
        self._quit = True

    def _freeze(self, why: str) -> None:
        """Keep the guest stopped and keep the moment: a vmcore through QMP."""
        self._run_wanted = False
        self._state, self._detail = FROZEN, f"({why})"
        path = None
        if self.machine is not None:
            where = self.options.log_path.parent if self.options.log_path else Path.cwd()
            path = where / f"kswgdb-vmcore-{time.strftime('%Y%m%d-%H%M%S')}.elf"
            self.machine.qmp.dump_guest_memory(path)
        self._vmcore = path
        if self.log is not None:
            self.log.write("freeze", why=why, vmcore=str(path) if path else None)
        if path is not None:
            self.note(f"frozen ({why}); vmcore {path}; inspect: gdb {self.symbols_path} {path}")
        else:
            self.note(f"frozen ({why})")

    def _poll_freeze(self) -> None:
        """A poll hit with ``on-hit=freeze`` stopped the guest: keep it stopped until `c`."""
        was = self._run_wanted
        self._run_wanted = False
        hit = self.polls.freezer()
        what = f"poll #{hit.poll_id}" if hit is not None else "a poll"
        self._state, self._detail = FROZEN, f"({what} on-hit=freeze)"
        if was:
            if self.log is not None:
                self.log.write("freeze", why=f"{what} on-hit=freeze", vmcore=None)
            self.note(f"frozen by {what} (on-hit=freeze); its vmcore is in the hit detail; "
                      "c continues")

    # --------------------------------------------------------- helpers
    def _start_polls(self, machine: Machine) -> None:
        """Map the guest's RAM and start the ``--poll``s before its first instruction."""
        assert self.image is not None
        where = self.options.log_path.parent if self.options.log_path else Path.cwd()
        # The poller thread symbolizes vCPU PCs: same ELF file objects as the engine.
        program: Any = (_LockedSymbolizer(self.program, self._symbols_lock)
                        if self.program is not None else None)
        self.phys = PhysWatch(machine, program, self._poll_specs, guest=self.image.guest,
                              log=self.log, on_hit=self.polls.record, engine_attached=True,
                              vmcore_dir=where)
        self.polls.attach(self.phys.poller, self.phys.freeze, self.phys.vmcores, self.log)
        self.phys.start()
        if self.log is not None:
            self.log.write("polls", polls=self.phys.describe())

    def _on_hit(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)
        self._publish(force=True)

    def _pool_capacity(self) -> int:
        assert self.accel is not None
        return SlotPool.for_run(self.accel.accel,
                                self.options.slots or TCG_DEFAULT_SLOTS).capacity

    def _describe(self, index: int) -> str:
        resolved = self._resolved[index] if index < len(self._resolved) else None
        return resolved.describe() if resolved is not None else self._specs[index].what

    def _is_active(self, index: int) -> bool:
        engine = self._engine
        return engine is None or index not in engine.removed

    def _require_guest(self, what: str) -> None:
        state = self.snapshot().state
        if state in (EXITED, FAILED, CLOSED):
            raise BadInput(f"cannot {what}: the guest has {state}"
                           if state != FAILED else f"cannot {what}: the session failed")

    def _rows(self) -> tuple[WatchRow, ...]:
        engine = self._engine
        if engine is None:
            return tuple(WatchRow(i, spec.text, self._describe(i), True)
                         for i, spec in enumerate(self._specs))
        live: dict[int, int] = {}
        for frame in engine.frames.all():
            if frame.watch is not None:
                live[frame.spec_index] = live.get(frame.spec_index, 0) + 1
        rows = []
        for i, (spec, stats) in enumerate(zip(engine.specs, engine.stats, strict=True)):
            why = ", ".join(f"{getattr(stats, key)} {word}" for key, word in NOT_ARMED_WORDS
                            if getattr(stats, key))
            what = self._describe(i)
            rows.append(WatchRow(
                index=i, config=spec.text, what=what, active=i not in engine.removed,
                calls=stats.calls, armed=stats.armed, not_armed=stats.not_armed,
                not_armed_why=why, live=live.get(i, 0),
                not_armed_counts=tuple((key, getattr(stats, key)) for key, _ in NOT_ARMED_WORDS),
                returns=stats.returns, hits=stats.hits,
            ))
        return tuple(rows)

    def _publish(self, force: bool = False) -> None:
        """Make a new `Snapshot` (worker: throttled unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._published_at < PUBLISH_SECONDS:
            return
        self._published_at = now
        with self._lock:
            rows = self._rows()
            state = self._state
            if state == RUNNING and not self._run_wanted:
                state = FROZEN
            self._snapshot = Snapshot(
                state=state, detail=self._detail, watches=rows, hit_count=len(self._hits),
                vmcore=self._vmcore if self._vmcore is not None else self.polls.freeze_vmcore(),
                guest_exit=self._guest_exit, notice=self._notice,
                notice_seq=self._notice_seq,
                error=" ".join(str(self.error).split()) if self.error else "",
                polls=self.polls.rows(), poll_hit_count=self.polls.hit_count(),
            )

