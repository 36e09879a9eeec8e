"""The remote-protocol layer against a real QEMU 7.2 (TCG), no kernel needed.

The guest sits at the reset vector (``-S``); for deterministic breakpoints and
watchpoints a few real-mode instructions are written into RAM and the vCPU is
pointed at them. The SMP test starts vCPU 2 with INIT/SIPI from such code to
show what ``vCont;s:N`` does to the other vCPUs in system mode.

Each test owns its QEMU through a minimal fixture that always kills it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kswgdb.gdbstub import requests as rq
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import ErrorReply, StubClosed
from kswgdb.gdbstub.relay import Backtracer

pytestmark = pytest.mark.integration

QEMU = shutil.which("qemu-system-x86_64")
KSWTEST = Path(__file__).resolve().parents[2] / "images" / "kswtest.elf"

# Real mode, cs=0: 0x7000 inc word [0x9000]; 0x7004 jmp 0x7000
LOOP = bytes.fromhex("ff060090ebfa")
A, B, COUNTER = 0x7000, 0x7004, 0x9000
# BSP (fs.base = APIC page): INIT then SIPI(vector 8) to all others, then count at
# 0x9000; the AP starts at 0x8000 and counts at 0x9004.
SMP_BSP = bytes.fromhex("66b800450c006466a3000366b808460c006466a30003ff060090ebfa")
SMP_AP = bytes.fromhex("ff060490ebfa")


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Callable[..., RemoteClient]]:
    """``qemu(*args, smp=1)`` starts a paused QEMU and returns a handshaken client."""
    if QEMU is None:
        pytest.fail("qemu-system-x86_64 not installed: run `make setup`")
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[RemoteClient] = []

    def start(*args: str, smp: int = 1) -> RemoteClient:
        sock = tmp_path / f"gdb{len(procs)}.sock"
        argv = [
            QEMU,
            "-accel",
            "tcg",
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-smp",
            str(smp),
            "-gdb",
            f"unix:{sock},server=on,wait=off",
            *args,
        ]
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        client = RemoteClient.connect(str(sock), timeout=10)
        clients.append(client)
        client.handshake()
        return client

    try:
        yield start
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.kill()
            p.wait()


def run_loop_at_7000(c: RemoteClient, code: bytes = LOOP) -> None:
    c.write_memory(A, code)
    c.write_memory(COUNTER, bytes(8))
    c.write_register("cs", 0)
    c.write_register("rip", A)


def counters(c: RemoteClient) -> tuple[int, int]:
    data = c.read_memory(COUNTER, 8)
    return int.from_bytes(data[:2], "little"), int.from_bytes(data[4:6], "little")


def test_reset_state_registers_memory_and_threads(qemu: Callable[..., RemoteClient]) -> None:
    c = qemu(smp=2)
    assert c.layout is not None and c.layout.g_size == 608
    regs = c.read_registers()
    assert (regs["rip"], regs["cs"]) == (0xFFF0, 0xF000)
    assert regs["cr0"] == 0x60000010
    assert c.read_register("rip") == 0xFFF0
    assert c.threads() == [1, 2]
    assert c.read_registers(thread=2, names=["rip"]) == {"rip": 0xFFF0}
    vector = c.read_memory(0xFFFFFFF0, 16)
    assert vector[0] == 0xEA  # SeaBIOS: ljmp $0xf000,$0xe05b
    assert c.phys_read(0xFFFFFFF0, 16) == vector  # paging off: virtual == physical
    assert len(c.read_memory(0xF0000, 10000)) == 10000  # chunked and pipelined
    assert c.sstep_flags() & 1
    assert "paused" in c.monitor("info status")


def test_step_from_reset_vector(qemu: Callable[..., RemoteClient]) -> None:
    c = qemu()
    c.step(1)
    stop = c.wait_stop()
    assert (stop.signal, stop.thread) == (5, 1)
    assert c.read_register("rip") == 0xE05B and c.read_register("cs") == 0xF000


def test_breakpoint_continue_and_write_watchpoint(qemu: Callable[..., RemoteClient]) -> None:
    c = qemu()
    run_loop_at_7000(c)
    c.insert_breakpoint(B)
    c.cont()
    stop = c.wait_stop()
    assert stop.signal == 5 and stop.watch is None
    assert c.read_register("rip") == B
    c.remove_breakpoint(B)
    c.insert_watchpoint(COUNTER, 2)
    c.cont()
    stop = c.wait_stop()
    assert stop.watch == "watch" and stop.watch_addr == COUNTER
    assert c.read_register("rip") == B  # the PC is already past the store
    c.remove_watchpoint(COUNTER, 2)
    with pytest.raises(ErrorReply):
        c.read_memory(0xFFFFFFFFFFFF0000, 8)  # not mapped in real mode: QEMU says E14


def test_firmware_write_fires_a_watchpoint(qemu: Callable[..., RemoteClient]) -> None:
    c = qemu()
    c.insert_watchpoint(0x400, 0x100)  # the BIOS data area, filled in by SeaBIOS
    c.cont()
    stop = c.wait_stop(20)
    assert stop.watch == "watch" and 0x400 <= stop.watch_addr < 0x500  # type: ignore[operator]


def test_pipelined_toggle_of_breakpoints(qemu: Callable[..., RemoteClient]) -> None:
    c = qemu()
    run_loop_at_7000(c)
    c.insert_breakpoint(A)
    c.cont()
    c.wait_stop()
    at = A
    for _ in range(20):
        nxt = B if at == A else A
        replies = c.pipeline([rq.remove_breakpoint(at), rq.insert_breakpoint(nxt), "c"])
        assert replies == ["OK", "OK"]
        c.wait_stop()
        assert c.read_register("rip") == nxt
        at = nxt
    assert counters(c)[0] == 10
    batch = [rq.read_memory(COUNTER, 2), "qC", rq.read_memory(0xFFFFFFFFFFFF0000, 1), "g"]
    replies = c.pipeline(batch)
    assert replies[:3] == [c.request(batch[0]), c.request("qC"), "E14"]
    assert len(replies[3]) == 1216


def test_interrupt_and_stray_byte_stop_the_guest(qemu: Callable[..., RemoteClient]) -> None:
    c = qemu()
    run_loop_at_7000(c)
    c.cont()
    stop = c.halt(5)
    assert stop.signal == 2 and not c.running
    # QEMU 7.2 stops a running guest on ANY byte: why acks are lazy (never sent late)
    c.cont()
    c.transport.send_raw(b"+")
    assert c.wait_stop(5).signal == 2


def test_vcont_step_freezes_other_vcpus_plain_step_does_not(
    qemu: Callable[..., RemoteClient],
) -> None:
    c = qemu(smp=2)
    c.write_memory(0x8000, SMP_AP)
    run_loop_at_7000(c, SMP_BSP)
    c.write_register("fs_base", 0xFEE00000)
    c.insert_watchpoint(COUNTER + 4, 2)  # wait (without sleeping) until the AP counts
    c.cont()
    assert c.wait_stop(10).thread == 2
    c.remove_watchpoint(COUNTER + 4, 2)
    c.step(1)  # let the BSP run a loop iteration too
    c.wait_stop()
    before = counters(c)
    for _ in range(40):
        c.step(1)
        c.wait_stop()
    after = counters(c)
    assert after[0] - before[0] == 20 and after[1] == before[1]  # vCPU 2 did not run
    c.vcont_actions = frozenset()  # force plain `s` (with Hc1)
    for _ in range(40):
        c.step(1)
        c.wait_stop()
    last = counters(c)
    assert last[0] - after[0] == 20 and last[1] != after[1]  # vCPU 2 ran meanwhile


def test_guest_exit_closes_the_connection(qemu: Callable[..., RemoteClient]) -> None:
    c = qemu("-device", "isa-debug-exit,iobase=0xf4")
    # out 0xf4, al (al=0): QEMU exits with status 1 and just closes the socket
    run_loop_at_7000(c, bytes.fromhex("b000e6f4ebfe"))
    c.cont()
    with pytest.raises(StubClosed):
        c.wait_stop(10)


def test_symbolized_backtrace_through_the_relay(
    qemu: Callable[..., RemoteClient], tmp_path: Path
) -> None:
    c = qemu("-m", "128M", "-kernel", str(KSWTEST), "-serial", "null", smp=2)
    kprintf = _symbol(KSWTEST, "kprintf")
    c.insert_breakpoint(kprintf)
    c.cont()
    stop = c.wait_stop(20)
    with Backtracer(str(KSWTEST), directory=str(tmp_path / "relay")) as tracer:
        frames = tracer.backtrace(c, stop.thread, stop)
        assert frames[0].function == "kprintf" and frames[0].pc == kprintf
        assert frames[0].file is not None and frames[0].file.endswith("console.c")
        assert frames[1].function == "kmain" and frames[1].line
        # kswgdb's breakpoint survived gdb's visit (the relay never forwards '?')
        c.remove_breakpoint(kprintf)
        c.step(stop.thread)
        c.wait_stop()
        c.insert_breakpoint(kprintf)
        c.cont()
        again = c.wait_stop(20)
        assert c.read_register("rip") == kprintf
        assert tracer.backtrace(c, again.thread, again)[0].function == "kprintf"
    assert not os.path.exists(tmp_path / "relay" / "relay.sock")


def _symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        (sym,) = symtab.get_symbol_by_name(name)  # type: ignore[union-attr]
        return int(sym["st_value"])
