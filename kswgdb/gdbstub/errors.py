"""Errors of the remote-protocol layer.

Every error keeps what was on the wire when it happened, so a report (or a bug
filed against QEMU) can quote the exchange instead of a paraphrase::

    InfraError                      (kswgdb.errors, exit 3)
    └── StubError                   .sent / .received: the packet payloads involved
        ├── ErrorReply              the stub answered ``Exx`` (``.code`` = xx as int)
        ├── Unsupported             the stub answered the empty packet: it does not
        │                           implement this request (not the same as refusing it)
        ├── StubClosed              the connection closed: QEMU exited or was killed
        ├── StubTimeout             no answer within the deadline
        └── GdbError                the gdb we drive over MI (for backtraces) failed

Bad user input (a malformed address such as a non-local host) is not a stub error:
it raises `kswgdb.errors.BadInput` because the user, not the machinery, must fix it.
"""

from __future__ import annotations

from kswgdb.errors import InfraError


class StubError(InfraError):
    """The remote protocol failed; `sent` and `received` hold the packets involved."""

    def __init__(self, message: str, *, sent: str | None = None, received: str | None = None):
        super().__init__(message)
        self.sent = sent
        self.received = received

    def __str__(self) -> str:
        text = super().__str__()
        if self.sent is not None:
            text += f" [sent {_clip(self.sent)!r}"
            text += f", received {_clip(self.received)!r}]" if self.received is not None else "]"
        return text


class ErrorReply(StubError):
    """The stub refused a request with ``Exx``.

    `code` is ``xx`` read as hex, as the protocol defines it (QEMU's ``E22``, meant
    as EINVAL, gives 0x22); -1 for the textual ``E.message`` form.
    """

    def __init__(self, code: int, *, sent: str | None = None, received: str | None = None):
        shown = received if received else f"E{code:02x}"
        super().__init__(f"stub answered error {shown}", sent=sent, received=received)
        self.code = code


class Unsupported(StubError):
    """The stub answered the empty packet: the request is not implemented at all."""


class StubClosed(StubError):
    """The connection to the stub closed (QEMU exited, crashed or was killed)."""


class StubTimeout(StubError):
    """The stub did not answer within the deadline (the guest may be running)."""


def _clip(text: str | None, limit: int = 120) -> str | None:
    """Keep error messages one line long even when a packet is kilobytes of hex."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"...(+{len(text) - limit})"


class GdbError(StubError):
    """gdb (driven over MI) died, timed out, or answered ``^error``; `sent` is the command."""
