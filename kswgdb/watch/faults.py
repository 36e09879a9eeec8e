"""How a watched run can end badly, and the one line that says so.

A run ends normally when the guest ends the way a test run ends (the test
kernel's isa-debug-exit), when the guest kernel panics (Linux's ``Kernel panic -
not syncing`` on the console, or QEMU's guest-panic event: the test kernel's
own panic is an isa-debug-exit too, and LKDTM's stack corruption is *meant* to
end in the kernel's stack-protector panic; the hits decide between exit status
1 and 0, as for any normal ending) or when ``--timeout`` runs out. Everything else is a
fault, reported as exit status 3 with one line naming it: QEMU killed or
crashed, the guest triple-faulting or powering off in the middle of the watch,
the gdbstub or QMP connection closing under a live QEMU, or a guest that stops
making progress (``--hang-timeout``). Hits seen before the fault are already in
the event log (each is fsynced before it is rendered), so a fault never costs
evidence; it only means the run did not finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kswgdb.qemu.exitstatus import GuestExit

#: Guest endings that are the end of a run, not a failure under it.
NORMAL_EXITS = frozenset({"debug-exit", "panic"})
#: ... and per guest flavour: a Linux guest's init powers the machine off when its
#: command is done (images/linux/init), which is how such a run ends.
FLAVOUR_NORMAL_EXITS = {"linux": frozenset({"shutdown"})}


def normal_exits(flavour: str | None) -> frozenset[str]:
    """The guest endings that end a run normally for an image of ``flavour``."""
    return NORMAL_EXITS | FLAVOUR_NORMAL_EXITS.get(flavour or "", frozenset())

#: Linux's panic when the command line has too many words it passes on to init.
BOOT_VARS = "Too many boot "

_EXIT_WORDS = {
    "triple-fault": "the guest triple-faulted",
    "shutdown": "the guest powered off",
    "killed": "QEMU was killed",
    "crashed": "QEMU crashed",
    "timeout": "the gdbstub connection closed while QEMU kept running",
}


def exit_fault(guest_exit: GuestExit | None, detail: str = "",
               normal: frozenset[str] = NORMAL_EXITS) -> str | None:
    """The fault line for a run whose guest ended with ``guest_exit``; None if normal."""
    if guest_exit is None:
        return f"the guest ended without an exit status ({detail or 'unknown'})"
    if guest_exit.kind == "panic" and guest_exit.panic and BOOT_VARS in guest_exit.panic:
        # Not the guest's doing: our command line gave init more words than the
        # kernel hands on (32 arguments, 32 environment variables).
        return (f"the kernel command line is too long for the guest kernel "
                f"({guest_exit.panic.split('not syncing: ')[-1]})")
    if guest_exit.kind in normal:
        return None
    words = _EXIT_WORDS.get(guest_exit.kind, f"the guest ended: {guest_exit.kind}")
    extra = guest_exit.reason if guest_exit.kind != "timeout" else detail
    return f"{words} while watching" + (f" ({extra})" if extra else "")


class Watchdog:
    """Decides, between stops, that a run must end: a hang or a lost QMP link.

    ``activity`` returns a number that grows whenever the guest did something
    visible (a console line, a stop handled by the engine, a tick of its clock:
    `kswgdb.watch.hang`); if it has not moved
    for ``hang_timeout`` seconds the guest is declared hung. ``qmp_lost`` says
    the QMP connection dropped while QEMU is still alive: kswgdb could no longer
    stop, dump or quit the guest cleanly, so the run ends at once.
    """

    def __init__(self, activity: Callable[[], int], qmp_lost: Callable[[], bool],
                 hang_timeout: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._activity = activity
        self._qmp_lost = qmp_lost
        self.hang_timeout = hang_timeout
        self._clock = clock
        self._last_seen = activity()
        self._last_change = clock()
        self.reason: str | None = None

    def should_stop(self) -> bool:
        """Called by the engine when no stop came for a poll period."""
        if self._qmp_lost():
            self.reason = "the QMP connection closed while QEMU kept running"
            return True
        if self.hang_timeout <= 0:
            return False
        now, seen = self._clock(), self._activity()
        if seen != self._last_seen:
            self._last_seen, self._last_change = seen, now
            return False
        if now - self._last_change >= self.hang_timeout:
            self.reason = (f"the guest hung: no console output, no stop and no clock tick "
                           f"for {self.hang_timeout:g}s (--hang-timeout)")
            return True
        return False
