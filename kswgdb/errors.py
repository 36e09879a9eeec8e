"""The root of every error kswgdb raises on purpose.

Exit statuses (`kswgdb.exitcodes`) follow the class of the error that reached
it: a `BadInput` is the user's to fix (exit 2), an `InfraError` means QEMU, gdb or
the stub failed under us (exit 3). Each layer derives its own base from one of
these two so callers can catch a layer without knowing its internals::

    KswError
    ├── BadInput            exit 2: config string, CLI argument, image, symbol
    └── InfraError          exit 3
        ├── qemu.MachineError       QEMU did not start, died, or timed out
        └── gdbstub.StubError       the remote protocol failed (sent/received kept)
"""

from __future__ import annotations

from kswgdb.exitcodes import ExitStatus


class KswError(Exception):
    """Base of all deliberate kswgdb errors; the message is one line for the user."""

    exit_code = ExitStatus.INFRA


class BadInput(KswError):
    """Something the user gave us is wrong; nothing has been left running."""

    exit_code = ExitStatus.BAD_INPUT


class InfraError(KswError):
    """The machinery under the tool failed: QEMU, the gdbstub, gdb, the host."""

    exit_code = ExitStatus.INFRA
