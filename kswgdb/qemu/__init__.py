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

from kswgdb.qemu.accel import AccelDecision, decide
from kswgdb.qemu.errors import MachineError, MachineStartError, MachineTimeout
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.qemu.machine import Machine

__all__ = [
    "AccelDecision",
    "GuestExit",
    "Machine",
    "MachineError",
    "MachineStartError",
    "MachineTimeout",
    "decide",
]
