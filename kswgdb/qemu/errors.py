"""Errors of the QEMU machine layer.

Everything here is an `InfraError` (exit 3): QEMU itself failed under us, not the
user's input. Each error keeps the QEMU command line and the last console/stderr
lines as attributes, because "QEMU failed" is useless without both::

    InfraError
    └── MachineError          argv, console_tail
        ├── MachineStartError QEMU exited or never connected during launch
        └── MachineTimeout    a bounded wait (launch, console line, exit) ran out
"""

from __future__ import annotations

from collections.abc import Sequence

from kswgdb.errors import InfraError


class MachineError(InfraError):
    """QEMU did not start, died, or misbehaved.

    :param argv: the QEMU command line, as a list (never a shell string).
    :param console_tail: the last serial console lines and/or QEMU stderr lines.
    """

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        console_tail: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.argv: list[str] = list(argv)
        self.console_tail: list[str] = list(console_tail)

    def details(self) -> str:
        """The message plus command line and tail, for logs and verbose output."""
        parts = [str(self)]
        if self.argv:
            parts.append("command: " + " ".join(self.argv))
        if self.console_tail:
            parts.append("last output:")
            parts.extend("  " + line for line in self.console_tail)
        return "\n".join(parts)


class MachineStartError(MachineError):
    """QEMU exited, or did not connect its sockets, while being launched."""


class MachineTimeout(MachineError):
    """A bounded wait on the machine ran out (the machine may still be running)."""
