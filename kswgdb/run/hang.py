"""Telling a wedged guest from a quiet one, and the kernel's own stall reports.

A guest whose timer interrupt was lost for good (QEMU TCG loses one when a
watchpoint fires while the CPU pushes the interrupt frame), or that deadlocked,
prints nothing, reaches no breakpoint, and its clock stops. kswgdb's watchdog
(`kswgdb.run.faults.Watchdog`) ends such a run after `DEFAULT_HANG_TIMEOUT`
seconds in which nothing moved: no console byte, no stop, and no guest tick.
The guest's tick counter (``jiffies``) is read through QMP's ``xp`` while the
guest runs, so a guest that is busy but silent (a long computation, a
``sleep``) is never taken for a wedge, and a slow TCG boot neither: its clock
and console keep moving.

Linux reports its own stalls before it wedges ("rcu: INFO: rcu_sched detected
stalls", "watchdog: BUG: soft lockup"): `StallReporter` passes such console
lines on as they come.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from kswgdb.poll.physmem import parse_xp, xp_command

if TYPE_CHECKING:
    from kswgdb.qemu.machine import Machine

#: Seconds with no console output, no stop and no guest tick before a run is a wedge.
DEFAULT_HANG_TIMEOUT = 30.0
#: x86-64 Linux maps the kernel image at this virtual address (``__START_KERNEL_map``).
KERNEL_MAP = 0xFFFF_FFFF_8000_0000
#: Console lines in which a Linux guest says it is stalling.
STALL_LINE = re.compile(
    r"rcu: INFO: \S+ (self-)?detected stalls?|rcu: \S+ kthread starved|"
    r"watchdog: BUG: soft lockup|NMI watchdog: .*hard LOCKUP|"
    r"INFO: task \S+ blocked for more than|rcu_(sched|preempt) self-detected stall")


def tick_physical_address(ticks_addr: int | None, flavour: str) -> int | None:
    """Where the guest's tick counter lies in guest-physical memory, if we can tell.

    The test kernel maps physical == virtual. A Linux kernel's image mapping is
    ``virtual - __START_KERNEL_map`` when it is not relocated (``nokaslr``); a
    relocated one reads as a still clock, and only console and stops count.
    """
    if ticks_addr is None:
        return None
    if flavour == "linux":
        return ticks_addr - KERNEL_MAP if ticks_addr >= KERNEL_MAP else None
    return ticks_addr


class GuestClock:
    """The guest's tick counter, read while it runs; 0 when it cannot be read."""

    def __init__(self, machine: Machine, phys_addr: int | None) -> None:
        self.machine = machine
        self.phys_addr = phys_addr

    def __call__(self) -> int:
        if self.phys_addr is None or not self.machine.running or self.machine.shutting_down:
            return 0        # a QEMU that sent SHUTDOWN answers no command (qemu.exitnudge)
        command, unit = xp_command(self.phys_addr, 8)
        try:
            out = self.machine.qmp.execute("human-monitor-command", {"command-line": command})
        except Exception:  # noqa: BLE001 - a clock we cannot read just does not advance
            return 0
        data = parse_xp(str(out), unit)
        return int.from_bytes(data, "little") if len(data) == 8 else 0


class StallReporter:
    """Hands each new console line that reports a kernel stall to ``report``, once."""

    def __init__(self, lines: Callable[[], list[str]], mark: Callable[[], int],
                 report: Callable[[str], None]) -> None:
        self._lines = lines
        self._mark = mark
        self._report = report
        self._seen = mark()
        self.reported: list[str] = []

    def check(self) -> None:
        now = self._mark()
        if now == self._seen:
            return
        fresh = self._lines()[-(now - self._seen):] if now - self._seen else []
        self._seen = now
        for line in fresh:
            if STALL_LINE.search(line):
                self.reported.append(line)
                self._report(line)
