"""A connected byte stream that speaks packets: framing, acks, reassembly, deadlines.

Acknowledgements. QEMU 7.2 has no ``QStartNoAckMode``, so every packet is acked.
Two policies for the acks *we* owe for the packets we receive:

``eager``   send ``+`` as soon as a packet arrives: the textbook behaviour, and
            what a server (gdb as the peer) must do, since gdb waits for it.
``lazy``    owe the ``+`` and put it in front of the next packet we send (one
            ``send`` instead of two). This is correct for QEMU because its reader
            drops a pending reply as soon as it sees the ``$`` of a new packet
            (gdbstub ``gdb_read_byte``: "If we see the start of a new command then
            abandon the previous response") and never retransmits on a timer.
            It is also *required* for pipelining a resume: QEMU stops a running
            guest on *any* byte it receives, so an eager ``+`` for a reply that
            arrives after ``c`` was sent would pause the guest again.

Stubs that block until they read the ``+`` (gdbserver) need ``eager``; they do not
support pipelining anyway. A server (``server=True``, used by the relay and the fake
stub) must use ``eager``: gdb waits for the ack of each packet it sends.

Retransmission: a ``-`` from the peer makes us resend the oldest unacknowledged
frame, at most `retries` times in a row; with several frames in flight a ``-``
cannot be repaired in order and raises `StubError`. A received packet with a bad
checksum is answered with ``-`` (bounded the same way).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque

from kswgdb.errors import BadInput
from kswgdb.gdbstub.errors import StubClosed, StubError, StubTimeout
from kswgdb.gdbstub.packet import (
    ACK,
    BAD,
    INTERRUPT,
    NAK,
    NOTIFY,
    PACKET,
    Event,
    PacketParser,
    frame,
)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
_RECV_SIZE = 1 << 16


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Split ``unix:PATH``, ``PATH``, ``tcp:HOST:PORT`` or ``HOST:PORT``.

    Only local TCP is accepted: the stub gives full control of the guest and
    the protocol has no authentication, so a remote host is refused as bad input.
    """
    if address.startswith("unix:"):
        return socket.AF_UNIX, address[5:].split(",", 1)[0]
    if address.startswith("tcp:"):
        address = address[4:]
    if "/" in address or os.path.exists(address) or ":" not in address:
        return socket.AF_UNIX, address
    host, _, port = address.rpartition(":")
    if host not in LOCAL_HOSTS:
        raise BadInput(f"gdbstub address {address!r}: only 127.0.0.1/localhost is allowed")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"gdbstub address {address!r}: bad port")
    return socket.AF_INET, ("127.0.0.1", int(port))


class Transport:
    """Packets over one connected socket; not thread-safe (one owner at a time)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        ack_mode: str = "lazy",
        server: bool = False,
        retries: int = 3,
        trace: bool = False,
    ) -> None:
        if ack_mode not in ("lazy", "eager"):
            raise ValueError(f"ack_mode must be 'lazy' or 'eager', not {ack_mode!r}")
        self.sock = sock
        self.lazy = ack_mode == "lazy" and not server  # gdb as peer waits for acks
        self.server = server
        self.retries = retries
        self.trace: list[tuple[str, bytes]] | None = [] if trace else None
        self._parser = PacketParser(rle=not server)
        self._events: deque[Event] = deque()
        self._unacked: deque[bytes] = deque()  # frames sent, ack not yet seen
        self._ack_owed = False
        self._naks_in_row = 0
        self._bad_in_row = 0
        self._closed = False
        self.notifications: deque[bytes] = deque()
        self.interrupts = 0  # 0x03 bytes received (server side)
        self.last_sent: bytes = b""

    # -- construction -------------------------------------------------------

    @classmethod
    def connect(cls, address: str, timeout: float = 5.0, **kwargs: object) -> Transport:
        """Connect to a Unix socket path or a local ``host:port``; retry until `timeout`.

        Retrying covers the window between QEMU starting and its socket
        appearing (or listening), which is otherwise a race at every launch.
        """
        family, where = parse_address(address)
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.connect(where)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise StubClosed(f"cannot connect to gdbstub at {address}: {exc}") from exc
                time.sleep(0.005)
            except OSError as exc:
                sock.close()
                raise StubClosed(f"cannot connect to gdbstub at {address}: {exc}") from exc
        if family == socket.AF_INET:
            # Nagle would hold back each small packet for the previous ack.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, **kwargs)  # type: ignore[arg-type]

    # -- sending ------------------------------------------------------------

    def send_packet(self, payload: bytes) -> None:
        """Frame and send one packet (with any ack we owe in front of it)."""
        self.send_packets((payload,))

    def send_packets(self, payloads: tuple[bytes, ...] | list[bytes]) -> None:
        """Send several packets in one write: the peer processes them in order."""
        frames = [frame(p) for p in payloads]
        data = b"".join(frames)
        if self._ack_owed:
            data = b"+" + data
            self._ack_owed = False
        self._unacked.extend(frames)
        self.last_sent = frames[-1]
        self._write(data)
        if self.trace is not None:
            self.trace.extend(("sent", p) for p in payloads)

    def send_raw(self, data: bytes) -> None:
        """Send bytes outside packet framing (the interrupt byte, a bare ack)."""
        self._write(data)

    def send_interrupt(self) -> None:
        """Send 0x03: ask a running target to stop (answered by a stop reply)."""
        self._write(b"\x03")

    def flush_ack(self) -> None:
        """Send a `lazy` ack we still owe now (before closing, or to a strict peer)."""
        if self._ack_owed:
            self._ack_owed = False
            self._write(b"+")

    def forget_ack(self) -> None:
        """Drop a `lazy` ack we owe: the peer has moved on, or must not see a byte now."""
        self._ack_owed = False

    def _write(self, data: bytes) -> None:
        if self._closed:
            raise StubClosed("connection already closed", sent=_text(data))
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._closed = True
            raise StubClosed(f"gdbstub connection lost: {exc}", sent=_text(data)) from exc

    # -- receiving ----------------------------------------------------------

    def recv_packet(self, timeout: float | None) -> bytes:
        """Return the next packet's payload (escapes kept, run-length expanded).

        Acks are consumed on the way; notifications are queued in
        `notifications`; interrupt bytes are counted in `interrupts`.
        `timeout` None waits forever.
        """
        events = self._events
        deadline = None
        while True:
            while events:
                ev = events.popleft()
                if ev.kind == PACKET:
                    return self._take(ev.payload)
                self._handle(ev)
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            self._fill(deadline)

    def recv_event(self, timeout: float | None) -> Event:
        """Return the next packet or interrupt event (server side: gdb's 0x03)."""
        events = self._events
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while events:
                ev = events.popleft()
                if ev.kind == PACKET:
                    return Event(PACKET, self._take(ev.payload))
                if ev.kind == INTERRUPT:
                    self.interrupts += 1
                    return ev
                self._handle(ev)
            self._fill(deadline)

    def _take(self, payload: bytes) -> bytes:
        """Account for a received packet: ack it now (eager) or owe the ack (lazy)."""
        self._bad_in_row = 0
        if self.server:
            # A new request means the client has our earlier replies (gdb acks
            # before it sends; a lazy or pipelining client never will): forget
            # them, as QEMU does, so a later '-' can only concern the newest.
            self._unacked.clear()
        if self.lazy:
            self._ack_owed = True
        else:
            # The packet is ours even if the ack cannot go out (the peer closed
            # right after its last reply, as a relay does after D).
            with contextlib.suppress(StubClosed):
                self._write(b"+")
        if self.trace is not None:
            self.trace.append(("received", payload))
        return payload

    def poll(self) -> bool:
        """True if a complete packet or event is already buffered or readable now."""
        if self._events:
            return True
        try:
            self.sock.setblocking(False)
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        finally:
            self.sock.setblocking(True)
        if not data:
            self._closed = True
            raise StubClosed("gdbstub closed the connection")
        self._events.extend(self._parser.feed(data))
        return bool(self._events)

    def _handle(self, ev: Event) -> None:
        kind = ev.kind
        if kind == ACK:
            self._naks_in_row = 0
            if self._unacked:
                self._unacked.popleft()
        elif kind == NAK:
            self._naks_in_row += 1
            if not self._unacked:
                return  # nothing of ours outstanding: a stray '-'
            if len(self._unacked) > 1 or self._naks_in_row > self.retries:
                raise StubError(
                    "peer rejected a packet (bad checksum?) and it cannot be resent in order",
                    sent=_text(self._unacked[0]),
                )
            self._write(self._unacked[0])
        elif kind == BAD:
            self._bad_in_row += 1
            if self._bad_in_row > self.retries:
                raise StubError("repeated packets with bad checksums", received=_text(ev.payload))
            self._write(b"-")
        elif kind == NOTIFY:
            self.notifications.append(ev.payload)
        elif kind == INTERRUPT:
            self.interrupts += 1

    def _fill(self, deadline: float | None) -> None:
        """Read at least one chunk from the socket into the event queue."""
        sock = self.sock
        if deadline is None:
            sock.settimeout(None)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StubTimeout(
                    "no reply from gdbstub before the deadline", sent=_text(self.last_sent)
                )
            sock.settimeout(remaining)
        try:
            data = sock.recv(_RECV_SIZE)
        except TimeoutError as exc:
            raise StubTimeout(
                "no reply from gdbstub before the deadline", sent=_text(self.last_sent)
            ) from exc
        except OSError as exc:
            self._closed = True
            raise StubClosed(f"gdbstub connection lost: {exc}", sent=_text(self.last_sent)) from exc
        if not data:
            self._closed = True
            raise StubClosed("gdbstub closed the connection", sent=_text(self.last_sent))
        self._events.extend(self._parser.feed(data))

    # -- teardown -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the peer closed or `close` was called."""
        return self._closed

    def close(self) -> None:
        """Send any owed ack, then close the socket; idempotent."""
        if not self._closed:
            with contextlib.suppress(StubError):
                self.flush_ack()
            self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


def _text(data: bytes) -> str:
    """Wire bytes as text for error messages (latin-1 keeps every byte)."""
    return data.decode("latin-1")
