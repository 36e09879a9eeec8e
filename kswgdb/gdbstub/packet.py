"""Bytes <-> remote-protocol packets: pure functions and an incremental parser.

Nothing here touches a socket. The wire format (gdb manual, "Remote Protocol",
section "Overview") is::

    $payload#cs     a packet; cs = sum of the payload bytes mod 256, two hex digits
    %payload#cs     a notification (non-stop mode); never acknowledged
    + / -           acknowledgement / request to retransmit
    0x03            interrupt (client -> server only)

Inside a payload, ``}`` escapes the next byte (XOR 0x20) in binary data and
``c*n`` repeats ``c`` ``ord(n) - 29`` more times (run-length encoding, replies only).
The parser keeps escapes as they are (only binary replies such as ``qXfer`` are
unescaped, by the caller, with `unescape_binary`) but expands run-length encoding,
because that applies to every reply.

`PacketParser` is fed arbitrary chunks: one ``recv`` may hold half a packet or
three packets and an ack; a parser that assumed one read is one packet (avocado's
GDBRemote did) breaks as soon as replies are pipelined.
"""

from __future__ import annotations

import re
from typing import NamedTuple

ACK = "+"
NAK = "-"
PACKET = "$"
NOTIFY = "%"
INTERRUPT = "\x03"
BAD = "!"  # a packet whose checksum did not match: answer it with NAK

_ESCAPED = re.compile(rb"[#$}*]")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class Event(NamedTuple):
    """One thing found on the wire; `payload` is empty except for packets."""

    kind: str  # one of ACK, NAK, PACKET, NOTIFY, INTERRUPT, BAD
    payload: bytes = b""


def checksum(payload: bytes) -> int:
    """The packet checksum: the modulo-256 sum of the payload bytes."""
    return sum(payload) & 0xFF


def frame(payload: bytes | str) -> bytes:
    """Wrap an (already escaped) payload as ``$payload#cs``."""
    if isinstance(payload, str):
        payload = payload.encode("latin-1")
    return b"$%s#%02x" % (payload, sum(payload) & 0xFF)


def frame_notification(payload: bytes | str) -> bytes:
    """Wrap a payload as a ``%payload#cs`` notification."""
    if isinstance(payload, str):
        payload = payload.encode("latin-1")
    return b"%%%s#%02x" % (payload, sum(payload) & 0xFF)


def escape_binary(data: bytes) -> bytes:
    """Escape ``# $ } *`` as ``}`` followed by the byte XOR 0x20 (binary packets)."""
    return _ESCAPED.sub(lambda m: bytes((0x7D, m[0][0] ^ 0x20)), data)


def unescape_binary(data: bytes) -> bytes:
    """Undo `escape_binary`: ``}x`` becomes ``x ^ 0x20``."""
    i = data.find(b"}")
    if i < 0:
        return data
    out = bytearray()
    start = 0
    while i >= 0 and i + 1 < len(data):
        out += data[start:i]
        out.append(data[i + 1] ^ 0x20)
        start = i + 2
        i = data.find(b"}", start)
    out += data[start:]
    return bytes(out)


def rle_encode(data: bytes) -> bytes:
    """Run-length encode a reply payload (used by the server side and by tests).

    Runs are only encoded when it saves bytes and never produce a count byte that
    would be ``#``, ``$``, ``+``, ``-`` or above ``~`` (the manual forbids them as
    count characters). Bytes following a ``}`` escape are kept literal.
    """
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x7D and i + 1 < n:  # escape pair is atomic
            out += data[i : i + 2]
            i += 2
            continue
        run = 1
        while i + run < n and data[i + run] == c and run < 98:
            run += 1
        repeat = run - 1
        # the repeat count is ord(n) - 29; n in 32..126 minus forbidden chars
        while repeat >= 3 and chr(repeat + 29) in "#$+-":
            repeat -= 1
        if repeat >= 3:
            out.append(c)
            out.append(0x2A)
            out.append(repeat + 29)
            i += repeat + 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


def rle_decode(data: bytes) -> bytes:
    """Expand ``c*n`` into ``c`` followed by ``ord(n) - 29`` more copies of ``c``."""
    if b"*" not in data:
        return data
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x7D and i + 1 < n:  # escaped byte: '}*' is data, not a run
            out += data[i : i + 2]
            i += 2
        elif c == 0x2A and out and i + 1 < n:
            out += bytes((out[-1],)) * (data[i + 1] - 29)
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def hex_encode(data: bytes) -> str:
    """Bytes as lower-case hex, as ``m``/``M`` and register packets carry them."""
    return data.hex()


def hex_decode(text: str | bytes) -> bytes:
    """Hex (either case) to bytes; raises ValueError on anything else."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return bytes.fromhex(text)


def le_hex_to_int(text: str | bytes) -> int:
    """A target-order (little-endian on x86) hex register value to an int."""
    return int.from_bytes(hex_decode(text), "little")


def int_to_le_hex(value: int, size: int) -> str:
    """An int as `size` little-endian bytes in hex (register write format)."""
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex()


class PacketParser:
    """Turn a byte stream into `Event`s, whatever the chunk boundaries.

    `rle` selects whether run-length encoding is expanded: a client parsing stub
    replies wants it; a server parsing gdb's requests passes ``rle=False`` because
    requests never use it, so a ``*`` in them is data.
    """

    __slots__ = ("_buf", "_rle")

    def __init__(self, *, rle: bool = True) -> None:
        self._buf = bytearray()
        self._rle = rle

    @property
    def pending(self) -> int:
        """Bytes held back because they are an incomplete packet."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Event]:
        """Add `chunk` and return every complete event it finishes, in order."""
        buf = self._buf
        buf += chunk
        events: list[Event] = []
        pos = 0
        end = len(buf)
        while pos < end:
            c = buf[pos]
            if c == 0x24 or c == 0x25:  # '$' or '%'
                hash_at = buf.find(b"#", pos + 1)
                if hash_at < 0 or hash_at + 3 > end:
                    break  # incomplete: wait for more bytes
                payload = bytes(buf[pos + 1 : hash_at])
                cs = buf[hash_at + 1 : hash_at + 3]
                pos = hash_at + 3
                if not (cs[0] in _HEXDIGITS and cs[1] in _HEXDIGITS) or int(cs, 16) != (
                    sum(payload) & 0xFF
                ):
                    events.append(Event(BAD, payload))
                    continue
                if self._rle and 0x2A in payload:
                    payload = rle_decode(payload)
                events.append(Event(PACKET if c == 0x24 else NOTIFY, payload))
            elif c == 0x2B:
                events.append(Event(ACK))
                pos += 1
            elif c == 0x2D:
                events.append(Event(NAK))
                pos += 1
            elif c == 0x03:
                events.append(Event(INTERRUPT))
                pos += 1
            else:  # line noise between packets: skip to the next meaningful byte
                pos += 1
        del buf[:pos]
        return events
