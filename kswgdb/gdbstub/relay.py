"""A read-only gdbstub server that lends a stopped guest to gdb.

kswgdb keeps the only connection to QEMU (QEMU 7.2 accepts one gdb client) and
all its breakpoints. To get a symbolized, CFI-unwound backtrace of a hit, gdb is
pointed at this relay instead; the relay answers from a `RemoteClient`:

* ``?`` is answered from the stop we already know, never forwarded: QEMU's ``?``
  removes every breakpoint and watchpoint.
* ``qC`` names the thread of the hit, and ``Hg0`` (gdb's "any thread") is mapped
  to it, so gdb unwinds the CPU that stopped rather than CPU 1.
* reads (``g``, ``p``, ``m``, ``qXfer:features:read``, thread lists, ``T``,
  ``qThreadExtraInfo``) are forwarded unchanged.
* anything that would resume or modify the guest (``c s C S vCont; M X G P Z z
  R qRcmd``...) is refused with ``E01``; other requests get the empty reply
  ("unsupported"), which gdb handles by falling back.
* ``D``, ``k`` and ``vKill`` end gdb's session without touching the guest.

`Backtracer` runs one gdb (kept across hits: loading a large vmlinux costs
seconds) and returns `Frame`s; `backtrace` is the one-shot form.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import GdbError, StubClosed, StubError
from kswgdb.gdbstub.mi import GdbMI, cli_quote, gdb_command, mi_quote
from kswgdb.gdbstub.server import Listener, StubServer
from kswgdb.gdbstub.stopreply import StopReply, parse_thread_id
from kswgdb.gdbstub.transport import Transport

RELAY_FEATURES = "PacketSize=1000;qXfer:features:read+"
_FORWARD_PREFIXES = ("m", "p", "qXfer:features:read:", "qThreadExtraInfo,", "T")
_FORWARD_EXACT = frozenset({"g"})
_THREAD_LISTS = frozenset({"qfThreadInfo", "qsThreadInfo"})
# Resume or modify the guest: refused. Q packets are not refused but answered
# "unsupported" (gdb only sends them when advertised; never forwarded either).
_REFUSE_PREFIXES = (
    *("c", "C", "s", "S", "vCont;", "i", "I", "k"),
    *("M", "X", "G", "P", "Z", "z", "R", "r"),
    *("qRcmd", "vRun", "vAttach", "vFile", "vFlash"),
)
_LOCAL = {
    "qAttached": "1",
    "qSymbol::": "OK",
    "qOffsets": "",
    "qTStatus": "",
    "vMustReplyEmpty": "",
    "vCont?": "",
    "QStartNoAckMode": "",
}


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a backtrace; unknowns are None (no symbol, no line info)."""

    level: int
    pc: int
    function: str | None
    file: str | None
    line: int | None


class Relay(StubServer):
    """Serve the stopped guest behind `client` to one gdb, read-only."""

    def __init__(self, client: RemoteClient, stop: StopReply | None, thread: int | None) -> None:
        super().__init__()
        if client.running:
            raise StubError("the relay needs a stopped guest")
        self.client = client
        self.stop = stop
        self.thread = thread or (stop.thread if stop and stop.thread else None) or 1
        self.gdb_thread = self.thread  # the thread gdb has selected with Hg
        self.forwarded = 0  # requests that reached QEMU (for tests and stats)

    def handle(self, payload: str) -> str | None:
        """Answer locally, forward a read, or refuse."""
        if payload in _LOCAL:
            return _LOCAL[payload]
        if payload.startswith("qSupported"):
            return RELAY_FEATURES
        if payload == "?":
            signal = self.stop.signal if self.stop and self.stop.kind in "ST" else 5
            return f"T{signal:02x}thread:{self.thread:02x};"
        if payload in _THREAD_LISTS:
            return self._thread_list(payload)
        if payload == "qC":
            return f"QC{self.thread:02x}"
        if payload.startswith("Hg"):
            tid = parse_thread_id(payload[2:])
            return self._select(self.thread if tid in (0, -1) else tid)
        if payload.startswith("Hc"):
            return "OK"  # only matters for resuming, which is refused anyway
        if payload in ("D", "vKill") or payload.startswith(("D;", "vKill;")):
            self.done = True
            return "OK"
        if payload == "k":
            self.done = True
            return None
        if payload in _FORWARD_EXACT or (
            payload.startswith(_FORWARD_PREFIXES) and payload != "vCont?"
        ):
            return self._forward(payload)
        if payload.startswith(_REFUSE_PREFIXES):
            return "E01"
        return ""

    def _select(self, tid: int) -> str:
        """Point QEMU's Hg at `tid` through the client (which keeps its cache right)."""
        if self.client.g_thread != tid:
            try:
                self.client.set_thread("g", tid)
            except StubError as exc:
                return exc.received or "E01"
            self.forwarded += 1
        self.gdb_thread = tid
        return "OK"

    def accept_and_serve(self, listener: Listener, timeout: float | None = None) -> None:
        """Wait for one gdb (the user's own, say) on `listener` and serve it to the end.

        The session ends when gdb detaches, kills or disconnects; the guest stays
        stopped and kswgdb's breakpoints stay in place.
        """
        self.serve(listener.accept(timeout))

    def _thread_list(self, payload: str) -> str:
        """Forward a thread list, rewritten in the plain (non-multiprocess) form.

        QEMU 7.2 keeps multiprocess ids (``p01.02``) once any client asked for
        them; we told gdb we do not speak multiprocess.
        """
        reply = self._forward(payload)
        if reply[:1] not in ("m", "l") or len(reply) == 1:
            return reply
        tids = (parse_thread_id(t) for t in reply[1:].split(",") if t)
        return reply[0] + ",".join(f"{t:02x}" for t in tids)

    def _forward(self, payload: str) -> str:
        if self.client.g_thread != self.gdb_thread:  # g/p/m act on Hg's CPU
            self._select(self.gdb_thread)
        self.forwarded += 1
        return self.client.request(payload)


class Backtracer:
    """A gdb with `symbol_file` loaded, reused to unwind each hit through a `Relay`."""

    def __init__(
        self,
        symbol_file: str | None,
        *,
        directory: str | None = None,
        gdb: str = "gdb",
        timeout: float = 60.0,
        symbol_offset: int = 0,
    ) -> None:
        """``symbol_offset``: load the symbols moved by it (a kernel's KASLR slide)."""
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="kswgdb-relay-")
        # gdb takes the socket path literally up to white space; such a
        # directory falls back to 127.0.0.1 on an ephemeral port.
        spaces = any(c.isspace() for c in self.directory)
        self.listener = Listener(None if spaces else self.directory, name="relay.sock")
        self.mi = GdbMI(gdb_command(gdb), timeout=timeout)
        try:
            self.mi.command("-gdb-set confirm off")
            self.mi.command("-gdb-set architecture i386:x86-64")
            if symbol_file is not None and symbol_offset:
                self.mi.console(f"symbol-file -o {symbol_offset:#x} {cli_quote(symbol_file)}")
            elif symbol_file is not None:
                self.mi.command(f"-file-exec-and-symbols {mi_quote(symbol_file)}")
        except BaseException:
            self.close()
            raise

    def backtrace(
        self,
        client: RemoteClient,
        thread: int | None,
        stop: StopReply | None,
        *,
        max_frames: int = 64,
        timeout: float = 30.0,
    ) -> list[Frame]:
        """Connect gdb to a relay of `client`, list the frames of `thread`, disconnect."""
        relay = Relay(client, stop, thread)
        # gdb takes the address literally: quotes would become part of the path
        connect = f"-target-select remote {self.listener.address}"
        token = self.mi.send(connect)
        serving = relay.serve_in_thread(self._accept(token, connect, timeout), timeout)
        try:
            self.mi.wait(token, timeout, command=connect)
            rec = self.mi.command(f"-stack-list-frames 0 {max_frames - 1}", timeout)
        finally:
            in_flight = sys.exc_info()[1] is not None
            with contextlib.suppress(GdbError):
                self.mi.command("-target-disconnect", timeout)
            # join() re-raises the relay thread's error; while another exception (a
            # Ctrl-C, a SIGTERM's SystemExit) is on its way up, that one must win.
            with contextlib.suppress(Exception) if in_flight else contextlib.nullcontext():
                serving.join(timeout)
        return [_frame(item) for item in (rec.get("payload") or {}).get("stack", [])]

    def _accept(self, token: int, connect: str, timeout: float) -> Transport:
        """Accept gdb's connection, or raise at once if gdb reports it could not connect."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.listener.accept(0.05)
            except StubClosed:
                if self.mi.answered(token):
                    self.mi.wait(token, 0, command=connect)  # raises gdb's ^error
                    raise GdbError("gdb connected somewhere else", sent=connect) from None
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        """Kill gdb, stop listening, remove the private directory if we made it."""
        try:
            self.mi.close()
        finally:
            self.listener.close()
            if self._own_dir:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Backtracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backtrace(
    client: RemoteClient,
    symbol_file: str | None,
    thread: int | None,
    stop: StopReply | None,
    *,
    max_frames: int = 64,
) -> list[Frame]:
    """One-shot backtrace of a stopped guest (starts and kills its own gdb)."""
    with Backtracer(symbol_file) as tracer:
        return tracer.backtrace(client, thread, stop, max_frames=max_frames)


def _frame(item: object) -> Frame:
    """An MI ``frame={...}`` tuple (pygdbmi: a dict, maybe under "frame") as a Frame."""
    f = item.get("frame", item) if isinstance(item, dict) else {}
    line = f.get("line")
    return Frame(
        level=int(f.get("level", 0)),
        pc=int(f.get("addr", "0"), 16),
        function=None if f.get("func") in (None, "??") else f.get("func"),
        file=f.get("fullname") or f.get("file"),
        line=int(line) if line else None,
    )
