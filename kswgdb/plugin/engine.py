"""The TCG plugin engine in a rig: the gdbstub `Engine`'s place, no breakpoint stop.

A `Rig` (kswgdb.run.rig) whose plan chose the plugin (`kswgdb.plugin.choice`)
makes one `PluginEngine` before QEMU starts: it builds ``kswplugin.so`` for the
QEMU in use, listens on ``plugin.sock`` in a private 0700 directory and gives
the rig the ``-plugin`` argument. The plugin connects while QEMU initialises
(before any guest code); the rig then asks `place` where the kernel runs,
`start` to take the watches at the guest's addresses, and the driver calls
`run` exactly as it calls the gdbstub engine's: hits come back as the same
`Hit` records, written to the same event log and sink, the run ends with the
same `EngineResult` reasons (exit, freeze, deadline, stopped), and a freezing
hit is frozen through QMP.

KASLR (Linux guests): the plugin starts with ``kmap=`` and no watch. The
kernel's first store into its virtual map (the very event the gdbstub engine's
search watchpoint waits for, `kswgdb.watch.kaslr`) holds that vCPU and sends
the storing PC and code bytes; `place` finds the slide with the same
`slide_at`, answers with the watches at the guest's addresses (plus the entry
function and ``phys_base`` to read back) and checks the entry function's bytes
against the file, so another kernel than the symbol file is "symbols do not
match", not a wrong slide. No probe can have been translated before: nothing
is instrumented until that line is applied.

Module watches (``lkdtm`` functions): the placement's line also names
``do_init_module`` as a hook. Each module load holds its vCPU there while
the gdbstub engine's own `ModuleArmer` runs on this engine: it reads the
module list through the held vCPU (`read`), and the watches it adds
(`add_spec`) go to the plugin before the module's code runs; once no module
watch pends, the hook is switched off (`remove_hook`).
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kswgdb.errors import InfraError
from kswgdb.plugin import protocol
from kswgdb.plugin.args import MAX_EXITS, MAX_SPECS, plugin_args, plugin_option, spec_args
from kswgdb.plugin.build import build
from kswgdb.plugin.choice import EngineChoice
from kswgdb.qemu.machine import Machine
from kswgdb.qemu.rundir import owned_tempdir
from kswgdb.symbols.program import Program
from kswgdb.symbols.slide import KERNEL_MAP_END, KERNEL_MAP_START, KernelSlide, slid_program
from kswgdb.watch.engine import EngineResult
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hits import EventLog, Hit
from kswgdb.watch.kaslr import (
    CHECK_BYTES,
    KernelPlacement,
    SlideSearch,
    candidate_slides,
    entry_function,
    slide_at,
    slide_spec,
)
from kswgdb.watch.layout import exit_hook_address, layout_for
from kswgdb.watch.modules import LOAD_HOOK
from kswgdb.watch.spec import ArmSpec

SOCKET_NAME = "plugin.sock"
#: Linux: only code in the kernel half of the address space can store into a kernel
#: stack (user code cannot), so the stores of user code are not instrumented.
KERNEL_HALF = 0xFFFF_8000_0000_0000
#: How long QEMU may take from launch to the plugin's connection.
HELLO_TIMEOUT = 30.0
#: How often the run loop looks at QEMU; how often the watchdog is asked (it reads the
#: guest's clock through QMP: as often as the gdbstub engine asks it, not at every
#: look); how often QMP is asked for a crashed state.
POLL_PERIOD = 0.02
WATCHDOG_PERIOD = 0.25
STATE_CHECK_PERIOD = 1.0
#: How long after sending QMP ``stop`` the held vCPU is let go (QEMU must have read it).
RELEASE_AFTER = 0.05
#: How long the plugin waits for the placement's answer (kswplugin.c PLACE_WAIT_MS).
PLACE_ANSWER = 5.0
#: How long a module hook's request may wait for the plugin's answer.
HOOK_ANSWER = 5.0
#: How long a run the watchdog would stop may take to turn out an exit.
EXIT_GRACE = 1.0
FOUND_BY = "first kernel-map write, in the plugin"


class PluginRunError(InfraError):
    """The plugin did not connect, said something unexpected, or vanished mid-run."""


class _Link:
    """The plugin's socket: lines in, parsed on a reader thread."""

    def __init__(self, conn: socket.socket, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.conn = conn
        self.on_event = on_event
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self.last_line = time.monotonic()   # QEMU's exit may wait on our reading
        self.thread = threading.Thread(target=self._read, name="kswgdb-plugin", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.conn.recv(65536)
                if not chunk:
                    break
                self.last_line = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line:
                        self.on_event(protocol.parse_line(line))
                    self.last_line = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        finally:
            self.closed.set()

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.conn.sendall(data)

    def close(self, timeout: float) -> None:
        self.closed.wait(timeout)
        with contextlib.suppress(OSError):
            self.conn.close()


class PluginEngine:
    """One run's plugin: socket, QEMU argument, placement, hits (module docstring)."""

    #: The gdbstub engine's counters a report reads; the plugin has no stop at all.
    unexpected_stops = 0

    def __init__(self, choice: EngineChoice, specs: list[ArmSpec], layout: GuestLayout,
                 guest: str, *, pool: int, freeze_on_hit: bool, exit_hook: int | None,
                 keep_hits: int | None = None, extra: tuple[str, ...] = (),
                 load_hook: bool = False) -> None:
        """Build the plugin and listen; ``extra``: more plugin arguments (measurements);
        ``load_hook``: module watches wait for their module (`add_hook`)."""
        self.plugin = build(choice.qemu10)
        self.specs, self.layout, self.guest = specs, layout, guest
        self.pool, self.freeze_on_hit, self.exit_hook = pool, freeze_on_hit, exit_hook
        self.keep_hits, self.extra = keep_hits, extra
        self.private = owned_tempdir()
        self.path = self.private / SOCKET_NAME
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(1)
        self.link: _Link | None = None
        self.machine: Machine | None = None
        self.symbolizer: Any = None
        self.log: EventLog | None = None
        self.on_hit: Callable[[Hit], None] | None = None
        self.hits: list[Hit] = []
        self.hit_count = 0
        self.packets_sent = 0           # lines from the plugin: the watchdog's activity
        self.stats: list[dict[str, int]] = []
        self.ended = False              # the plugin's ``end`` line (QEMU exiting) came
        self.profile: dict[str, int] = {}   # ``prof=1``: time in the callbacks (bench/)
        self.freeze = threading.Event()
        self._placing: queue.Queue[dict[str, Any]] = queue.Queue()
        self._running = False
        self.load_hook = load_hook
        self.hooks: dict[int, Callable[[Any], None]] = {}
        self._hook_events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._held = False              # a vCPU waits in the module hook for our "go"

    # ------------------------------------------------------------ wiring
    @property
    def kaslr(self) -> bool:
        return self.guest == "linux"

    def _args(self, specs: list[ArmSpec], layout: GuestLayout, exit_hook: int | None) -> list:
        return plugin_args(specs, layout, str(self.path), pool=self.pool,
                           freeze=self.freeze_on_hit, task_exit=exit_hook)

    def qemu_args(self) -> tuple[str, ...]:
        """QEMU's ``-plugin`` option: the watches now, or (KASLR) only the kernel map."""
        if self.kaslr:
            args = [f"sock={self.path}", f"kmap={KERNEL_MAP_START:#x}/{KERNEL_MAP_END:#x}",
                    f"kstores={KERNEL_HALF:#x}"]
        else:
            args = self._args(self.specs, self.layout, self.exit_hook)
        return ("-plugin", plugin_option(str(self.plugin), [*args, *self.extra]))

    def connect(self, machine: Machine, timeout: float = HELLO_TIMEOUT) -> None:
        """Take the plugin's connection (made while QEMU initialised)."""
        self.machine = machine
        self.listener.settimeout(timeout)
        try:
            conn, _ = self.listener.accept()
        except TimeoutError as exc:
            raise PluginRunError("the plugin did not connect to kswgdb") from exc
        self.link = _Link(conn, self._on_event)
        machine.exit_nudge.heard_from = lambda: self.link.last_line

    def start(self, specs: list[ArmSpec], layout: GuestLayout, symbolizer: Any,
              log: EventLog | None, on_hit: Callable[[Hit], None] | None) -> PluginEngine:
        """The watches at the guest's addresses, and where hits go."""
        self.specs, self.layout, self.symbolizer = specs, layout, symbolizer
        self.log, self.on_hit = log, on_hit
        return self

    # --------------------------------------------------------- placement
    def place(self, program: Program, deadline: float) -> KernelPlacement:
        """Where the kernel runs (module docstring); the guest runs from here on."""
        if not self.kaslr:
            return KernelPlacement(KernelSlide(0, None, "no KASLR"), program)
        started = time.monotonic()
        self._resume()
        kernel = self._wait_placing("kernel", deadline)
        if isinstance(kernel, SlideSearch):
            return KernelPlacement(KernelSlide(0, None, "not found"), program, kernel)
        pc, code = int(kernel["pc"], 16), bytes.fromhex(kernel.get("code", ""))
        slide = slide_at(program, pc, code, candidate_slides(program)) if code else None
        if slide is None:
            self._send(b"cfg none\n")
            return self._mismatch(program, started, (
                f"the kernel's first write at its virtual addresses came from {pc:#x} "
                f"({code.hex()}), code found at no single KASLR slot of {program.path.name}: "
                "the symbols do not match the running kernel"))
        slid = slid_program(program, slide)
        layout = layout_for(slid, self.guest)
        specs = [slide_spec(s, slide) for s in self.specs]
        name, entry = entry_function(program)
        args = [a for a in self._args(specs, layout, exit_hook_address(slid, layout))
                if not a.startswith("sock=")]
        args.append(f"chk={entry + slide:#x}")
        if self.load_hook:
            args.append(f"hook={slid.function(LOAD_HOOK).addr:#x}")
        with contextlib.suppress(Exception):
            args.append(f"pb={program.global_address('phys_base') + slide:#x}")
        self._send(("cfg " + ",".join(args) + "\n").encode())
        placed = self._wait_placing("placed", time.monotonic() + PLACE_ANSWER)
        if isinstance(placed, SlideSearch):
            raise PluginRunError("the plugin did not take the watches at the kernel's "
                                 "addresses")
        want = program.symtab.read_bytes(entry, CHECK_BYTES)
        got = bytes.fromhex(placed.get("check", ""))
        if got != want:
            return self._mismatch(program, started, (
                f"the guest's {name} at {entry + slide:#x} holds {got.hex() or 'nothing'}, "
                f"{program.path.name} has {want.hex()}: the symbols do not match the running "
                "kernel"))
        physical = None
        if "phys_base" in placed:
            moved = (int(placed["phys_base"], 16) + slide) & (1 << 64) - 1
            physical = moved - (1 << 64) if moved >> 63 else moved
        search = SlideSearch(KernelSlide(slide, physical, FOUND_BY),
                             seconds=time.monotonic() - started)
        return KernelPlacement(search.slide, slid, search)

    @staticmethod
    def _mismatch(program: Program, started: float, detail: str) -> KernelPlacement:
        search = SlideSearch(None, "mismatch", detail=detail,
                             seconds=time.monotonic() - started)
        return KernelPlacement(KernelSlide(0, None, "not found"), program, search)

    def _wait_placing(self, event: str, deadline: float) -> dict[str, Any] | SlideSearch:
        """The plugin's ``event`` line, or how the run ended before it came."""
        assert self.machine is not None
        while True:
            try:
                got = self._placing.get(timeout=POLL_PERIOD * 5)
            except queue.Empty:
                got = None
            if got is not None and got["event"] == event:
                return got
            self._check_link()
            if self.ended or not self.machine.running:
                ended = self.machine.wait_exit(5.0)
                return SlideSearch(None, "exit", detail=ended.reason, exit_status=ended.status)
            if time.monotonic() >= deadline:
                return SlideSearch(None, "deadline")

    # ----------------------------------------------------------- running
    def _resume(self) -> None:
        if not self._running:
            assert self.machine is not None
            self.machine.resume()
            self._running = True

    def _send(self, data: bytes) -> None:
        assert self.link is not None
        self.link.send(data)

    def _check_link(self) -> None:
        if self.link is not None and self.link.error is not None:
            raise PluginRunError(f"plugin link failed: {self.link.error}")

    def _on_event(self, event: dict[str, Any]) -> None:
        """On the reader thread: one line from the plugin."""
        self.packets_sent += 1
        kind = event["event"]
        if kind == "hit":
            self._hit(event)
        elif kind == "end":
            self.stats = event.get("stats", [])
            self.profile = event.get("prof", {})
            self.ended = True
        elif kind in ("kernel", "placed"):
            self._placing.put(event)
        elif kind == "hook":
            self._hook_events.put(event)
        elif kind in ("mem", "added"):
            self._answers.put(event)

    def _hit(self, event: dict[str, Any]) -> None:
        hit = protocol.hit_from_event(event, self.specs, self.symbolizer, self.layout)
        self.stats = event.get("stats", [])
        self.hits.append(hit)
        self.hit_count += 1
        if self.keep_hits is not None and len(self.hits) > self.keep_hits:
            del self.hits[:len(self.hits) - max(self.keep_hits, 1)]   # the log has them all
        if self.log is not None:
            self.log.write_hit(hit)
        if self.on_hit is not None:
            self.on_hit(hit)
        if event.get("freeze"):
            self.freeze.set()

    def run(self, deadline: float, should_stop: Callable[[], bool] | None = None,
            halt: Callable[[], bool] | None = None) -> EngineResult:
        """Let the guest run until it ends, a hit freezes it, the deadline or a watchdog.

        QEMU's process is looked at directly; QMP (for a crashed run state) once a
        second, since QEMU's main loop answers nothing while a vCPU is exiting. A QEMU
        that sent SHUTDOWN is exiting: the guest ended, and no QMP command goes to it
        any more (`kswgdb.qemu.exitnudge`: one caught in flight can stall its exit,
        which the caller's `Machine.wait_exit` then wakes).
        """
        machine = self.machine
        assert machine is not None
        self._resume()
        checked = watched = 0.0
        while True:
            now = time.monotonic()
            if self.freeze.is_set():
                self._freeze(machine)
                return EngineResult("freeze", hits=self.hits)
            self._check_link()
            if not machine.running or self.ended or machine.shutting_down:
                return EngineResult("exit", hits=self.hits, detail="QEMU exited")
            if now >= deadline:
                return EngineResult("deadline", hits=self.hits)
            self._serve_hooks()
            asked = should_stop is not None and now - watched >= WATCHDOG_PERIOD
            if asked:
                watched = now
            if (asked and should_stop()) or (halt is not None and halt()):
                # QMP closes as QEMU exits, before its process is gone: an exit, not a fault.
                if machine.wait_exit(EXIT_GRACE).kind != "timeout":
                    return EngineResult("exit", hits=self.hits, detail="QEMU exited")
                return EngineResult("stopped", hits=self.hits)
            if now - checked >= STATE_CHECK_PERIOD:
                checked = now
                if machine.wait_exit(0.0).kind != "timeout":
                    return EngineResult("exit", hits=self.hits, detail="QEMU exited")
            time.sleep(POLL_PERIOD)

    # ------------------------------------------------------- module loads
    @property
    def target(self) -> PluginEngine:
        """What `ModuleArmer` reads guest memory through (`read`)."""
        return self

    def add_hook(self, addr: int, handler: Callable[[Any], None]) -> None:
        """``handler`` runs (in the run loop) at each module load; the plugin was told
        the hook's address with the placement (``load_hook``)."""
        self.hooks[addr] = handler

    def remove_hook(self, addr: int) -> None:
        self.hooks.pop(addr, None)
        if self._held:
            self._send(b"unhook\n")

    def read(self, addr: int, length: int) -> bytes:
        """Guest memory, through the vCPU held in the module hook (only then)."""
        if not self._held:
            raise PluginRunError("guest memory is read only while the plugin holds a vCPU")
        self._send(f"r {addr:#x} {length}\n".encode())
        data = bytes.fromhex(self._answer("mem").get("data", ""))
        if len(data) != length:
            raise PluginRunError(f"the guest's memory at {addr:#x} cannot be read")
        return data

    def add_spec(self, spec: ArmSpec) -> int:
        """One more watch (a module's, now loaded), armed from its next call on."""
        index = len(self.specs)
        exits = sum(len(s.exits) for s in self.specs) + len(spec.exits)
        if index >= MAX_SPECS or exits > MAX_EXITS or not spec.exits:
            raise PluginRunError(f"{spec.text}: the plugin takes at most {MAX_SPECS} watches "
                                 f"and {MAX_EXITS} release points, each with its release "
                                 "points known")
        self._send(("add " + ",".join(spec_args(index, spec)) + "\n").encode())
        if not self._answer("added").get("ok"):
            raise PluginRunError(f"the plugin refused the watch {spec.text}")
        self.specs.append(spec)
        return index

    def _answer(self, kind: str) -> dict[str, Any]:
        try:
            event = self._answers.get(timeout=HOOK_ANSWER)
        except queue.Empty:
            self._check_link()
            raise PluginRunError(f"the plugin sent no {kind} answer") from None
        if event["event"] != kind:
            raise PluginRunError(f"the plugin answered {event['event']}, not {kind}")
        return event

    def _serve_hooks(self) -> None:
        """Module loads waiting in the plugin: their handler, then "go"."""
        while True:
            try:
                event = self._hook_events.get_nowait()
            except queue.Empty:
                return
            handler = self.hooks.get(int(event["pc"], 16))
            self._held = True
            try:
                if handler is not None:
                    handler(None)
                else:
                    self._send(b"unhook\n")
            finally:
                self._held = False
                self._send(b"go\n")

    def _freeze(self, machine: Machine) -> None:
        """QMP ``stop`` while the plugin holds the hitting vCPU right after its store.

        ``stop`` returns only once every vCPU has paused, and the held one pauses
        only after the plugin lets it go: so the command goes out first, from a
        thread, and the plugin is released once QEMU has had time to take it.
        """
        stopper = threading.Thread(target=machine.qmp.stop, name="kswgdb-freeze", daemon=True)
        stopper.start()
        time.sleep(RELEASE_AFTER)
        self._send(b"g")
        stopper.join(10.0)

    def summary(self) -> list[dict[str, Any]]:
        """Per-watch counts in the shape of `Engine.summary`: the plugin's ``end`` line
        (QEMU quits through QMP when the rig closes), else the latest hit's."""
        return protocol.summary(self.stats, self.specs)

    def close(self) -> None:
        """After QEMU is gone: the ``end`` line read, the socket closed, the directory gone."""
        if self.link is not None:
            self.link.close(2.0 if self.machine is not None and not self.machine.running
                            else 0.0)
        with contextlib.suppress(OSError):
            self.listener.close()
        shutil.rmtree(self.private, ignore_errors=True)


def plugin_engine(plan: Any, capacity: int, extra: tuple[str, ...] = ()) -> PluginEngine:
    """The engine for a `kswgdb.run.prepare.Plan` that chose the plugin: watches at the
    file's addresses (`PluginEngine.place` moves them), at most ``capacity`` live."""
    max_watch = max((sp.max_watch for sp in plan.specs), default=0)
    return PluginEngine(plan.engine, plan.specs, plan.layout, plan.image.guest,
                        pool=min(capacity, max_watch or capacity),
                        freeze_on_hit=plan.options.on_hit == "freeze",
                        exit_hook=plan.exit_hook, keep_hits=plan.options.keep_hits,
                        extra=extra, load_hook=bool(plan.module_watches))
