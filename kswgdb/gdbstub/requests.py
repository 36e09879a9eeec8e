"""Request payloads and reply checks as pure functions.

They exist apart from `RemoteClient` so a caller can build a batch for
`RemoteClient.pipeline` (for instance read a stack slot, insert a watchpoint and
continue, in one write) and check each reply with the same code the one-packet
methods use. Payloads are ``str`` (ASCII); replies come back as ``str``.
"""

from __future__ import annotations

from kswgdb.gdbstub.errors import ErrorReply, StubError, Unsupported

BREAK_TYPES = {"sw": 0, "hw": 1}
WATCH_TYPES = {"write": 2, "read": 3, "access": 4}
X86_BREAK_KIND = 1  # the "kind" of an x86 breakpoint is the int3 length: 1 byte

# Packets the stub does not answer until the target stops again.
RESUME_PREFIXES = ("c", "C", "s", "S", "vCont;", "k")


def thread_id(tid: int) -> str:
    """A thread id as the protocol writes it: hex, ``-1`` for all, ``0`` for any."""
    return "-1" if tid == -1 else f"{tid:x}"


def is_resume(payload: str) -> bool:
    """True for packets whose only answer is a later stop reply (or nothing)."""
    return payload.startswith(RESUME_PREFIXES) and payload != "vCont?"


def read_memory(addr: int, length: int) -> str:
    """``m addr,length``: the reply is hex bytes or ``Exx`` (QEMU: E14 unmapped)."""
    return f"m{addr:x},{length:x}"


def write_memory(addr: int, data: bytes) -> str:
    """``M addr,length:hex``."""
    return f"M{addr:x},{len(data):x}:{data.hex()}"


def read_register(regnum: int) -> str:
    """``p n``: one register (QEMU: empty until target.xml was read)."""
    return f"p{regnum:x}"


def write_register(regnum: int, value_hex: str) -> str:
    """``P n=value`` with the value in target byte order hex."""
    return f"P{regnum:x}={value_hex}"


def set_thread(op: str, tid: int) -> str:
    """``Hg tid`` (thread for g/p/m) or ``Hc tid`` (thread for c/s)."""
    if op not in ("g", "c"):
        raise ValueError(f"set_thread op must be 'g' or 'c', not {op!r}")
    return f"H{op}{thread_id(tid)}"


def insert_breakpoint(addr: int, kind: str = "sw") -> str:
    """``Z0`` (int3) or ``Z1`` (debug register) at `addr`."""
    return f"Z{BREAK_TYPES[kind]},{addr:x},{X86_BREAK_KIND}"


def remove_breakpoint(addr: int, kind: str = "sw") -> str:
    """``z0``/``z1``: the exact inverse of `insert_breakpoint`."""
    return f"z{BREAK_TYPES[kind]},{addr:x},{X86_BREAK_KIND}"


def insert_watchpoint(addr: int, length: int, access: str = "write") -> str:
    """``Z2`` write, ``Z3`` read, ``Z4`` access watchpoint over `length` bytes."""
    return f"Z{WATCH_TYPES[access]},{addr:x},{length:x}"


def remove_watchpoint(addr: int, length: int, access: str = "write") -> str:
    """``z2``/``z3``/``z4``: the exact inverse of `insert_watchpoint`."""
    return f"z{WATCH_TYPES[access]},{addr:x},{length:x}"


def step(tid: int | None, vcont: bool) -> str:
    """Single-step one thread: ``vCont;s:tid`` when offered, else plain ``s``."""
    if vcont and tid is not None:
        return f"vCont;s:{thread_id(tid)}"
    return "s"


def raise_for_error(reply: str, sent: str) -> None:
    """Raise `ErrorReply` for ``Exx``/``E.text``, `Unsupported` for the empty reply."""
    if not reply:
        raise Unsupported(f"stub does not support {sent[:24]!r}", sent=sent, received=reply)
    if reply[0] == "E" and (len(reply) == 3 or reply[1:2] == "."):
        try:
            code = int(reply[1:3], 16)
        except ValueError:
            code = -1
        raise ErrorReply(code, sent=sent, received=reply)


def check_ok(reply: str, sent: str) -> None:
    """Accept only ``OK``; anything else raises (an error, unsupported, or garbage)."""
    if reply == "OK":
        return
    raise_for_error(reply, sent)
    raise StubError("unexpected reply", sent=sent, received=reply)


def decode_memory(reply: str, sent: str, length: int) -> bytes:
    """The bytes of an ``m`` reply; a short reply (partial read) raises ErrorReply."""
    if len(reply) == 2 * length:  # an error is "Exx": odd length, never matches
        try:
            return bytes.fromhex(reply)
        except ValueError:
            pass
    raise_for_error(reply, sent)
    if len(reply) < 2 * length:
        raise ErrorReply(-1, sent=sent, received=reply)  # partial: the rest is unmapped
    raise StubError("malformed memory reply", sent=sent, received=reply)
