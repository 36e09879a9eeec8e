"""QEMU versions, and what kswgdb must do differently on each (its quirks).

Every behaviour that changed between the QEMU releases kswgdb supports is one
field of `Quirks`, set from the version by a comparison with the release that
brought the change, never guessed from what a run happens to show. The measured
differences, and the versions tested, are in docs/qemu-versions.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple


class QemuVersion(NamedTuple):
    """``major.minor.micro``; compares as a tuple, so ``v >= (9, 1)`` works."""

    major: int
    minor: int
    micro: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}"


_VERSION_LINE = re.compile(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> QemuVersion | None:
    """The version in ``qemu-system-* -version`` output, or None if it is not QEMU's."""
    found = _VERSION_LINE.search(text)
    return QemuVersion(*map(int, found.groups())) if found else None


#: QEMU 9.1 ("hw/misc/debugexit: use runstate API instead of plain exit()", 2024):
#: an isa-debug-exit write no longer calls exit() from the vCPU thread; it requests a
#: guest shutdown carrying the exit status. QEMU then sends the SHUTDOWN event with
#: reason ``guest-shutdown`` (the same reason as an ACPI power-off), a ``W`` packet
#: with that status on the gdbstub, and exits with the status as before.
DEBUG_EXIT_VIA_SHUTDOWN = QemuVersion(9, 1, 0)


@dataclass(frozen=True)
class Quirks:
    """What differs, per QEMU version, in things kswgdb relies on.

    ``debug_exit_via_shutdown``: the guest's isa-debug-exit ending comes with a
    SHUTDOWN ``guest-shutdown`` event (and a gdbstub ``W`` packet); only the odd
    exit status, ``(code << 1) | 1``, tells it from a power-off (status 0).
    Before 9.1 QEMU exits at once with no event and the gdbstub just closes.
    """

    debug_exit_via_shutdown: bool

    @classmethod
    def of(cls, version: QemuVersion) -> Quirks:
        return cls(debug_exit_via_shutdown=version >= DEBUG_EXIT_VIA_SHUTDOWN)
