"""A QEMU the user started, seen through its sockets: `AttachedMachine`.

`kswgdb attach` watches a guest that virtme-ng, libvirt or a hand-written
``-gdb ... -qmp ...`` command line started. The rig wants a machine (the gdbstub
address, a console, QMP, how the guest ended, something to close); this one
offers the same answers without owning a process:

* it never starts, kills or quits QEMU (no ``k`` packet, no QMP ``quit``);
  `close` only closes our QMP connection;
* there is no console: the guest's serial port belongs to whoever started QEMU;
* QMP is optional. With it, the run state before we connect says whether the
  guest was started with ``-S`` (``prelaunch``) or was already running, and
  ``query-chardev`` says whether another debugger holds the gdbstub *before* we
  connect to it (connecting to a busy stub has a side effect: see
  `kswgdb.gdbstub.attach`). Without it there is no vmcore and no run state.

Addresses are ``unix:PATH`` or ``127.0.0.1:PORT`` (``localhost:PORT``); another
host is refused, as for every socket kswgdb opens.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from kswgdb.errors import BadInput
from kswgdb.gdbstub.attach import chardev_busy, check_address
from kswgdb.gdbstub.transport import parse_address
from kswgdb.image import Image
from kswgdb.qemu.errors import MachineError
from kswgdb.qemu.exitnudge import ExitNudge
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.qmp import Qmp


class NoConsole:
    """The console of a QEMU we did not start: we see none of it."""

    def lines(self) -> list[str]:
        return []

    def tail(self, n: int = 20) -> list[str]:
        return []

    def mark(self) -> int:
        return 0


class AttachedMachine:
    """A running QEMU reached through its gdbstub (and QMP) sockets; never owned."""

    #: The rig releases an attached machine's stub by detaching, not by closing.
    attached = True

    def __init__(self, image: Image, gdb_address: str, qmp_address: str | None = None,
                 *, timeout: float = 5.0, **_machine_options: Any) -> None:
        """``_machine_options``: what the rig passes a machine it launches (ignored)."""
        self.image = image
        self.gdb_address = check_address(gdb_address)
        self.qmp_address = qmp_address
        if qmp_address is not None:
            parse_address(qmp_address)          # a bad or remote address: BadInput now
        self.timeout = timeout
        self.console = NoConsole()
        self.ram_path: Path | None = None
        self.qemu = None
        self.pid: int | None = None
        self.qemu_log_path: Path | None = None
        #: QEMU's run state before we connected ("prelaunch": started with -S), if known.
        self.state_before: str | None = None
        self._qmp: Qmp | None = None
        self._gone: GuestExit | None = None
        #: Never used: a QEMU that is not ours is never signalled (`kswgdb.qemu.exitnudge`).
        self.exit_nudge = ExitNudge()

    # ------------------------------------------------------------- launch
    def launch(self) -> None:
        """Connect QMP (when given), read the run state, refuse a busy gdbstub."""
        if self.qmp_address is None:
            return
        sock = _connect(self.qmp_address, "QMP", self.timeout)
        try:
            self._qmp = Qmp(sock, timeout=self.timeout)
        except MachineError as exc:
            raise BadInput(f"QMP at {self.qmp_address} does not answer ({exc}): another "
                           "client holds it?") from None
        self.state_before = self._qmp.status()
        chardevs = self._qmp.execute("query-chardev")
        if chardev_busy(list(chardevs) if isinstance(chardevs, list) else [],
                        self.gdb_address):
            raise BadInput(f"the gdbstub at {self.gdb_address} is in use: another debugger "
                           "is attached (QEMU's gdbstub serves one client at a time); "
                           "nothing was touched")

    @property
    def log_fields(self) -> dict[str, Any]:
        """The ``start`` event's words about what was attached to."""
        fields: dict[str, Any] = {"attached": self.gdb_address}
        if self.qmp_address is not None:
            fields.update(qmp=self.qmp_address, state_before=self.state_before)
        return fields

    @property
    def prelaunch(self) -> bool | None:
        """Started with ``-S`` and never run (None: unknown without QMP)."""
        return None if self.state_before is None else self.state_before == "prelaunch"

    # ------------------------------------------------------------ accessors
    @property
    def gdb_socket(self) -> str:
        return self.gdb_address

    @property
    def has_qmp(self) -> bool:
        return self._qmp is not None

    @property
    def qmp(self) -> Qmp:
        if self._qmp is None:
            raise MachineError("no QMP socket given (attach --qmp unix:PATH)")
        return self._qmp

    @property
    def running(self) -> bool:
        """QEMU is there, as far as we can tell (its QMP link is up, or we have none)."""
        return self._gone is None and (self._qmp is None or self._qmp.connected)

    @property
    def shutting_down(self) -> bool:
        """QEMU sent SHUTDOWN and its QMP link is still up: it answers no more commands."""
        return self._qmp is not None and self._qmp.count("SHUTDOWN") > 0 and self.running

    @property
    def guest_exit(self) -> GuestExit | None:
        return self._gone

    def qemu_log_tail(self) -> list[str]:
        return []           # QEMU's output goes wherever its owner sent it

    def resume(self) -> None:
        self.qmp.cont()

    def wait_exit(self, timeout: float) -> GuestExit:
        """After the stub closed: QEMU went away (or closed the stub); we cannot see why
        beyond QMP's SHUTDOWN event, and we never wait for a process that is not ours."""
        if self._gone is not None:
            return self._gone
        reason = "the attached QEMU closed the gdbstub connection"
        if self._qmp is not None:
            self._qmp.wait_disconnected(min(timeout, 2.0))
            event = self._qmp.shutdown_event()
            if event is not None:
                reason += f" (SHUTDOWN {event.get('data', {}).get('reason', '?')})"
        self._gone = GuestExit("killed", reason=reason)
        return self._gone

    def close(self, timeout: float = 5.0) -> None:
        """Close our QMP connection; QEMU and its guest stay as they are."""
        if self._qmp is not None:
            self._qmp.close()

    def __repr__(self) -> str:
        return f"<AttachedMachine gdb={self.gdb_address} qmp={self.qmp_address}>"


def _connect(address: str, what: str, timeout: float) -> socket.socket:
    """One connection to a local socket; BadInput when nothing listens there."""
    family, where = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(where)
    except OSError as exc:
        sock.close()
        raise BadInput(f"nothing is listening at {what} address {address} "
                       f"({exc.strerror or exc})") from None
    sock.settimeout(None)
    return sock


__all__ = ["AttachedMachine", "NoConsole"]
