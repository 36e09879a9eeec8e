"""How a guest ended, decided from QEMU's exit status and its last QMP events.

The test kernel reports through ``isa-debug-exit``: a write of ``code`` to port
0xf4 makes QEMU exit with status ``(code << 1) | 1``. Up to QEMU 9.0 it calls
``exit()`` at once — no QMP event, the sockets just close. From 9.1 on it goes
through QEMU's shutdown path like a power-off: a SHUTDOWN event with reason
``guest-shutdown`` (and a ``W`` packet on the gdbstub), then the same odd status;
only the status, and knowing the version (`kswgdb.qemu.version.Quirks`), tell it
from a power-off, which exits 0. Everything else that ends a guest goes through
QEMU's shutdown path and leaves a SHUTDOWN event whose ``reason`` tells the cases
apart:

=================  ===========================  =================================
QEMU status        SHUTDOWN reason              kind
=================  ===========================  =================================
odd, no event      —                            ``debug-exit`` (code = status >> 1)
odd (QEMU >= 9.1)  guest-shutdown               ``debug-exit`` (code = status >> 1)
0                  guest-reset                  ``triple-fault`` (under -no-reboot a
                                                triple fault or guest reset exits)
0                  guest-shutdown               ``shutdown`` (ACPI power-off etc.)
0                  guest-panic                  ``panic``
0                  host-* (qmp-quit, signal...) ``killed``
< 0 (signal)       any                          ``killed``
other              —                            ``crashed`` (QEMU failed by itself)
=================  ===========================  =================================

Plus two states where QEMU did *not* exit: ``timeout`` (still running after the
wait) and ``crashed`` with QEMU alive but stopped in ``internal-error``.

A Linux guest that panics usually does not say so to QEMU: with ``panic=-1`` it
reboots at once (under ``-no-reboot``: SHUTDOWN ``guest-reset``, which alone
would read as a triple fault), with ``panic=N`` after N seconds. Its console
does say so (``Kernel panic - not syncing: <why>``): a guest-reset, guest-panic
or power-off whose console carries that line is kind ``panic``, and
`GuestExit.panic` keeps the line.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ExitKind = Literal["debug-exit", "triple-fault", "shutdown", "panic", "timeout", "killed",
                   "crashed"]


@dataclass(frozen=True)
class GuestExit:
    """The end of one guest run.

    ``code`` is the guest's isa-debug-exit code (``debug-exit`` only); ``status`` is
    QEMU's exit status (negative: killed by that signal; None: still running);
    ``reason`` is the SHUTDOWN reason or a short description; ``lines`` the last
    serial console lines.
    """

    kind: ExitKind
    status: int | None = None
    code: int | None = None
    reason: str = ""
    lines: tuple[str, ...] = field(default=(), compare=False)
    panic: str | None = None       # the guest kernel's own panic line, if it printed one

    def __str__(self) -> str:
        return f"{self.brief}: {self.panic}" if self.panic else self.brief

    @property
    def brief(self) -> str:
        """``kind code= status= reason=``, without the panic line."""
        parts = [self.kind]
        if self.code is not None:
            parts.append(f"code={self.code:#x}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.reason:
            parts.append(f"reason={self.reason}")
        return " ".join(parts)


#: Linux's panic() headline; printk may prefix a timestamp or a log level.
_LINUX_PANIC = re.compile(r"Kernel panic - not syncing: .*")


def kernel_panic_line(lines: Sequence[str]) -> str | None:
    """The last ``Kernel panic - not syncing: ...`` line (from "Kernel panic" on)."""
    for line in reversed(lines):
        found = _LINUX_PANIC.search(line)
        if found:
            return found.group(0).rstrip()
    return None


def debug_exit_status(code: int) -> int:
    """QEMU's exit status for an isa-debug-exit write of ``code``."""
    return ((code << 1) | 1) & 0xFF


def decode_exit(
    status: int,
    shutdown: dict[str, Any] | None = None,
    lines: Sequence[str] = (),
    panic: str | None = None,
    *,
    debug_exit_via_shutdown: bool = False,
) -> GuestExit:
    """Classify a finished QEMU from its exit status and last SHUTDOWN event (if any).

    ``panic`` is the guest kernel's panic line (`kernel_panic_line` of the
    console); by default it is looked for in ``lines``. ``debug_exit_via_shutdown``
    is the running QEMU's quirk (`kswgdb.qemu.version.Quirks`): from 9.1 on, an
    isa-debug-exit is a SHUTDOWN ``guest-shutdown`` with the odd status.
    """
    tail = tuple(lines)
    reason = str((shutdown or {}).get("data", {}).get("reason", "")) if shutdown else ""
    if debug_exit_via_shutdown and reason == "guest-shutdown" and status > 0 and status & 1:
        return GuestExit("debug-exit", status=status, code=status >> 1,
                         reason="isa-debug-exit", lines=tail)
    panic = panic if panic is not None else kernel_panic_line(tail)
    if status >= 0 and panic and reason in ("guest-reset", "guest-panic", "guest-shutdown"):
        return GuestExit("panic", status=status, reason=reason, lines=tail, panic=panic)
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return GuestExit("killed", status=status, reason=reason or f"QEMU killed by {name}",
                         lines=tail)
    if shutdown is not None:
        if reason == "guest-reset":
            return GuestExit("triple-fault", status=status, reason=reason, lines=tail)
        if reason == "guest-shutdown":
            return GuestExit("shutdown", status=status, reason=reason, lines=tail)
        if reason == "guest-panic":
            return GuestExit("panic", status=status, reason=reason, lines=tail)
        return GuestExit("killed", status=status, reason=reason or "host", lines=tail)
    if status & 1:
        return GuestExit("debug-exit", status=status, code=status >> 1,
                         reason="isa-debug-exit", lines=tail)
    return GuestExit("crashed", status=status,
                     reason=f"QEMU exited with status {status} and no SHUTDOWN event",
                     lines=tail)
