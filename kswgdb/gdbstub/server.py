"""The server side of the protocol: listen, accept one gdb, answer its packets.

Used by the relay (serving a stopped guest to gdb) and by the fake stub that the
unit tests talk to. A subclass implements `handle`, which maps one request
payload to its reply payload (or None for a resume, whose answer is a later stop
reply the subclass sends with `send`). Acks follow gdb's expectations: every
packet is acked at once (eager), and a new request makes us forget our earlier
replies, as QEMU does.

Listening: gdb 13 connects to a Unix socket with ``target remote /path/sock``
(measured on gdb 13.1), so a socket in a private directory (mode 0700) is the
default: nothing else on the machine can reach the frozen guest. A TCP listener
binds 127.0.0.1 only, on an ephemeral port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from kswgdb.gdbstub.errors import StubClosed, StubError
from kswgdb.gdbstub.packet import INTERRUPT
from kswgdb.gdbstub.transport import Transport


def parse_loopback_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:PORT`` (or ``localhost:PORT``) -> ("127.0.0.1", PORT); `BadInput` otherwise.

    A gdbstub lets whoever connects read (and, through QEMU's, write) guest memory,
    so it is only ever offered on the loopback address; port 0 picks a free one.
    """
    from kswgdb.errors import BadInput

    host, sep, port_text = text.rpartition(":")
    if not sep or host not in ("127.0.0.1", "localhost"):
        raise BadInput(f"{text!r}: only 127.0.0.1:PORT is allowed (a gdbstub is never "
                       f"exposed beyond this machine)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BadInput(f"{text!r}: the port must be a number from 0 to 65535")
    return "127.0.0.1", int(port_text)


class Listener:
    """A listening socket: a Unix socket in a private directory, or 127.0.0.1:0."""

    def __init__(self, directory: str | None = None, *, name: str = "gdb.sock",
                 port: int = 0) -> None:
        if directory is not None:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self.path: str | None = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(self.path)
            self.address = self.path
        else:
            self.path = None
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))   # loopback only, never a wildcard
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen(1)

    def accept(self, timeout: float | None) -> Transport:
        """Wait for one connection and wrap it as a server-side transport."""
        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except TimeoutError as exc:
            raise StubClosed(f"nobody connected to {self.address} in time") from exc
        conn.settimeout(None)
        if self.path is None:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Transport(conn, server=True, ack_mode="eager")

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class StubServer:
    """Answer one connection's packets with `handle` until it closes or ends."""

    def __init__(self) -> None:
        self.transport: Transport | None = None
        self.done = False  # set by a handler to end the session (detach, kill)
        self.received: list[str] = []  # every request, in order (tests, debugging)

    def handle(self, payload: str) -> str | None:
        """Return the reply to `payload`, or None when the answer comes later."""
        raise NotImplementedError

    def on_interrupt(self) -> None:
        """gdb sent 0x03; a stopped target ignores it (QEMU does the same)."""

    def send(self, payload: str) -> None:
        """Send an unsolicited packet (a stop reply after a resume)."""
        assert self.transport is not None
        self.transport.send_packet(payload.encode("latin-1"))

    def serve(self, transport: Transport, timeout: float | None = None) -> None:
        """Serve until the peer closes, a handler sets `done`, or `timeout` of silence."""
        self.transport = transport
        self.done = False
        try:
            while not self.done:
                try:
                    ev = transport.recv_event(timeout)
                except StubClosed:
                    return
                if ev.kind == INTERRUPT:
                    self.on_interrupt()
                    continue
                payload = ev.payload.decode("latin-1")
                self.received.append(payload)
                reply = self.handle(payload)
                if reply is not None:
                    transport.send_packet(reply.encode("latin-1"))
        finally:
            transport.close()

    def serve_in_thread(self, transport: Transport, timeout: float | None = None) -> ServeThread:
        """Run `serve` in a daemon thread; join it with `ServeThread.join`."""
        thread = ServeThread(self, transport, timeout)
        thread.start()
        return thread


class ServeThread(threading.Thread):
    """A `StubServer.serve` running in the background; keeps its exception."""

    def __init__(self, server: StubServer, transport: Transport, timeout: float | None) -> None:
        super().__init__(daemon=True, name="gdbstub-server")
        self.server = server
        self.transport = transport
        self.timeout = timeout
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.server.serve(self.transport, self.timeout)
        except BaseException as exc:  # surfaced by join(); a thread cannot raise
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        """Wait for the session to end and re-raise what went wrong in it."""
        super().join(timeout)
        if self.error is not None:
            err, self.error = self.error, None
            if isinstance(err, StubError):
                raise err
            raise StubError(f"stub server thread failed: {err!r}") from err
