"""The QEMU machine layer: launch a guest, wire its sockets, stop it for sure.

One module per job: `argv` (the command line), `rundir` (private 0700 directory),
`reaper` (no child outlives us), `console` (serial log and line waits), `qmp`
(sync QMP client and events), `exitstatus` (how a guest ended), `accel` and
`probe` (KVM only where a watchpoint provably fires), `pvh` (tiny bootable ELFs),
`cpio` and `guestcmd` (files appended to a Linux initramfs: the command, modules),
`drives` (``--drive`` images, overlays), `userargs` (``--qemu-arg`` checked),
and `machine`, which puts them together; `attached` is a QEMU the user started,
seen through its sockets and never owned (`kswgdb attach`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kswgdb.qemu.accel import AccelDecision, decide
    from kswgdb.qemu.errors import MachineError, MachineStartError, MachineTimeout
    from kswgdb.qemu.exitstatus import GuestExit
    from kswgdb.qemu.machine import Machine

#: Where each name of the package lives. Imported on first use (PEP 562): importing
#: one small module of the package (``reaper``, for every command) must not pull in
#: the machine, asyncio, pexpect and the KVM probe (0.1-0.3 s of ``kswgdb disasm``).
_LAZY = {
    "AccelDecision": "accel", "decide": "accel", "GuestExit": "exitstatus",
    "Machine": "machine", "MachineError": "errors", "MachineStartError": "errors",
    "MachineTimeout": "errors",
}

__all__ = [
    "AccelDecision",
    "GuestExit",
    "Machine",
    "MachineError",
    "MachineStartError",
    "MachineTimeout",
    "decide",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
