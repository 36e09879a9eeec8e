"""Acks, retransmission, reassembly and failure modes of the transport.

The peer is the raw other end of a socket pair, so every byte is visible.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kswgdb.errors import BadInput
from kswgdb.gdbstub.errors import StubClosed, StubError, StubTimeout
from kswgdb.gdbstub.packet import frame
from kswgdb.gdbstub.transport import Transport, parse_address


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def test_lazy_ack_rides_on_next_packet(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a, ack_mode="lazy")
    t.send_packet(b"m0,8")
    assert recv_exactly(peer, len(b"$m0,8#01")) == b"$m0,8#01"
    peer.sendall(b"+$0000000000000000#00")
    assert t.recv_packet(5) == b"0" * 16
    t.send_packet(b"g")
    assert recv_exactly(peer, len(b"+$g#67")) == b"+$g#67"  # the owed ack leads the next packet


def test_eager_ack_is_sent_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a, ack_mode="eager")
    peer.sendall(b"$OK#9a")
    assert t.recv_packet(5) == b"OK"
    assert recv_exactly(peer, len(b"+")) == b"+"


def test_flush_ack_and_close_send_the_owed_ack(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a)
    peer.sendall(b"$OK#9a")
    t.recv_packet(5)
    t.close()
    assert peer.recv(10) == b"+"
    assert t.closed


def test_nak_retransmits_then_gives_up(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a, retries=2)
    t.send_packet(b"g")
    assert recv_exactly(peer, len(b"$g#67")) == b"$g#67"
    peer.sendall(b"-")
    peer.sendall(b"+$OK#9a")
    assert t.recv_packet(5) == b"OK"
    assert recv_exactly(peer, len(b"$g#67")) == b"$g#67"  # resent once
    t.send_packet(b"g")
    recv_exactly(peer, len(b"+$g#67"))
    peer.sendall(b"---")
    with pytest.raises(StubError, match="cannot be resent"):
        t.recv_packet(5)


def test_nak_with_several_in_flight_is_an_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a)
    t.send_packets([b"g", b"m0,1"])
    peer.sendall(b"-")
    with pytest.raises(StubError) as info:
        t.recv_packet(5)
    assert info.value.sent == "$g#67"


def test_bad_checksum_is_answered_with_nak(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a, ack_mode="eager")
    peer.sendall(b"$OK#00$OK#9a")
    assert t.recv_packet(5) == b"OK"
    assert recv_exactly(peer, len(b"-+")) == b"-+"


def test_reassembles_split_and_merged_replies(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a)
    wire = b"+" + frame(b"one") + b"+" + frame(b"two")
    peer.sendall(wire[:3])
    peer.sendall(wire[3:11])
    peer.sendall(wire[11:])
    assert [t.recv_packet(5), t.recv_packet(5)] == [b"one", b"two"]


def test_notifications_are_queued_not_returned(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a)
    peer.sendall(b"%Stop:T05#" + b"%02x" % (sum(b"Stop:T05") & 0xFF) + frame(b"OK"))
    assert t.recv_packet(5) == b"OK"
    assert list(t.notifications) == [b"Stop:T05"]


def test_server_side_counts_interrupts_and_keeps_stars(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, peer = pair
    t = Transport(a, server=True)
    peer.sendall(b"\x03" + frame(b"X0,2:a*"))
    assert t.recv_event(5).kind == "\x03"
    assert t.recv_event(5).payload == b"X0,2:a*"
    assert t.interrupts == 1
    assert recv_exactly(peer, len(b"+")) == b"+"  # a server always acks at once


def test_closed_and_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    a, peer = pair
    t = Transport(a)
    with pytest.raises(StubTimeout):
        t.recv_packet(0.01)
    assert t.poll() is False
    peer.close()
    with pytest.raises(StubClosed):
        t.recv_packet(5)
    with pytest.raises(StubClosed):
        t.send_packet(b"g")


def test_parse_address() -> None:
    assert parse_address("/tmp/x/gdb.sock") == (socket.AF_UNIX, "/tmp/x/gdb.sock")
    assert parse_address("unix:/tmp/g.sock,server=on") == (socket.AF_UNIX, "/tmp/g.sock")
    assert parse_address("127.0.0.1:1234") == (socket.AF_INET, ("127.0.0.1", 1234))
    assert parse_address("tcp:localhost:1234") == (socket.AF_INET, ("127.0.0.1", 1234))
    for bad in ("10.0.0.1:1234", "example.com:1", "localhost:0", "localhost:99999"):
        with pytest.raises(BadInput):
            parse_address(bad)


def test_connect_to_missing_socket_fails_fast(tmp_path: object) -> None:
    with pytest.raises(StubClosed):
        Transport.connect(f"{tmp_path}/absent.sock", timeout=0)
