"""Run a watch with the TCG plugin engine: no gdbstub, no breakpoint stop.

The watch policy is the gdbstub engine's (`kswgdb.run.prepare.prepare`: configs
parsed and resolved against the kernel's symbols into `ArmSpec`s, the guest
layout from its DWARF); only the execution differs. QEMU 10 (plugin API 4)
is started with ``kswplugin.so`` and those numbers as plugin arguments; the
plugin connects to a Unix socket in a private 0700 directory of ours while
QEMU initialises (before any guest code runs), and reports hits as JSON
lines. The guest runs freely; a hit that asks for it is frozen through QMP
(``stop``), a few guest instructions after the store since the plugin never
blocks its vCPU.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kswgdb.errors import InfraError
from kswgdb.plugin import protocol
from kswgdb.plugin.args import plugin_args, plugin_option
from kswgdb.plugin.build import build
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.fetch import Qemu10, fetch
from kswgdb.qemu.machine import Machine
from kswgdb.qemu.rundir import owned_tempdir
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import Plan, prepare
from kswgdb.watch.hits import Hit
from kswgdb.watch.slots import TCG_DEFAULT_SLOTS
from kswgdb.watch.symbolize import ProgramSymbolizer

SOCKET_NAME = "plugin.sock"
#: How long QEMU may take from launch to the plugin's first line.
HELLO_TIMEOUT = 30.0
#: How often the guest's end is looked for; how often QMP is asked for a crashed state.
POLL_PERIOD = 0.02
STATE_CHECK_PERIOD = 1.0
#: How long an exiting QEMU (its plugin said ``end``) may take to be gone.
EXIT_WAIT = 30.0
#: How long after sending QMP ``stop`` the held vCPU is let go (QEMU must have read it).
RELEASE_AFTER = 0.05


class PluginRunError(InfraError):
    """The plugin did not connect, said something unexpected, or vanished mid-run."""


@dataclass
class PluginReport:
    """What a plugin-engine run saw; ``summary`` has `Engine.summary`'s shape."""

    hits: list[Hit]
    summary: list[dict[str, Any]]
    guest_exit: GuestExit | None
    console_log: list[str]
    seconds: float
    frozen: bool = False
    ended_cleanly: bool = False          # the plugin's ``end`` line arrived
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verdict(self) -> str | None:
        return next((ln for ln in reversed(self.console_log) if "KSWTEST verdict" in ln), None)


class _Link:
    """The plugin's socket: lines in, parsed on a reader thread."""

    def __init__(self, conn: socket.socket, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.conn = conn
        self.on_event = on_event
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._read, name="kswgdb-plugin", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line:
                        self.on_event(protocol.parse_line(line))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        finally:
            self.closed.set()

    def close(self, timeout: float) -> None:
        self.closed.wait(timeout)
        with contextlib.suppress(OSError):
            self.conn.close()


def _freeze(machine: Machine, conn: socket.socket) -> None:
    """QMP ``stop`` while the plugin holds the hitting vCPU right after its store.

    ``stop`` returns only once every vCPU has paused, and the held one pauses
    only after the plugin lets it go: so the command goes out first, from a
    thread, and the plugin is released once QEMU has had time to take it.
    """
    stopper = threading.Thread(target=machine.qmp.stop, name="kswgdb-freeze", daemon=True)
    stopper.start()
    time.sleep(RELEASE_AFTER)
    with contextlib.suppress(OSError):
        conn.sendall(b"g")
    stopper.join(10.0)


class PluginRun:
    """Prepare (policy, QEMU 10, plugin build), then run the guest once."""

    def __init__(self, options: RunOptions, qemu: Qemu10 | None = None,
                 on_hit: Callable[[Hit], None] | None = None,
                 plugin_extra: tuple[str, ...] = ()) -> None:
        """``plugin_extra``: more plugin arguments (measurements: ``stores=1``)."""
        self.options = options
        self.plugin_extra = plugin_extra
        self.session: Plan | None = None       # what `prepare` checked
        self.qemu = qemu
        self.on_hit = on_hit
        self.plugin: Path | None = None

    def prepare(self) -> None:
        """Every input checked and the plugin built before anything starts."""
        self.session = prepare(self.options)
        if self.session.module_watches or self.session.poll_specs:
            raise InfraError("the plugin engine prototype watches kernel functions only "
                             "(no module watches, no --poll)")
        self.qemu = self.qemu or fetch()
        self.plugin = build(self.qemu)

    def _task_exit(self) -> int | None:
        """The function every dying task calls, as the gdbstub engine's exit hook."""
        assert self.session is not None
        return self.session.exit_hook

    @staticmethod
    def _watch(machine: Machine, conn: socket.socket, link: _Link, freeze: threading.Event,
               final: dict[str, Any], deadline: float) -> GuestExit | None:
        """Wait for the guest's end, a freeze (None) or the deadline.

        QEMU's process is watched directly; QMP (which `Machine.wait_exit` asks
        about a crashed run state) only once a second, since QEMU's main loop
        answers nothing while a vCPU is in the middle of exiting. The plugin's
        ``end`` line means QEMU is exiting: its process is then waited for.
        """
        checked = 0.0
        while (now := time.monotonic()) < deadline:
            if freeze.is_set():
                _freeze(machine, conn)
                return None
            if link.error is not None:
                raise PluginRunError(f"plugin link failed: {link.error}")
            if not machine.running or final.get("end"):
                return machine.wait_exit(EXIT_WAIT)
            if now - checked >= STATE_CHECK_PERIOD:
                checked = now
                ended = machine.wait_exit(0.0)
                if ended.kind != "timeout":
                    return ended
            time.sleep(POLL_PERIOD)
        return machine.wait_exit(0.0)

    def run(self) -> PluginReport:
        if self.plugin is None:
            self.prepare()
        s, opts = self.session, self.options
        assert s is not None and self.qemu is not None and self.plugin is not None
        assert s.image is not None and s.program is not None and s.layout is not None
        sym = ProgramSymbolizer(s.program)
        private = owned_tempdir()
        hits: list[Hit] = []
        events: list[dict[str, Any]] = []
        freeze = threading.Event()
        final: dict[str, Any] = {}

        def on_event(event: dict[str, Any]) -> None:
            events.append(event)
            if event["event"] == "hit":
                hit = protocol.hit_from_event(event, s.specs, sym, s.layout)
                hits.append(hit)
                final["stats"] = event.get("stats", [])
                if self.on_hit is not None:
                    self.on_hit(hit)
                if event.get("freeze"):
                    freeze.set()
            elif event["event"] == "end":
                final["stats"] = event.get("stats", [])
                final["end"] = True

        started = time.monotonic()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        link: _Link | None = None
        try:
            path = private / SOCKET_NAME
            listener.bind(str(path))
            listener.listen(1)
            max_watch = max((sp.max_watch for sp in s.specs), default=0)
            pool = min(opts.slots or TCG_DEFAULT_SLOTS, max_watch or TCG_DEFAULT_SLOTS)
            args = plugin_args(s.specs, s.layout, str(path), pool=pool,
                               freeze=opts.on_hit == "freeze", task_exit=self._task_exit())
            args += self.plugin_extra
            additions = s.additions.machine_kwargs()      # --module, --drive, --qemu-arg
            extra = (*additions.pop("extra_args", ()),
                     "-plugin", plugin_option(str(self.plugin), args))
            with Machine(s.image, accel="tcg", scenario=opts.scenario, extra_cmdline=opts.cmdline,
                         paused=True, gdb=False, qemu_binary=str(self.qemu.binary),
                         extra_args=extra, **additions) as machine:
                listener.settimeout(HELLO_TIMEOUT)
                try:
                    conn, _ = listener.accept()
                except TimeoutError as exc:
                    raise PluginRunError("the plugin did not connect to kswgdb") from exc
                link = _Link(conn, on_event)
                machine.resume()
                guest_exit = self._watch(machine, conn, link, freeze, final,
                                         started + opts.timeout)
                frozen = guest_exit is None
                console = machine.console.lines()
            link.close(5.0)
            if link.error is not None:
                raise PluginRunError(f"plugin link failed: {link.error}")
        finally:
            listener.close()
            if link is not None:
                link.close(0.0)
            shutil.rmtree(private, ignore_errors=True)
        return PluginReport(
            hits=hits, summary=protocol.summary(final.get("stats", []), s.specs),
            guest_exit=guest_exit, console_log=console, seconds=time.monotonic() - started,
            frozen=frozen, ended_cleanly=bool(final.get("end")), events=events,
        )
