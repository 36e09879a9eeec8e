"""`kswgdb attach` without QEMU: addresses, busy stubs, leaving the stub clean, the slide
of a kernel that booted long ago, the symbols checked in guest memory, bad input."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from kswgdb.errors import BadInput
from kswgdb.gdbstub.attach import (
    chardev_busy,
    check_address,
    settle,
    skip_connect_stop,
    stub_in_use,
)
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.fake import FakeStub
from kswgdb.gdbstub.packet import frame
from kswgdb.gdbstub.transport import Transport
from kswgdb.image import IMAGES_DIR
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import prepare
from kswgdb.run.stub_target import StubTarget
from kswgdb.symbols.running import kernel_mismatch
from kswgdb.watch.kaslr_running import (
    find_running_slide,
    place_running_kernel,
    slide_by_note,
)
from tests.unit.fake_target import FakeTarget
from tests.unit.gdbstub_support import connected, xml_files
from tests.unit.test_kaslr import CODE, STORE_AT, TEXT, kernel  # noqa: F401 (fixture)

KSWTEST = IMAGES_DIR / "kswtest.elf"


# ------------------------------------------------------------- addresses
@pytest.mark.parametrize("address", ["unix:/tmp/x/gdb.sock", "127.0.0.1:1234",
                                     "localhost:1234"])
def test_local_addresses_are_taken(address: str) -> None:
    assert check_address(address) == address


@pytest.mark.parametrize("address", ["10.0.0.2:1234", "example.org:1234", "0.0.0.0:1234"])
def test_remote_hosts_are_refused(address: str) -> None:
    with pytest.raises(BadInput, match="only 127.0.0.1/localhost"):
        check_address(address)


def test_chardev_says_whether_a_debugger_holds_the_stub() -> None:
    free = [{"label": "gdb", "filename": "disconnected:unix:/r/gdb.sock,server=on"}]
    held = [{"label": "gdb", "filename": "unix:/r/gdb.sock,server=on"}]
    tcp = [{"label": "gdb", "filename": "tcp:0.0.0.0:1234,server=on <-> 127.0.0.1:5000"}]
    assert chardev_busy(free, "unix:/r/gdb.sock") is False
    assert chardev_busy(held, "unix:/r/gdb.sock") is True
    assert chardev_busy(held, "unix:/r/other.sock") is None
    assert chardev_busy(tcp, "localhost:1234") is True
    assert chardev_busy(tcp, "127.0.0.1:12345") is None


def test_the_kernel_tables_say_whether_a_debugger_holds_the_stub(tmp_path: Path) -> None:
    head = "Num       RefCount Protocol Flags    Type St Inode Path\n"
    (tmp_path / "unix").write_text(
        head + "0: 00000002 00000000 00010000 0001 01 88 /r/gdb.sock\n")
    assert not stub_in_use(socket.AF_UNIX, "/r/gdb.sock", tmp_path)
    (tmp_path / "unix").write_text(
        head + "0: 00000002 00000000 00010000 0001 01 88 /r/gdb.sock\n"
               "0: 00000003 00000000 00000000 0001 03 89 /r/gdb.sock\n")
    assert stub_in_use(socket.AF_UNIX, "/r/gdb.sock", tmp_path)
    tcp_head = "  sl  local_address rem_address   st\n"
    (tmp_path / "tcp").write_text(tcp_head + "0: 0100007F:04D2 00000000:0000 0A\n")
    assert not stub_in_use(socket.AF_INET, ("127.0.0.1", 1234), tmp_path)
    (tmp_path / "tcp").write_text(tcp_head + "0: 0100007F:04D2 00000000:0000 0A\n"
                                             "1: 0100007F:04D2 0100007F:C350 01\n")
    assert stub_in_use(socket.AF_INET, ("127.0.0.1", 1234), tmp_path)
    # The client side of someone else's connection *to* port 1234 is not the stub's.
    (tmp_path / "tcp").write_text(tcp_head + "1: 0100007F:C350 0100007F:04D2 01\n")
    assert not stub_in_use(socket.AF_INET, ("127.0.0.1", 1234), tmp_path)


def test_the_stop_qemu_sends_on_connect_is_read_past() -> None:
    """QEMU 7.2 stops a running guest for a new client and says so (T02) unasked."""
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(frame("T02thread:01;"))
        client = RemoteClient(Transport(ours), timeout=2)
        threading.Timer(0.1, theirs.sendall, [b"+" + frame("PacketSize=1000")]).start()
        skip_connect_stop(client, 2.0)
        theirs.settimeout(2)
        sent = theirs.recv(4096)
        assert sent.startswith(b"$qSupported") and sent.count(b"$") == 1
    finally:
        ours.close()
        theirs.close()


# ------------------------------------------------------------- leaving
def test_settle_reads_what_an_interrupted_request_left_unread() -> None:
    """Ctrl-C between a request and its reply: the stray reply must not answer ``D``."""
    ours, theirs = socket.socketpair()
    try:
        client = RemoteClient(Transport(ours), timeout=2)
        client.running = True
        theirs.sendall(frame("4e7344157861aa62") + frame("T02thread:01;"))
        settle(client, quiet=0.1)
        assert not client.running
        theirs.settimeout(2)
        assert b"\x03" in theirs.recv(64)            # the guest is stopped first
        threading.Timer(0.05, theirs.sendall, [b"+" + frame("OK")]).start()
        assert client.request("D;1") == "OK"
    finally:
        ours.close()
        theirs.close()


def test_remove_all_sends_a_z_for_every_insertion_then_detach_resumes() -> None:
    fake = FakeStub(xml_files(), threads=(1, 2), memory={0x1000: bytes(64)},
                    registers={1: {"rip": 0x10, "rsp": 0x1000}, 2: {"rip": 0x20}},
                    forced={"Z3,1010,8": "OK", "z3,1010,8": "OK"})    # TCG takes Z3
    with connected(fake) as client:
        target = StubTarget(client, queue_watchpoints=True)
        target.set_breakpoint(0x10)
        target.set_breakpoint(0x30)
        target.set_watchpoint(0x1008, 8)
        target.set_watchpoint(0x1008, 8)          # the same slot armed twice: two z2
        target.set_watchpoint(0x1010, 8, "read")
        target.flush()
        assert fake.breakpoints
        removed = target.remove_all()
        assert removed == {"breakpoints": 2, "watchpoints": 3}
        sent = [p.decode() for d, p in client.transport.trace if d == "sent"]
        assert sorted(p for p in sent if p.startswith("z")) == [
            "z0,10,1", "z0,30,1", "z2,1008,8", "z2,1008,8", "z3,1010,8"]
        assert not fake.breakpoints
        client.detach()
        assert sent[-1].startswith("z") and client.transport.closed
    assert fake.done


# ------------------------------------------------------- a booted kernel
def _booted(fake: FakeTarget, slide: int, pcs: dict[int, int]) -> None:
    fake.write(TEXT + slide, CODE)
    for thread, pc in pcs.items():
        fake.regs[thread] = {"rip": pc, "rsp": 0}


def test_a_stopped_vcpu_in_kernel_text_names_the_slide(kernel) -> None:  # noqa: F811
    slide = 0x1C00_0000
    fake = FakeTarget()
    _booted(fake, slide, {1: 0x40_1000, 2: STORE_AT + slide})   # CPU 1 in user space
    search = find_running_slide(fake, kernel, [1, 2], deadline=float("inf"))
    assert search.slide is not None and search.slide.virtual == slide
    assert search.slide.found_by == "a stopped vCPU's code"
    assert fake.resumes == 0 and not fake.watchpoints


def test_else_the_next_kernel_map_write_names_it(kernel) -> None:  # noqa: F811
    from tests.unit.fake_target import Event

    slide = 0x600_0000
    fake = FakeTarget()
    _booted(fake, slide, {1: 0x40_1000})
    fake.script.append(Event("write", addr=TEXT + slide + 0x2000, data=b"\x01" * 8,
                             pc=STORE_AT + slide))
    placement = place_running_kernel(fake, kernel, "linux", [1], deadline=float("inf"))
    assert placement.found and placement.slide.virtual == slide
    assert placement.slide.found_by == "code of a kernel-map write"
    assert placement.program.function("victim").addr == kernel.function("victim").addr + slide
    assert not fake.watchpoints                 # the search's watchpoint is gone


def test_code_found_nowhere_is_a_mismatch(kernel) -> None:  # noqa: F811
    from tests.unit.fake_target import Event

    fake = FakeTarget()
    _booted(fake, 0x600_0000, {1: 0x40_1000})
    fake.script += [Event("write", addr=TEXT + 0x2000, data=b"\x01" * 8, pc=TEXT + 0x50_0000)
                    for _ in range(3)]
    search = find_running_slide(fake, kernel, [1], deadline=float("inf"), max_stops=3)
    assert search.slide is None and search.ending == "mismatch"
    assert "do not match the running kernel" in search.detail


def test_the_build_id_note_names_the_slot_with_no_instruction_run() -> None:
    note = (TEXT + 0x3000, bytes(range(20)))
    fake = FakeTarget()
    fake.write(note[0] + 0x2A0_0000, note[1])
    slides = range(0, 0x1000_0000, 0x20_0000)
    assert slide_by_note(fake, note, slides, [1, 2]) == 0x2A0_0000
    assert fake.resumes == 0
    fake.write(note[0] + 0x400_0000, note[1])         # twice: no single slot
    assert slide_by_note(fake, note, slides, [1]) is None
    assert slide_by_note(FakeTarget(), note, slides, [1]) is None     # nowhere


def test_symbols_checked_against_the_guest_memory() -> None:
    memory = {0x1000: b"\x55\x48\x89\xe5"}

    def read(addr: int, n: int) -> bytes:
        return memory.get(addr, b"\xcc" * n)[:n]

    good = [("victim", 0x1000, b"\x55\x48\x89\xe5")]
    bad = [("victim", 0x1000, b"\x55\x48\x89\xe6")]
    assert kernel_mismatch(read, KSWTEST, 0, good, code_is_patched=False) is None
    why = kernel_mismatch(read, KSWTEST, 0, bad, code_is_patched=False)
    assert why is not None and "victim at 0x1000 holds 554889e5" in why
    assert kernel_mismatch(read, KSWTEST, 0, bad, code_is_patched=True) is None


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(("options", "message"), [
    (RunOptions(attach="10.0.0.1:1234", image="kswtest", watches=["fn=s3_victim fo=0x23"]),
     "only 127.0.0.1/localhost"),
    (RunOptions(attach="unix:/x", qmp="example.org:4444", image="kswtest",
                watches=["fn=s3_victim fo=0x23"]), "only 127.0.0.1/localhost"),
    (RunOptions(attach="unix:/x", image="kswtest", polls=["pa=0x1000 len=8 to=0x33"]),
     "--poll is not available with attach"),
    (RunOptions(attach="unix:/x", image="kswtest", watches=["fn=s3_victim fo=0x23"],
                on_hit="freeze"), "give --qmp"),
    (RunOptions(attach="unix:/x", image=str(IMAGES_DIR / "kswtest.toml"),
                watches=["fn=s3_victim fo=0x23"], on_hit="detach", modules_dir=Path("/nope")),
     "--modules-dir /nope: not a directory"),
    (RunOptions(image="kswtest", watches=["fn=s3_victim fo=0x23"], on_hit="detach"),
     "expected continue or freeze"),
])
def test_attach_bad_input_before_anything_starts(options: RunOptions, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        prepare(options)


def test_a_bare_vmlinux_is_an_image_of_its_own(tmp_path: Path) -> None:
    plan = prepare(RunOptions(attach="unix:/x", image=str(KSWTEST),
                              watches=["fn=s3_victim fo=0x23"], on_hit="detach"))
    assert plan.image.symbols == KSWTEST.resolve() and plan.image.guest == "kswtest"
    assert plan.accel.accel == "tcg" and "attached" in plan.accel.reason
    compressed = tmp_path / "bzImage"
    compressed.write_bytes(b"MZ\x00\x00" + bytes(60))
    with pytest.raises(BadInput, match="not an ELF"):
        prepare(RunOptions(attach="unix:/x", image=str(compressed),
                           watches=["fn=s3_victim fo=0x23"]))
