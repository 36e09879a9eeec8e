"""RemoteClient against the fake QEMU stub (a thread speaking the protocol)."""

from __future__ import annotations

import socket
import threading

import pytest

from kswgdb.gdbstub import requests as rq
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import ErrorReply, StubClosed, StubError, Unsupported
from kswgdb.gdbstub.fake import FakeStub, ScriptedStop
from kswgdb.gdbstub.transport import Transport

from .gdbstub_support import connected, xml_files

STACK = 0xFFFFC90000004000 - 0x100


def make_fake(**kwargs: object) -> FakeStub:
    kwargs.setdefault("threads", (1, 2))
    kwargs.setdefault("memory", {STACK: bytes(range(256)), 0x1000: bytes(8192)})
    kwargs.setdefault(
        "registers",
        {1: {"rip": 0xFFFFFFFF81000000, "rsp": STACK + 0x80}, 2: {"rip": 0x2222, "rsp": 0x20}},
    )
    return FakeStub(xml_files(), **kwargs)  # type: ignore[arg-type]


def sent_packets(client: RemoteClient) -> list[str]:
    assert client.transport.trace is not None
    return [p.decode() for d, p in client.transport.trace if d == "sent"]


def test_handshake_reads_features_vcont_and_layout() -> None:
    fake = make_fake()
    with connected(fake) as c:
        assert c.features["PacketSize"] == "1000" and c.packet_size == 0x1000
        assert c.vcont_actions == {"c", "C", "s", "S"}
        assert c.layout is not None and c.layout["rip"].regnum == 16
        assert c.read_register("rip") == 0xFFFFFFFF81000000  # p works after target.xml
        assert "?" not in fake.received  # '?' would remove QEMU's breakpoints


def test_p_is_empty_before_target_xml_and_layout_is_required() -> None:
    fake = make_fake()
    with connected(fake, handshake=False) as c:
        assert c.request("p10") == ""
        with pytest.raises(Unsupported):
            c.read_register("rip")


def test_registers_per_thread_select_hg_once() -> None:
    fake = make_fake()
    with connected(fake) as c:
        assert c.read_registers(thread=2, names=["rip"]) == {"rip": 0x2222}
        assert c.read_registers(thread=2)["rsp"] == 0x20
        assert c.read_registers(thread=1, names=["rip", "rsp"]) == {
            "rip": 0xFFFFFFFF81000000,
            "rsp": STACK + 0x80,
        }
        assert fake.received.count("Hg2") == 1
        c.write_register("rbp", 0x1234)
        assert fake.regs[1]["rbp"] == 0x1234


def test_memory_reads_small_large_and_unmapped() -> None:
    fake = make_fake()
    fake.memory.append((0x10000, bytearray(bytes(range(256)) * 20)))
    with connected(fake) as c:
        assert c.read_memory(STACK + 0x10, 4) == bytes([0x10, 0x11, 0x12, 0x13])
        big = c.read_memory(0x10000, 5000)  # 3 pipelined m packets
        assert big == (bytes(range(256)) * 20)[:5000]
        assert [p for p in fake.received if p.startswith("m1")] == [
            "m10000,800",
            "m10800,800",
            "m11000,388",
        ]
        with pytest.raises(ErrorReply) as info:
            c.read_memory(0xDEAD0000, 8)
        assert info.value.code == 0x14 and info.value.sent == "mdead0000,8"
        c.write_memory(0x1000, b"\xaa" * 3000)
        assert c.read_memory(0x1000 + 2999, 2) == b"\xaa\x00"


def test_breakpoints_watchpoints_and_their_errors() -> None:
    fake = make_fake(forced={"Z1,4000,1": ""})
    with connected(fake) as c:
        c.insert_breakpoint(0xFFFFFFFF81000010)
        c.insert_watchpoint(STACK + 8, 8)
        c.insert_watchpoint(STACK, 4, access="access")
        assert fake.breakpoints == {
            (0, 0xFFFFFFFF81000010, 1),
            (2, STACK + 8, 8),
            (4, STACK, 4),
        }
        c.remove_watchpoint(STACK + 8, 8)
        c.remove_breakpoint(0xFFFFFFFF81000010)
        with pytest.raises(ErrorReply) as info:  # the fake refuses Z3 like QEMU/KVM
            c.insert_watchpoint(STACK, 8, access="read")
        assert info.value.code == 0x22 and info.value.received == "E22"
        with pytest.raises(ErrorReply):
            c.remove_breakpoint(0x1234)  # never inserted
        with pytest.raises(Unsupported):
            c.insert_breakpoint(0x4000, kind="hw")


def test_continue_and_watchpoint_stop_updates_current_thread() -> None:
    stop = ScriptedStop(
        f"T05thread:02;watch:{STACK + 8:x};", registers={"rip": 0x2233}, console=b"hi\n"
    )
    fake = make_fake(stops=[stop])
    with connected(fake) as c:
        c.insert_watchpoint(STACK + 8, 8)
        c.cont()
        assert c.running
        with pytest.raises(StubError, match="running"):
            c.read_memory(STACK, 8)  # would stop the guest: refused without sending
        s = c.wait_stop()
        assert (s.thread, s.watch, s.watch_addr) == (2, "watch", STACK + 8)
        assert not c.running and c.console == b"hi\n" and c.last_stop is s
        assert c.g_thread == 2  # QEMU makes the stopped CPU the Hg thread
        assert c.read_registers(names=["rip"]) == {"rip": 0x2233}
        assert "Hg2" not in fake.received


def test_step_uses_vcont_for_one_thread() -> None:
    fake = make_fake(stops=[ScriptedStop("T05thread:02;"), ScriptedStop("T05thread:01;")])
    with connected(fake) as c:
        c.step(2)
        assert c.wait_stop().thread == 2
        c.vcont_actions = frozenset()  # a stub without vCont: Hc then s
        c.step(1)
        assert c.wait_stop().thread == 1
    assert "vCont;s:2" in fake.received and fake.received[-2:] == ["Hc1", "s"]
    assert fake.steps == [2, 1]


def test_interrupt_stops_a_running_target() -> None:
    fake = make_fake()  # no scripted stops: the "guest" spins until interrupted
    with connected(fake) as c:
        c.cont()
        s = c.halt()
        assert s.signal == 2 and not c.running


@pytest.mark.parametrize("ack_mode", ["lazy", "eager"])
def test_pipeline_returns_replies_in_order(ack_mode: str) -> None:
    fake = make_fake(stops=[ScriptedStop("T05thread:01;")])
    with connected(fake, ack_mode=ack_mode) as c:
        batch = [
            rq.read_memory(STACK, 2),
            rq.insert_watchpoint(STACK + 8, 8),
            "qC",
            rq.read_memory(0xDEAD, 1),
            rq.read_memory(STACK + 2, 2),
            "c",
        ]
        replies = c.pipeline(batch)
        assert replies == ["0001", "OK", "QC01", "E14", "0203"]
        assert c.running
        assert c.wait_stop().thread == 1
        with pytest.raises(ValueError):
            c.pipeline(["c", "g"])
    assert fake.received[-6:] == batch


def test_pipeline_bytes_go_out_in_one_write() -> None:
    fake = make_fake()
    with connected(fake) as c:
        c.pipeline(["m0,1", "m1,1", "m2,1"])
        sent = sent_packets(c)
    assert sent[-3:] == ["m0,1", "m1,1", "m2,1"]


def test_threads_current_thread_and_phys_memory() -> None:
    fake = make_fake(threads=(1, 2, 3))
    fake.phys_memory.append((0x100000, bytearray(b"PHYS" * 1024)))
    with connected(fake) as c:
        assert c.threads() == [1, 2, 3]
        assert c.current_thread() == 1
        assert c.phys_read(0x100000, 4) == b"PHYS"
        assert c.phys_read(0x100000, 4096) == b"PHYS" * 1024
        c.phys_write(0x100004, b"phys")
        assert fake.phys_memory[0][1][4:8] == b"phys" and not fake.phys_mode
        assert c.sstep_flags() == 7
        c.set_sstep_flags(0x1)
        assert fake.sstep == 1


def test_detach_ends_the_session() -> None:
    fake = make_fake()
    with connected(fake) as c:
        c.insert_breakpoint(0x10)
        c.detach()
        assert c.transport.closed
    assert fake.done and not fake.breakpoints


def test_stub_disappearing_raises_stubclosed() -> None:
    fake = make_fake()
    sock, thread = fake.start()
    c = RemoteClient(Transport(sock), timeout=5)
    c.handshake()
    c.transport.send_packet(b"k")  # the fake closes without answering, like a dying QEMU
    with pytest.raises(StubClosed):
        c.request("g")
    thread.join(5)
    c.close()


def test_error_text_keeps_the_exchange() -> None:
    err = ErrorReply(0x22, sent="Z2,1,8", received="E22")
    assert "E22" in str(err) and "Z2,1,8" in str(err)
    long = StubError("x", sent="m" * 500, received="")
    assert len(str(long)) < 200


def test_no_byte_reaches_a_running_guest() -> None:
    """QEMU pauses a running guest on any byte: neither late acks nor close may send one."""
    ours, peer = socket.socketpair()
    peer.settimeout(5)
    c = RemoteClient(Transport(ours), timeout=5)
    peer.sendall(b"+$OK#9a")  # pretend: reply to an earlier request, ack owed
    c.transport.recv_packet(5)
    reply_and_resume = threading.Thread(target=lambda: peer.sendall(b"+$0102#c3+"))
    reply_and_resume.start()
    assert c.pipeline(["m0,2", "c"]) == ["0102"]
    reply_and_resume.join()
    assert peer.recv(100) == b"+$m0,2#fb$c#63"  # the owed ack went out before the resume
    assert c.running
    c.close()
    assert peer.recv(100) == b""  # closed without a trailing '+'
    peer.close()
