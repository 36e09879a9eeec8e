"""Connecting to, and leaving, the gdbstub of a QEMU someone else started.

Three facts about QEMU's gdbstub (7.2 and 10.0, measured) shape this module:

* QEMU stops the guest the moment a client connects (``vm_stop`` when the
  chardev opens) and, when the guest was running, 7.2 sends an unsolicited
  ``T02`` stop reply before reading anything. The first reply read after
  connecting may therefore be that stop, not the answer to ``qSupported``:
  `connect_existing` reads past it.
* A client that closes its connection without ``D`` (or a ``c``) leaves the
  guest paused for good; only ``D`` resumes it. With multiprocess ids on,
  QEMU 10 refuses a bare ``D`` (E22), so `RemoteClient.detach` sends ``D;1``.
* The stub serves one client. A second connection is accepted by the kernel
  (the listen backlog) but QEMU never reads it while the first client stays,
  so a busy stub is a handshake that gets no answer, not a refusal. Worse, once
  the first client leaves, QEMU accepts the queued connection, stops the guest
  for it and, when it turns out closed, leaves the guest paused: a busy stub is
  best found *before* connecting (QMP ``query-chardev``: `chardev_busy`).

Nothing here knows about watching; the caller decides what to remove before
`RemoteClient.detach`.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from kswgdb.errors import BadInput
from kswgdb.gdbstub.client import CLIENT_FEATURES, RemoteClient
from kswgdb.gdbstub.errors import StubClosed, StubTimeout
from kswgdb.gdbstub.transport import Transport, parse_address

#: How long a stub has to answer ``qSupported`` before it counts as busy.
ANSWER_TIMEOUT = 3.0


class StubUnreachable(BadInput):
    """Nothing listens at the gdbstub address (exit 2: the address is the user's)."""


class StubBusy(BadInput):
    """The stub does not answer: another debugger holds it (exit 2)."""


def check_address(address: str) -> str:
    """``unix:PATH`` or ``127.0.0.1:PORT`` / ``localhost:PORT``; BadInput otherwise.

    A plain path is taken as a Unix socket. Remote hosts are refused: the stub gives
    full control of the guest and its protocol has no authentication.
    """
    family, where = parse_address(address)
    if family == socket.AF_UNIX and not str(where):
        raise BadInput(f"gdbstub address {address!r}: no socket path")
    return address


def connect_existing(address: str, *, timeout: float = 5.0,
                     answer_timeout: float = ANSWER_TIMEOUT) -> RemoteClient:
    """Connect once (no retry: QEMU is already up) and handshake with a running stub.

    `StubUnreachable` when nothing listens, `StubBusy` when the stub does not
    answer within ``answer_timeout`` (our connection is closed again).
    """
    check_address(address)
    family, where = parse_address(address)
    if stub_in_use(family, where):
        raise StubBusy(f"the gdbstub at {address} is in use: another debugger is attached "
                       "(QEMU's gdbstub serves one client at a time); nothing was touched")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(where)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise StubUnreachable(f"nothing is listening at gdbstub address {address} "
                              f"({exc.strerror or exc}): is QEMU running with -gdb "
                              f"{address}?") from None
    except OSError as exc:
        sock.close()
        raise StubUnreachable(f"cannot connect to gdbstub at {address}: "
                              f"{exc.strerror or exc}") from None
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = RemoteClient(Transport(sock), timeout=timeout)
    try:
        skip_connect_stop(client, answer_timeout)
        client.handshake()
    except StubTimeout:
        client.transport.close()
        raise StubBusy(f"the gdbstub at {address} does not answer: another debugger is "
                       "attached to it (QEMU's gdbstub serves one client at a time; QEMU "
                       "pauses the guest when it takes this closed connection later: "
                       "`cont` in its monitor resumes it)") from None
    except StubClosed:
        client.transport.close()
        raise StubBusy(f"the gdbstub at {address} closed the connection: another debugger "
                       "is attached to it, or QEMU is going away") from None
    except BaseException:
        client.transport.close()
        raise
    return client


def stub_in_use(family: int, where: str | tuple[str, int],
                proc_net: Path = Path("/proc/net")) -> bool:
    """Does a client hold the local socket ``where`` already? Asked of the kernel, so
    nothing connects (a connection to a busy stub has a side effect: module doc).

    Unix: an accepted (state 03) socket bound to the same path in ``unix``. TCP: an
    established (01) connection whose *local* port is the stub's in ``tcp``/``tcp6``.
    False when the tables cannot be read (another network namespace, no /proc).
    """
    try:
        if family == socket.AF_UNIX:
            for line in (proc_net / "unix").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) >= 8 and cols[5] == "03" and cols[7] == str(where):
                    return True
            return False
        port = f":{where[1]:04X}"
        for table in ("tcp", "tcp6"):
            path = proc_net / table
            if not path.exists():
                continue
            for line in path.read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) >= 4 and cols[1].endswith(port) and cols[3] == "01":
                    return True
    except OSError:
        return False
    return False


def skip_connect_stop(client: RemoteClient, answer_timeout: float) -> None:
    """Send ``qSupported`` and read up to its answer, past the stop QEMU may send first."""
    transport = client.transport
    transport.send_packet(CLIENT_FEATURES.encode("latin-1"))
    while True:
        reply = transport.recv_packet(answer_timeout)
        if not reply.startswith((b"T", b"S")) or b"PacketSize" in reply:
            return


def settle(client: RemoteClient, quiet: float = 0.2, limit: float = 5.0) -> None:
    """Stop the guest and read whatever is still in flight, until the stub is quiet.

    Leaving may follow an interruption at any point (Ctrl-C inside a request whose
    reply was never read, a resume whose stop never came): afterwards requests and
    replies pair up again. ``0x03`` stops a running guest and is ignored by a stopped one.
    """
    client.interrupt()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            client.transport.recv_packet(quiet)
        except StubTimeout:
            break
    client.running = False


def chardev_busy(chardevs: list[dict], address: str) -> bool | None:
    """From QMP ``query-chardev``: does a client hold the socket at ``address``?

    QEMU names a listening socket chardev ``disconnected:unix:PATH,server=on`` while
    nobody is connected and drops the prefix while a client is. None: no chardev
    has that address (the caller cannot tell).
    """
    family, where = parse_address(address)
    # unix:PATH,server=on  |  tcp:127.0.0.1:PORT,server=on <-> peer (host as QEMU got it)
    wanted = f"unix:{where}," if family == socket.AF_UNIX else f":{where[1]},"
    for dev in chardevs:
        name = str(dev.get("filename", ""))
        if wanted in name.removeprefix("disconnected:") + ",":
            return not name.startswith("disconnected:")
    return None


__all__ = ["ANSWER_TIMEOUT", "StubBusy", "StubUnreachable", "chardev_busy", "check_address",
           "connect_existing", "settle", "skip_connect_stop", "stub_in_use"]
