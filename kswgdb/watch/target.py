"""What the watch engine needs from a guest, and nothing more.

The engine is written against this small interface rather than against the
remote-protocol client so that it can be tested without QEMU (a fake made of
byte buffers and scripted stops, see ``tests/unit/fake_target.py``) and so that
the wire layer stays free to batch and pipeline packets: breakpoint and
watchpoint changes are *requests* that an implementation may queue and send
together with the next read or resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Stop:
    """One stop of the guest, as the engine sees it.

    ``kind`` is ``"break"`` (a breakpoint at ``pc``), ``"watch"`` (a write
    watchpoint at ``watch_addr`` fired; ``pc`` is after the store), ``"exit"``
    (the guest or QEMU ended; ``exit_status`` if known) or ``"other"`` (a stop
    nobody asked for: an interrupt, a signal). A ``"break"`` may also carry a
    ``watch_addr``: the stub attached a pending watchpoint report of that vCPU
    to its breakpoint stop, and both must be handled.
    """

    kind: str
    thread: int = 0
    pc: int = 0
    watch_addr: int | None = None
    exit_status: int | None = None
    detail: str = ""
    watch_access: str = "write"    # what fired at watch_addr: "write" | "read" | "access"


@dataclass
class Registers:
    """The registers of the stopped vCPU that the engine uses by name."""

    values: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def get(self, name: str, default: int = 0) -> int:
        return self.values.get(name, default)

    @property
    def sp(self) -> int:
        return self.values["rsp"]

    @property
    def fp(self) -> int:
        return self.values["rbp"]

    @property
    def pc(self) -> int:
        return self.values["rip"]


class Target(Protocol):
    """A guest that can be stopped, read, and given break- and watchpoints."""

    def wait_stop(self, timeout: float | None) -> Stop | None:
        """Block until the guest stops; ``None`` on timeout (guest still running)."""

    def registers(self, thread: int) -> Registers:
        """Registers of ``thread`` (a vCPU) while the guest is stopped."""

    def read(self, addr: int, length: int) -> bytes:
        """Guest virtual memory, as the stopped vCPU sees it."""

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several reads in one go; implementations pipeline them."""

    def set_breakpoint(self, addr: int) -> None: ...

    def clear_breakpoint(self, addr: int) -> None: ...

    def set_watchpoint(self, addr: int, length: int, access: str = "write") -> None: ...

    def clear_watchpoint(self, addr: int, length: int, access: str = "write") -> None: ...

    def resume(self) -> None:
        """Let the guest run again, stepping the stopped vCPU off any breakpoint it sits on."""

    def interrupt(self) -> None:
        """Ask a running guest to stop (a ``Stop`` of kind ``other`` follows)."""
