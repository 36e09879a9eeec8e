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


#: QEMU 10.0 ("target/i386: execute multiple REP/REPZ iterations without leaving TB",
#: Paolo Bonzini, December 2024, after 9.2): TCG runs a REP string instruction as a
#: loop inside one translation block, up to 65535 iterations, unless the block is
#: built for icount or single-stepping (``can_loop`` in ``do_gen_rep``). A data
#: watchpoint hit re-executes "one instruction", which is now the whole loop: the
#: stop comes after ``rep stos`` wrote *every* byte (the canary and what lies above
#: it, return addresses included), not after the first one as before.
REP_STRING_LOOPS = QemuVersion(10, 0, 0)

#: What kswgdb adds under TCG on such a QEMU to get one stop per iteration back:
#: icount translates every block with CF_USE_ICOUNT, which turns the loop off;
#: ``shift=auto`` keeps guest time following the host's.
PER_ITERATION_ICOUNT = "shift=auto"


@dataclass(frozen=True)
class Quirks:
    """What differs, per QEMU version, in things kswgdb relies on.

    ``debug_exit_via_shutdown``: the guest's isa-debug-exit ending comes with a
    SHUTDOWN ``guest-shutdown`` event (and a gdbstub ``W`` packet); only the odd
    exit status, ``(code << 1) | 1``, tells it from a power-off (status 0).
    Before 9.1 QEMU exits at once with no event and the gdbstub just closes.

    ``rep_string_loops``: under TCG a REP string instruction runs all its
    iterations before a watchpoint stop (see `REP_STRING_LOOPS`); `tcg_args` turns
    that off with icount, so a ``rep stos`` over a watched slot stops after its
    first byte there, as on earlier versions.
    """

    debug_exit_via_shutdown: bool
    rep_string_loops: bool

    @classmethod
    def of(cls, version: QemuVersion) -> Quirks:
        return cls(debug_exit_via_shutdown=version >= DEBUG_EXIT_VIA_SHUTDOWN,
                   rep_string_loops=version >= REP_STRING_LOOPS)

    def tcg_args(self, *, gdbstub: bool = True) -> tuple[str, ...]:
        """Extra QEMU arguments under TCG that keep watchpoint stops per instruction step.

        Only a QEMU with a gdbstub has watchpoint stops: without one (the TCG plugin
        engine, a guest alone) icount would only slow the guest down.
        """
        return ("-icount", PER_ITERATION_ICOUNT) if self.rep_string_loops and gdbstub else ()
