"""The poller against fake memory (a bytearray and an mmap): no QEMU, no timing assertions.

`Poller.step` is driven with an explicit clock, so every test is deterministic;
the thread tests only check that polls added and removed from another thread
take effect, waiting on events rather than on time.
"""

from __future__ import annotations

import mmap
import threading

import pytest

from kswgdb.errors import BadInput
from kswgdb.poll.memmap import parse_mtree
from kswgdb.poll.physmem import BufferMemory, parse_xp, xp_command
from kswgdb.poll.poller import HitContext, Poller, VcpuState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def put(mem: bytearray, addr: int, value: int, length: int = 8) -> None:
    mem[addr:addr + length] = value.to_bytes(length, "little")


@pytest.fixture
def ram():
    return bytearray(0x4000)


def make(ram, **kw):
    clock = Clock()
    return Poller(BufferMemory(ram), clock=clock, **kw), clock


def test_to_fires_once_on_the_transition(ram):
    poller, clock = make(ram)
    poller.add_poll("pa=0x100 len=8 to=0x33 interval=1ms")
    poller.step()
    assert not poller.hits
    put(ram, 0x100, 0x33)
    clock.now += 0.001
    poller.step()
    [hit] = poller.hits
    assert (hit.addr, hit.old, hit.new, hit.kind) == (0x100, "00" * 8, "33" + "00" * 7, "dram")
    assert hit.window == pytest.approx(0.001) and not hit.first_sample
    put(ram, 0x100, 0)
    clock.now += 0.001
    poller.step()
    put(ram, 0x100, 0x33)
    clock.now += 0.001
    poller.step()
    assert len(poller.hits) == 1, "once=1 (the default) stops after the first hit"


def test_to_already_true_at_first_sample(ram):
    put(ram, 0x8, 0x33, 1)
    poller, _ = make(ram)
    poller.add_poll("pa=0x8 len=1 to=0x33")
    poller.step()
    [hit] = poller.hits
    assert hit.first_sample and hit.old == hit.new == "33"


def test_from_needs_the_value_first_then_a_change(ram):
    poller, clock = make(ram)
    poller.add_poll("pa=0x200 len=4 from=0xc0ffee once=0")
    poller.step()                       # 0: not yet the constant, no hit
    put(ram, 0x200, 0xC0FFEE, 4)
    clock.now += 1
    poller.step()                       # becomes the constant: no hit
    assert not poller.hits
    put(ram, 0x200, 0xC0FFEF, 4)
    clock.now += 1
    poller.step()
    [hit] = poller.hits
    assert (hit.old, hit.new, hit.trigger) == ("eeffc000", "efffc000", "from")


def test_mask_and_any(ram):
    poller, clock = make(ram)
    poller.add_poll("pa=0x300 len=2 any=1 mask=0xff00 once=0")
    poller.step()
    put(ram, 0x300, 0x00FF, 2)          # outside the mask: ignored
    clock.now += 1
    poller.step()
    assert not poller.hits
    put(ram, 0x300, 0x01FF, 2)
    clock.now += 1
    poller.step()
    assert len(poller.hits) == 1 and poller.hits[0].new == "ff01"


def test_region_reports_offset_and_changed_bytes(ram):
    poller, clock = make(ram)
    poller.add_poll("region=0x1000-0x2000")
    poller.step()
    ram[0x1804:0x1807] = b"\xaa\xbb\xcc"
    clock.now += 1
    poller.step()
    [hit] = poller.hits
    assert (hit.addr, hit.region_offset, hit.length) == (0x1804, 0x804, 3)
    assert (hit.old, hit.new) == ("000000", "aabbcc")


def test_each_poll_keeps_its_own_interval(ram):
    poller, clock = make(ram)
    fast = poller.add_poll("pa=0x0 any=1 interval=1ms")
    slow = poller.add_poll("pa=0x8 any=1 interval=30ms")
    for _ in range(60):
        poller.step()
        clock.now += 0.001
    counts = {s.id: s.samples for s in poller.polls()}
    assert counts[fast] == 60 and counts[slow] == 2
    [status] = [s for s in poller.polls() if s.id == fast]
    assert status.median_interval == pytest.approx(0.001)


def test_context_and_on_hit_callbacks(ram):
    seen = []
    ctx = HitContext(vcpus=(VcpuState(0, 0xFFFF, "f+0x1"),), guest_time=7, hint="watch it")
    poller, clock = make(ram, on_hit=seen.append, context=lambda spec, addr: ctx)
    poller.add_poll("pa=0x10 to=0x1")
    poller.step()
    put(ram, 0x10, 1)
    clock.now += 1
    poller.step()
    assert seen and seen[0].context == ctx and seen[0].seq == 1
    data = seen[0].to_json()
    assert data["event"] == "poll-hit" and data["context"]["vcpus"][0]["pc"] == "0xffff"


def test_remove_and_bad_ids(ram):
    poller, clock = make(ram)
    pid = poller.add_poll("pa=0x10 to=0x1")
    poller.remove_poll(pid)
    put(ram, 0x10, 1)
    poller.step()
    assert not poller.hits
    with pytest.raises(BadInput, match="no poll with id 99"):
        poller.remove_poll(99)
    with pytest.raises(BadInput, match="outside memory"):
        poller.add_poll("pa=0x8000 to=1")


def test_mmio_sources_are_read_through_the_reader():
    reads = []

    def reader(addr: int, length: int) -> bytes:
        reads.append((addr, length))
        return (0x5 if len(reads) > 1 else 0).to_bytes(length, "little")

    clock = Clock()
    poller = Poller(BufferMemory(bytearray(16), mmio={0xFEA00000: reader}), clock=clock)
    poller.add_poll("pa=0xfea00000 len=4 to=0x5")
    poller.step()
    clock.now += 1
    poller.step()
    [hit] = poller.hits
    assert hit.kind == "mmio" and reads == [(0xFEA00000, 4)] * 2


def test_thread_adds_polls_at_run_time_over_an_mmap():
    """A poll added while the thread runs fires on a change made by another 'device'."""
    area = mmap.mmap(-1, 0x1000)
    got = threading.Event()
    poller = Poller(BufferMemory(area), on_hit=lambda h: got.set())
    poller.start()
    try:
        pid = poller.add_poll("pa=0x40 len=8 from=0x0 interval=10us")
        while not [s for s in poller.polls() if s.id == pid and s.samples > 2]:
            threading.Event().wait(0.001)
        area[0x40:0x48] = (0x33).to_bytes(8, "little")
        assert got.wait(10), "the poller thread never saw the change"
        assert poller.hits[0].new == "33" + "00" * 7 and poller.active() == 0
    finally:
        poller.stop()
    assert not poller.running and poller.failure is None


MTREE = """\
FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): ram0
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  0000000000100000-0000000003ffffff (prio 0, ram): ram0 @0000000000100000
  00000000fea00000-00000000feafffff (prio 1, i/o): edu-mmio
FlatView #1
 AS "I/O", root: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
"""


def test_memory_map_from_mtree():
    mm = parse_mtree(MTREE)
    assert len(mm.regions) == 4
    assert mm.find(0x100000, 8).offset == 0x100000 and mm.find(0x100000, 8).name == "ram0"
    assert mm.find(0xFEA00098, 4).kind == "i/o"
    assert mm.find(0xBFFFC, 8) is None            # straddles ram0 and pc.rom
    assert mm.find(0x0, 8).name == "ram0"


def test_xp_round_trip():
    cmd, unit = xp_command(0xFEA00098, 4)
    assert (cmd, unit) == ("xp /1wx 0xfea00098", 4)
    assert parse_xp("00000000fea00098: 0x00000001\n", 4) == b"\x01\x00\x00\x00"
    cmd, unit = xp_command(0x1000, 16)
    assert cmd == "xp /2gx 0x1000"


def test_a_blocked_device_read_does_not_stall_dram_polls():
    """MMIO and DRAM polls sample in separate threads: a slow QEMU read delays only its lane."""
    area = mmap.mmap(-1, 0x1000)
    release, entered, got = threading.Event(), threading.Event(), threading.Event()

    def stuck_reader(addr: int, length: int) -> bytes:
        entered.set()
        release.wait(30)
        return bytes(length)

    poller = Poller(BufferMemory(area, mmio={0xFED000F0: stuck_reader}),
                    on_hit=lambda h: got.set())
    poller.start()
    try:
        poller.add_poll("pa=0xfed000f0 len=4 any=1 interval=1ms")
        assert entered.wait(10)
        poller.add_poll("pa=0x80 len=8 to=0x33 interval=10us")
        area[0x80:0x88] = (0x33).to_bytes(8, "little")
        assert got.wait(10), "the DRAM poll was stalled behind the blocked device read"
        assert not release.is_set() and poller.hits[0].kind == "dram"
    finally:
        release.set()
        poller.stop()
