"""The read-only relay: a second client (standing in for gdb) -> Relay -> fake QEMU."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import ErrorReply
from kswgdb.gdbstub.fake import FakeStub, ScriptedStop
from kswgdb.gdbstub.relay import Backtracer, Frame, Relay, _frame
from kswgdb.gdbstub.server import Listener
from kswgdb.gdbstub.stopreply import parse_stop_reply
from kswgdb.gdbstub.transport import Transport

from .gdbstub_support import connected, xml_files

HIT = "T05thread:p01.02;watch:ffffc90000003ff8;"


def make_fake() -> FakeStub:
    return FakeStub(
        xml_files(),
        threads=(1, 2),
        memory={0x4000: bytes(range(64))},
        registers={1: {"rip": 0x1111, "rsp": 0x4010}, 2: {"rip": 0x2222, "rsp": 0x4020}},
        stops=[ScriptedStop(HIT)],
    )


@contextmanager
def through_relay(fake: FakeStub) -> Iterator[tuple[RemoteClient, RemoteClient, Relay]]:
    """(kswgdb's client to the fake, a gdb-like client to the relay, the relay)."""
    with connected(fake) as ours:
        ours.insert_watchpoint(0xFFFFC90000003FF8, 8)
        ours.cont()
        stop = ours.wait_stop()
        relay = Relay(ours, stop, None)
        a, b = socket.socketpair()
        serving = relay.serve_in_thread(Transport(b, server=True))
        theirs = RemoteClient(Transport(a, ack_mode="eager"), timeout=5)
        try:
            yield ours, theirs, relay
        finally:
            theirs.close()
            serving.join(5)


def test_reads_are_forwarded_for_the_hit_thread() -> None:
    fake = make_fake()
    with through_relay(fake) as (ours, gdb, relay):
        gdb.handshake()
        assert gdb.features == {"PacketSize": "1000", "qXfer:features:read": "+"}
        assert gdb.vcont_actions == frozenset()  # no vCont: nothing to resume with
        assert gdb.request("?") == "T05thread:02;"
        assert gdb.current_thread() == 2
        assert gdb.read_registers(names=["rip"]) == {"rip": 0x2222}
        gdb.set_thread("g", 0)  # "any thread" means the thread of the hit
        assert gdb.read_register("rip") == 0x2222
        assert gdb.read_registers(thread=1, names=["rip"]) == {"rip": 0x1111}
        assert gdb.read_memory(0x4008, 4) == bytes([8, 9, 10, 11])
        assert gdb.threads() == [1, 2]
        assert gdb.request("qfThreadInfo") == "m01"  # rewritten from QEMU's "mp01.01"
        assert gdb.request("T2") == "OK"
        assert ours.g_thread == 1  # the client's Hg cache followed the relay
    assert "?" not in fake.received
    assert (2, 0xFFFFC90000003FF8, 8) in fake.breakpoints  # our watchpoint survived


@pytest.mark.parametrize(
    "payload",
    [
        "c",
        "s",
        "vCont;c",
        "C05",
        "M4000,1:00",
        "X4000,1:a",
        "G00",
        "P10=00",
        "Z0,1000,1",
        "z2,1000,8",
        "qRcmd,7175697400",
        "R00",
    ],
)
def test_anything_that_resumes_or_modifies_is_refused(payload: str) -> None:
    fake = make_fake()
    with through_relay(fake) as (_, gdb, relay):
        before = len(fake.received)
        assert gdb.request(payload) == "E01"
        assert len(fake.received) == before and relay.forwarded == 0


def test_unknown_and_local_queries() -> None:
    fake = make_fake()
    with through_relay(fake) as (_, gdb, relay):
        assert gdb.request("qTStatus") == ""
        assert gdb.request("QStartNoAckMode") == ""
        assert gdb.request("QNonStop:1") == ""
        assert gdb.request("qAttached") == "1"
        assert gdb.request("qSymbol::") == "OK"
        assert gdb.request("vMustReplyEmpty") == ""
        assert relay.forwarded == 0
        with pytest.raises(ErrorReply):
            gdb.read_memory(0xDEAD, 4)


def test_detach_ends_only_the_relay_session() -> None:
    fake = make_fake()
    with through_relay(fake) as (ours, gdb, relay):
        assert gdb.request("D") == "OK"
        assert relay.done
        assert ours.read_memory(0x4000, 2) == b"\x00\x01"  # our connection is intact
    assert "D" not in fake.received


def test_relay_refuses_a_running_guest() -> None:
    fake = make_fake()
    with connected(fake) as ours:
        ours.pipeline(["c"])
        with pytest.raises(Exception, match="stopped"):
            Relay(ours, None, 1)
        ours.wait_stop()


def test_frame_from_mi_record() -> None:
    rec = {
        "frame": {
            "level": "1",
            "addr": "0xffffffff81000123",
            "func": "victim",
            "file": "a.c",
            "fullname": "/src/a.c",
            "line": "42",
        }
    }
    assert _frame(rec) == Frame(1, 0xFFFFFFFF81000123, "victim", "/src/a.c", 42)
    assert _frame({"level": "0", "addr": "0x10", "func": "??"}) == Frame(0, 0x10, None, None, None)


def test_real_gdb_unwinds_through_the_relay(tmp_path: object) -> None:
    """gdb 13 connects to the relay's Unix socket and sees the hit thread's PC."""
    fake = make_fake()
    with connected(fake) as ours:
        ours.cont()
        stop = ours.wait_stop()
        with Backtracer(None, directory=f"{tmp_path}/relay") as tracer:
            frames = tracer.backtrace(ours, None, stop)
            assert frames[0].pc == 0x2222 and frames[0].function is None
            again = tracer.backtrace(ours, 1, parse_stop_reply("T05thread:01;"))
            assert again[0].pc == 0x1111  # the same gdb, reused for another hit
        assert ours.read_memory(0x4000, 1) == b"\x00"
    assert "?" not in fake.received


@pytest.mark.parametrize("unix", [True, False])
def test_lend_the_guest_to_another_gdb_over_a_listener(unix: bool, tmp_path: object) -> None:
    """The hand-over path: a Listener (private Unix socket, or 127.0.0.1:port)."""
    fake = make_fake()
    with connected(fake) as ours:
        ours.cont()
        stop = ours.wait_stop()
        listener = Listener(f"{tmp_path}/lend" if unix else None)
        try:
            if unix:
                assert stat.S_IMODE(os.stat(f"{tmp_path}/lend").st_mode) == 0o700
            else:
                assert listener.address.startswith("127.0.0.1:")
            relay = Relay(ours, stop, None)
            serving = threading.Thread(target=relay.accept_and_serve, args=(listener, 5))
            serving.start()
            user = RemoteClient.connect(listener.address, 5, ack_mode="eager")
            user.handshake()
            assert user.read_registers(names=["rip"]) == {"rip": 0x2222}
            assert user.request("D") == "OK"
            user.close()
            serving.join(5)
            assert not serving.is_alive()
        finally:
            listener.close()
