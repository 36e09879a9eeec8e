"""Framing, escaping, run-length encoding and the incremental parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kswgdb.gdbstub import packet as pk
from kswgdb.gdbstub.packet import ACK, BAD, INTERRUPT, NAK, NOTIFY, PACKET, Event, PacketParser


@pytest.mark.parametrize(
    ("payload", "framed"),
    [
        (b"foo", b"$foo#44"),  # the classic vector (avocado's tests use it too)
        (b"", b"$#00"),
        (b"OK", b"$OK#9a"),
        (b"g", b"$g#67"),
        (b"c", b"$c#63"),
        (b"?", b"$?#3f"),
        (b"m0,8", b"$m0,8#01"),
        # replies recorded from QEMU 7.2
        (b"vCont;c;C;s;S", b"$vCont;c;C;s;S#62"),
        (b"QCp01.01", b"$QCp01.01#f4"),
        (b"mp01.02", b"$mp01.02#ce"),
        ("vCont?", b"$vCont?#49"),
    ],
)
def test_frame_known_vectors(payload: bytes | str, framed: bytes) -> None:
    assert pk.frame(payload) == framed


def test_checksum_wraps_modulo_256() -> None:
    assert pk.checksum(b"\xff\x02") == 0x01
    assert pk.checksum(b"") == 0


def test_notification_frame() -> None:
    assert pk.frame_notification(b"Stop:T05") == b"%Stop:T05#" + b"%02x" % pk.checksum(b"Stop:T05")


def test_escape_binary_vectors() -> None:
    assert pk.escape_binary(b"a#b$c}d*e") == b"a}\x03b}\x04c}]d}\x0ae"
    assert pk.escape_binary(b"plain") == b"plain"
    assert pk.unescape_binary(b"a}\x03b}\x04c}]d}\x0ae") == b"a#b$c}d*e"


def test_rle_decode_manual_example() -> None:
    # gdb manual: "0* " means 0 repeated 32 - 29 = 3 more times
    assert pk.rle_decode(b"0* ") == b"0000"
    assert pk.rle_decode(b'ab*"c') == b"abbbbbbc"  # '"' = 34: 5 more
    assert pk.rle_decode(b"none") == b"none"


def test_rle_decode_keeps_escaped_star_literal() -> None:
    assert pk.rle_decode(b"x}*y") == b"x}*y"


def test_rle_encode_roundtrip_and_shrinks() -> None:
    data = b"0" * 200 + b"12" + b"f" * 7
    enc = pk.rle_encode(data)
    assert len(enc) < len(data)
    assert pk.rle_decode(enc) == data
    # count characters that are forbidden (#, $, +, -) are never produced
    for n in range(1, 120):
        enc = pk.rle_encode(b"a" * n)
        assert pk.rle_decode(enc) == b"a" * n
        counts = [enc[i + 1] for i in range(len(enc) - 1) if enc[i] == 0x2A]
        assert not any(chr(c) in "#$+-" or c > 126 for c in counts)


def test_hex_helpers() -> None:
    assert pk.hex_encode(b"\x01\xab") == "01ab"
    assert pk.hex_decode("01AB") == b"\x01\xab"
    assert pk.hex_decode(b"01ab") == b"\x01\xab"
    assert pk.le_hex_to_int("f0ff000000000000") == 0xFFF0
    assert pk.int_to_le_hex(0xFFF0, 8) == "f0ff000000000000"
    assert pk.int_to_le_hex(-1, 2) == "ffff"
    with pytest.raises(ValueError):
        pk.hex_decode("zz")


def test_parser_acks_packets_interrupts_notifications() -> None:
    p = PacketParser()
    stream = b"+$OK#9a-\x03" + pk.frame_notification(b"Stop:T05") + b"$foo#44"
    assert p.feed(stream) == [
        Event(ACK),
        Event(PACKET, b"OK"),
        Event(NAK),
        Event(INTERRUPT),
        Event(NOTIFY, b"Stop:T05"),
        Event(PACKET, b"foo"),
    ]
    assert p.pending == 0


def test_parser_reassembles_byte_by_byte() -> None:
    p = PacketParser()
    stream = b"+$foo#44+$m0,8#01"
    events = []
    for i in range(len(stream)):
        events += p.feed(stream[i : i + 1])
    assert events == [Event(ACK), Event(PACKET, b"foo"), Event(ACK), Event(PACKET, b"m0,8")]


def test_parser_waits_for_both_checksum_digits() -> None:
    p = PacketParser()
    assert p.feed(b"$foo#4") == []
    assert p.pending == 6
    assert p.feed(b"4") == [Event(PACKET, b"foo")]


def test_parser_reports_bad_checksum_and_continues() -> None:
    p = PacketParser()
    assert p.feed(b"$foo#45$foo#44") == [Event(BAD, b"foo"), Event(PACKET, b"foo")]
    assert p.feed(b"$foo#zz") == [Event(BAD, b"foo")]


def test_parser_skips_line_noise() -> None:
    assert PacketParser().feed(b"garbage\n$OK#9a") == [Event(PACKET, b"OK")]


def test_parser_expands_rle_after_checksum_check() -> None:
    raw = b"0* 1"
    assert PacketParser().feed(pk.frame(raw)) == [Event(PACKET, b"00001")]
    assert PacketParser(rle=False).feed(pk.frame(raw)) == [Event(PACKET, raw)]


def test_parser_keeps_escapes_for_binary_replies() -> None:
    body = b"l" + pk.escape_binary(b"<a>#$}*</a>")
    (ev,) = PacketParser().feed(pk.frame(body))
    assert pk.unescape_binary(ev.payload[1:]) == b"<a>#$}*</a>"


binary = st.binary(max_size=300)


@given(binary)
def test_escape_roundtrip(data: bytes) -> None:
    esc = pk.escape_binary(data)
    assert not any(c in esc for c in b"#$*") and pk.unescape_binary(esc) == data


@given(st.lists(binary, max_size=6), st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_frame_parse_roundtrip_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    """Escaped binary payloads survive framing, arbitrary chunking, and RLE."""
    wire = b"".join(b"+" + pk.frame(pk.rle_encode(pk.escape_binary(d))) for d in payloads)
    parser = PacketParser()
    events: list[Event] = []
    pos = 0
    i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        events += parser.feed(wire[pos : pos + step])
        pos += step
        i += 1
    got = [pk.unescape_binary(e.payload) for e in events if e.kind == PACKET]
    assert got == payloads
    assert sum(e.kind == ACK for e in events) == len(payloads)
    assert parser.pending == 0
