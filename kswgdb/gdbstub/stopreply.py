"""Stop replies (gdb manual, "Stop Reply Packets") as data.

What QEMU 7.2 sends in system mode:

``T05thread:01;``                       breakpoint or single step (SIGTRAP)
``T05thread:01;watch:ffffc90000003ff8;`` write watchpoint; the PC is already the
                                        instruction *after* the store
``T02thread:01;``                       interrupted (0x03, or a byte sent while running)
``W00``                                 the guest shut down (``-no-reboot``)

gdbserver-style stubs may add ``swbreak:``/``hwbreak:``, ``core:``, inline
registers ``NN:VALUE;`` (hex register number, target-order hex value) and
``O``-packets (console output, hex) before the stop; all are parsed here so the
same code serves tests and other stubs. Unknown ``key:value`` pairs are kept in
`extra` rather than rejected: the manual says to ignore what one does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WATCH_KINDS = ("watch", "rwatch", "awatch")


@dataclass(slots=True)
class StopReply:
    """One parsed stop reply; `kind` is its letter: S, T, W, X, O (console), N."""

    kind: str
    signal: int = 0
    thread: int | None = None  # -1 all, 0 any; pid part dropped when multiprocess
    watch: str | None = None  # "watch" | "rwatch" | "awatch"
    watch_addr: int | None = None
    breakpoint: str | None = None  # "swbreak" | "hwbreak" when the stub says so
    core: int | None = None
    registers: dict[int, str] = field(default_factory=dict)  # regnum -> target-order hex
    exit_status: int | None = None  # W: exit code; X: the terminating signal is `signal`
    output: bytes = b""  # O packets: decoded console text
    extra: dict[str, str] = field(default_factory=dict)
    raw: str = ""

    @property
    def exited(self) -> bool:
        """True for W/X: the target (QEMU's guest) is gone, nothing can resume."""
        return self.kind in ("W", "X")

    @property
    def is_watchpoint(self) -> bool:
        """True if a data watchpoint caused this stop."""
        return self.watch is not None


def parse_thread_id(text: str) -> int:
    """A thread id: hex, ``-1`` (all) or ``0`` (any); ``pP.T`` keeps T only."""
    if text.startswith("p"):
        _, _, text = text.partition(".")
        if not text:
            return -1
    if text == "-1":
        return -1
    return int(text, 16)


def parse_stop_reply(payload: str) -> StopReply:
    """Parse a stop-reply payload; raises ValueError if it is not one."""
    if not payload:
        raise ValueError("empty stop reply")
    kind = payload[0]
    if kind in "ST":
        signal = int(payload[1:3], 16)
        reply = StopReply(kind, signal=signal, raw=payload)
        if kind == "T":
            _parse_pairs(payload[3:], reply)
        return reply
    if kind in "WX":
        code, _, rest = payload[1:].partition(";")
        value = int(code, 16)
        reply = StopReply(kind, raw=payload)
        if kind == "W":
            reply.exit_status = value
        else:
            reply.signal = value
        if rest:
            _parse_pairs(rest, reply)
        return reply
    if kind == "O" and payload != "OK":
        return StopReply("O", output=bytes.fromhex(payload[1:]), raw=payload)
    if kind == "N":
        return StopReply("N", raw=payload)  # no resumed threads left
    raise ValueError(f"not a stop reply: {payload[:40]!r}")


def _parse_pairs(text: str, reply: StopReply) -> None:
    """Fill `reply` from ``key:value;`` pairs of a T (or W/X) reply."""
    for item in text.split(";"):
        if not item:
            continue
        key, _, value = item.partition(":")
        if key == "thread":
            reply.thread = parse_thread_id(value)
        elif key in WATCH_KINDS:
            reply.watch = key
            reply.watch_addr = int(value, 16)
        elif key in ("swbreak", "hwbreak"):
            reply.breakpoint = key
        elif key == "core":
            reply.core = int(value, 16)
        elif key and all(c in "0123456789abcdefABCDEF" for c in key):
            reply.registers[int(key, 16)] = value
        else:
            reply.extra[key] = value
