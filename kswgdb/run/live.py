"""A watched guest that keeps running while its user changes what is watched.

The one-shot run (`kswgdb.run.oneshot`) knows every watch before QEMU
starts. An interactive user adds and removes watches while the guest runs,
freezes it to look around, and lets it go again. The gdbstub is all-stop and
the engine may only be changed while the guest is stopped, so one worker
thread drives the guest's `Rig` (machine, stub, engine, polls, watchdog: the
same wiring as `kswgdb run`, prepared by the same `prepare`), and everyone
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

Physical-memory polls (`kswgdb.poll.live`) run beside all this in the
poller's own thread: the guest's RAM is always a shared file here, so a poll
can be added at any time without stopping the guest. The loop only has to
honour a poll's ``on-hit=freeze``: the poller stops the guest through QMP, and
the worker then keeps it stopped instead of resuming it.

Inputs that can be wrong are checked in the caller's thread, before anything
is queued: `prepare` raises `BadInput` before QEMU starts, `add_watch` raises it
and changes nothing. The session's state is a `RunState`.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kswgdb.errors import BadInput, InfraError, KswError
from kswgdb.gdb.backtrace import GdbUnwinder
from kswgdb.gdbstub.errors import StubClosed
from kswgdb.gdbstub.relay import Relay
from kswgdb.poll.config import PollSpec
from kswgdb.poll.live import LivePolls
from kswgdb.poll.physrun import PhysWatch
from kswgdb.poll.poller import PollHit
from kswgdb.qemu.errors import MachineError
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.machine import Machine
from kswgdb.run.livestate import (  # noqa: F401 - re-exported for screens and tests
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
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import Plan, prepare
from kswgdb.run.rig import Rig, Sink
from kswgdb.run.vmcore import freeze_vmcore, inspect_command
from kswgdb.symbols.slide import gdb_symbols
from kswgdb.watch.config import parse_watch
from kswgdb.watch.engine import Engine
from kswgdb.watch.hits import EventLog, Hit
from kswgdb.watch.resolve import ResolvedWatch, resolve_watch
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.target import Stop, Target

#: How long the worker waits for a stop before looking at its queue again.
POLL_SECONDS = 0.1
#: How long a running guest may take to stop after an interrupt.
HALT_SECONDS = 30.0
#: Stats are republished at most this often while the guest runs.
PUBLISH_SECONDS = 0.2


class RunState(enum.StrEnum):
    """Where the live guest is; equal to the plain words screens and snapshots use."""

    STARTING = STARTING
    RUNNING = RUNNING
    FROZEN = FROZEN
    EXITED = EXITED
    FAILED = FAILED
    CLOSED = CLOSED


def _rig_part(name: str) -> Any:
    """A read-only property: the session's rig's ``name``, or None without a rig."""
    return property(lambda self: getattr(self.rig, name) if self.rig is not None else None)


class _LiveSink(Sink):
    """A rig's news, turned into the live session's notes, hits and poll hits."""

    def __init__(self, session: LiveSession) -> None:
        self._session = session

    def status(self, text: str) -> None:
        self._session.note(text)

    def hit(self, hit: Hit) -> None:
        self._session._on_hit(hit)

    def poll_hit(self, hit: PollHit) -> None:
        self._session.polls.record(hit)



class LiveSession:
    """One guest, watched interactively. `prepare`, `start`, commands..., `close`.

    The machine is booted by `start` in a worker thread; every method here is
    safe to call from any other thread.
    """

    def __init__(self, options: RunOptions, paused: bool | None = None,
                 machine_factory: Callable[..., Machine] = Machine,
                 rig_options: dict | None = None) -> None:
        """``rig_options``: extra `Rig` arguments (tests: fake stub, target, polls)."""
        self.options = options
        self.paused = options.paused if paused is None else paused
        self._machine_factory = machine_factory
        self._rig_options = rig_options or {}
        self.plan: Plan | None = None
        self.rig: Rig | None = None
        self.error: KswError | None = None
        self._resolved: list[ResolvedWatch | None] = []
        self._specs: list[ArmSpec] = []
        self._symbols_lock = threading.Lock()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._hits: list[Hit] = []
        self._snapshot = Snapshot(RunState.STARTING, "not started")
        self._notice, self._notice_seq = "", 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            AddWatch: self._do_add, RemoveWatch: self._do_remove, Freeze: self._do_freeze,
            Continue: self._do_continue, Quit: self._do_quit,
            AddPoll: self._do_add_poll, RemovePoll: self._do_remove_poll,
        }
        #: Physical-memory polls; started with the machine (see `start`).
        self.polls = LivePolls()
        # Set by `prepare` (tests driving `run_on` set layout and accel by hand).
        self.image = self.program = self.layout = self.accel = None
        # Worker-only state.
        self._state = RunState.STARTING
        self._detail = ""
        self._running = False
        self._run_wanted = not self.paused
        self._quit = False
        self._interrupted = False
        self._vmcore: Path | None = None
        self._inspect = ""                  # the command that opens self._vmcore
        self._guest_exit: GuestExit | None = None
        self._published_at = 0.0

    # ================================================== caller's thread
    def prepare(self) -> None:
        """Every check `kswgdb run` makes (`kswgdb.run.prepare`); `BadInput` before a start."""
        plan = self.plan = prepare(self.options, require_watch=False)
        self.image, self.program, self.layout, self.accel = (
            plan.image, plan.program, plan.layout, plan.accel)
        self._resolved = list(plan.resolved)
        self._specs = plan.specs            # the engine's own list once it runs
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
        """Boot the guest (paused) here, then watch it from a worker thread."""
        if self.plan is None:
            self.prepare()
        if self._thread is not None or self.error is not None:
            return                  # started already, or its launch failed
        # Launched here, not in the worker: a child's PR_SET_PDEATHSIG follows the
        # thread that spawned it, and QEMU (started with -S) must live as long as
        # the session, not as long as whichever thread happened to start it.
        rig = self._rig()
        try:
            rig.launch()
        except Exception as exc:  # noqa: BLE001 - one line on screen, exit status 3
            failure = exc if isinstance(exc, KswError) else InfraError(
                f"{type(exc).__name__}: {exc}")
            rig.close(failure)
            self._fail(failure)
            return
        assert rig.phys is not None
        self.polls.attach(rig.phys.poller, rig.phys.freeze, rig.phys.vmcores, rig.log)
        self._thread = threading.Thread(target=self._main, name="kswgdb-live", daemon=True)
        self._thread.start()

    def _rig(self) -> Rig:
        """This session's rig, made once (a test's `run_on` gets one from a bare plan)."""
        if self.rig is None:
            plan = self.plan or Plan(options=self.options, image=None, program=None,
                                     layout=self.layout, accel=self.accel,
                                     backtrace_mode="fp", specs=self._specs)
            self.rig = Rig(plan, _LiveSink(self), interactive=True,
                           machine_factory=self._machine_factory,
                           symbols_lock=self._symbols_lock, **self._rig_options)
        return self.rig

    def add_watch(self, text: str) -> ResolvedWatch:
        """Check ``text`` now (`BadInput` changes nothing) and arm it at the next stop."""
        self._require_guest("add a watch")
        resolved = self.check_watch(text)
        self.submit(AddWatch(resolved, resolved.to_arm_spec(self.options.release_by_read,
                                                            self.options.release_by_check)))
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
        rig = self.rig
        if rig is not None and (thread is None or not thread.is_alive()):
            rig.close()                     # idempotent: the worker closed it already
        elif rig is None and self.plan is not None:
            self.plan.close()               # prepared, never started: the bound port
        if self._state in (RunState.STARTING, RunState.RUNNING, RunState.FROZEN):
            self._state, self._detail = RunState.CLOSED, "machine closed"
        self._running = False
        self._publish(force=True)

    #: The rig's parts (None before `start`): the gdb that unwinds hit backtraces
    #: (closed with the worker), the machine, the event log, the polls' owner,
    #: and, for handlers in the worker, the engine and its target.
    gdb_unwinder: GdbUnwinder | None = _rig_part("unwinder")
    machine: Machine | None = _rig_part("machine")
    log: EventLog | None = _rig_part("log")
    phys: PhysWatch | None = _rig_part("phys")
    engine: Engine | None = _rig_part("engine")
    target: Target | None = _rig_part("target")

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
        rig = self.rig
        assert rig is not None
        failure: BaseException | None = None
        try:
            self._attach()
            self._loop()
            if self._state == RunState.EXITED:
                assert rig.machine is not None
                self._guest_exit = rig.machine.wait_exit(10.0)
                self._detail = str(self._guest_exit)
                rig.end("exit", guest_exit=self._guest_exit)
                self._publish(force=True)
                self._wait_for_quit()
            elif rig.fault is None:
                rig.end("quit")
        except KswError as exc:
            failure = exc
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - shown on screen, exit status 3
            failure = exc
            self._fail(KswError(f"{type(exc).__name__}: {exc}"))
        finally:
            self._running = False
            rig.close(failure)      # a hit in hand (vCPU snapshot, dump) finishes first

    def _fail(self, exc: KswError) -> None:
        self.error = exc
        self._state, self._detail = RunState.FAILED, " ".join(str(exc).split())
        self._publish(force=True)

    def run_on(self, target: Target, symbolizer: Any = None) -> None:
        """Watch ``target`` until a `Quit` or the guest's exit (the worker's loop).

        Public so unit tests can drive it with a fake target (and a fake
        ``symbolizer``) in their own thread, with `layout` and `accel` set by hand.
        """
        assert self.layout is not None and self.accel is not None
        self._attach(target, symbolizer)
        self._loop()

    def _attach(self, target: Target | None = None, symbolizer: Any = None) -> None:
        """Wire the engine (the rig places a KASLR kernel first), then work at the guest's
        addresses: watches added later resolve against the relocated program."""
        rig = self._rig()
        rig.attach(target, symbolizer)
        if rig.program_view is not self.program and rig.program_view is not None:
            with self._symbols_lock:
                self.program, self.layout = rig.program_view, rig.layout
        self._specs = rig.specs

    def _loop(self) -> None:
        assert self.rig is not None and self.rig.target is not None
        rig, target = self.rig, self.rig.target
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout if timeout and timeout > 0 else None
        if self._run_wanted:
            self._resume()
        else:
            self._state, self._detail = RunState.FROZEN, "paused before the first instruction"
        self._publish(force=True)
        while not self._quit:
            was = self._state
            if self._running:
                stop = target.wait_stop(POLL_SECONDS)
                if stop is None:
                    timed_out = deadline is not None and time.monotonic() >= deadline
                    if rig.hung():
                        assert rig.watchdog is not None
                        raise InfraError(rig.watchdog.reason or "the run was stopped")
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
                if self._lend_to_gdb():
                    continue
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
                self._state = RunState.FROZEN
            # Per stop only when something changed: this is the engine's hot path.
            self._publish(force=applied or self._state != was or not self._running)

    def _resume(self) -> None:
        assert self.target is not None
        self.target.resume()
        self._running = True
        self._state, self._detail = RunState.RUNNING, ""

    def _halt(self) -> Stop:
        """Interrupt the running guest; return the first stop that follows."""
        assert self.target is not None
        self.target.interrupt()
        self._interrupted = True
        give_up = time.monotonic() + HALT_SECONDS
        while True:
            stop = self.target.wait_stop(1.0)
            if stop is not None:
                return stop
            if time.monotonic() > give_up:
                raise KswError(f"the guest did not stop within {HALT_SECONDS:g}s of an "
                               "interrupt")

    def _on_stop(self, stop: Stop) -> bool:
        """Handle one stop with the engine; False when the guest has ended."""
        assert self.engine is not None
        interrupted, self._interrupted = self._interrupted, False
        poll_froze = self.polls.freeze_pending()
        if stop.kind == "other" and (interrupted or poll_froze):
            if poll_froze:
                self._poll_freeze()      # a poll's QMP stop: nothing for the engine either
            return True                  # our own interrupt: nothing for the engine
        verdict = self.engine.handle(stop)
        if verdict == "exit":
            self._state, self._detail = RunState.EXITED, "guest ended"
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
        engine, pool = self.engine, self.rig.pool if self.rig is not None else None
        assert engine is not None and pool is not None
        with self._lock:
            index = engine.add_spec(command.spec)
            self._resolved += [None] * (index - len(self._resolved))
            self._resolved.append(command.resolved)
        pool.capacity = self._pool_capacity()
        what = self._describe(index)
        if self.log is not None:
            self.log.write("watch-add", index=index, config=command.spec.text, watch=what)
        warnings = command.resolved.warnings if command.resolved is not None else ()
        self.note(f"watch #{index} armed: {command.spec.text} ({what})"
                  + "".join(f"; warning: {w}" for w in warnings))

    def _do_remove(self, command: RemoveWatch) -> None:
        engine, pool = self.engine, self.rig.pool if self.rig is not None else None
        assert engine is not None and pool is not None
        try:
            engine.remove_spec(command.index)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        pool.capacity = self._pool_capacity()
        if self.log is not None:
            self.log.write("watch-remove", index=command.index,
                           config=engine.specs[command.index].text)
        self.note(f"watch #{command.index} removed: {engine.specs[command.index].text}")

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
        self._state, self._detail = RunState.FROZEN, f"({why})"
        frozen = freeze_vmcore(self.rig, why) if self.machine is not None else None
        path = frozen.path if frozen is not None else None
        self._vmcore, self._inspect = path, frozen.inspect if frozen is not None else ""
        if self.log is not None:
            self.log.write("freeze", why=why, vmcore=str(path) if path else None,
                           ticks=frozen.ticks if frozen is not None else None)
        rig = self.rig
        listener = rig.plan.listener if rig is not None else None
        symbols = gdb_symbols(self.symbols_path or "", rig.placement.slide
                              if rig is not None and rig.placement is not None else None)
        if listener is not None:
            self.note(f"frozen ({why}); attach: gdb {symbols} -ex 'target remote "
                      f"{listener.address}'" + (f"; vmcore {path}" if path else ""))
        elif frozen is not None:
            self.note(f"frozen ({why}); vmcore {path}; inspect: {frozen.inspect}")
        else:
            self.note(f"frozen ({why})")

    def _poll_inspect(self, vmcore: Path | None) -> str:
        """The command that opens a poll's freeze dump ("" when there is none)."""
        rig = self.rig
        if vmcore is None or self.image is None:
            return ""
        slide = rig.placement.slide if rig is not None and rig.placement is not None else None
        return inspect_command(self.image, vmcore, slide)

    def _lend_to_gdb(self) -> bool:
        """``--gdb-listen``: serve a gdb that connects to the frozen guest, read-only.

        Looked at between commands while the guest is frozen; while a gdb is
        attached the queue waits (the guest stays frozen anyway). True if one
        was served.
        """
        rig = self.rig
        listener = rig.plan.listener if rig is not None else None
        if listener is None or rig is None or rig.client is None or not self._queue.empty():
            return False
        try:
            transport = listener.accept(POLL_SECONDS)
        except StubClosed:
            return False                    # nobody connected this time
        hits = self.hits()
        self.note(f"gdb attached on {listener.address} (commands wait until it detaches)")
        Relay(rig.client, None, hits[-1].cpu + 1 if hits else 1).serve(transport)
        self.note("gdb detached; c continues")
        return True

    def _poll_freeze(self) -> None:
        """A poll hit with ``on-hit=freeze`` stopped the guest: keep it stopped until `c`."""
        was = self._run_wanted
        self._run_wanted = False
        hit = self.polls.freezer()
        what = f"poll #{hit.poll_id}" if hit is not None else "a poll"
        self._state, self._detail = RunState.FROZEN, f"({what} on-hit=freeze)"
        if was:
            if self.log is not None:
                self.log.write("freeze", why=f"{what} on-hit=freeze", vmcore=None)
            self.note(f"frozen by {what} (on-hit=freeze); its vmcore is in the hit detail; "
                      "c continues")

    # --------------------------------------------------------- helpers
    def _on_hit(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)
        self._publish(force=True)

    def _pool_capacity(self) -> int:
        assert self.rig is not None
        return self.rig.pool_capacity()

    def _describe(self, index: int) -> str:
        resolved = self._resolved[index] if index < len(self._resolved) else None
        return resolved.describe() if resolved is not None else self._specs[index].what

    def _is_active(self, index: int) -> bool:
        engine = self.engine
        return engine is None or index not in engine.removed

    def _require_guest(self, what: str) -> None:
        state = self.snapshot().state
        if state in (RunState.EXITED, RunState.FAILED, RunState.CLOSED):
            raise BadInput(f"cannot {what}: the guest has {state}"
                           if state != RunState.FAILED else f"cannot {what}: the session failed")

    def _rows(self) -> tuple[WatchRow, ...]:
        engine = self.engine
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
            if state == RunState.RUNNING and not self._run_wanted:
                state = RunState.FROZEN
            vmcore = self._vmcore if self._vmcore is not None else self.polls.freeze_vmcore()
            self._snapshot = Snapshot(
                state=state, detail=self._detail, watches=rows, hit_count=len(self._hits),
                vmcore=vmcore, inspect=self._inspect if self._vmcore is not None else
                self._poll_inspect(vmcore),
                guest_exit=self._guest_exit, notice=self._notice,
                notice_seq=self._notice_seq,
                error=" ".join(str(self.error).split()) if self.error else "",
                polls=self.polls.rows(), poll_hit_count=self.polls.hit_count(),
            )

