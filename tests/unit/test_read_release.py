"""Releases seen by a read watchpoint instead of a release-point breakpoint."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from kswgdb.symbols.program import Program as ElfProgram
from kswgdb.watch.config import parse_watch
from kswgdb.watch.engine import Engine
from kswgdb.watch.resolve import resolve_watch
from kswgdb.watch.slots import SlotPool
from tests.unit.fake_target import Event, FakeTarget, Program
from tests.unit.test_engine import LAYOUT, PROBE, RET_SITE, WRITER_PC, FakeSymbols, canary_spec

EXIT = PROBE + 0x40                 # the epilogue's `leave`
AFTER_EXIT = EXIT + 1
IMAGE = Path(__file__).resolve().parents[2] / "images" / "kswtest.elf"


def read_spec():
    # `leave` at EXIT reads the saved RBP at CFA-16 and leaves SP at CFA-8.
    return dataclasses.replace(canary_spec(), exits=((EXIT, "rbp", 16),),
                               read_exits=((-16, 8, -8),))


def make(fake, by_read=True):
    engine = Engine(fake, [read_spec()], LAYOUT, FakeSymbols(), SlotPool(capacity=64),
                    release_by_read=by_read)
    engine.install()
    return engine


def leave(fake, task, frame, pc=AFTER_EXIT, sp=None):
    """The owner's epilogue reads its saved RBP (or someone reads that slot)."""
    regs = {"rsp": frame["cfa"] - 8 if sp is None else sp, "rbp": 0}
    fake.script.append(Event("read", task=task, regs=regs, addr=frame["cfa"] - 16, pc=pc))


def test_release_read_replaces_the_exit_breakpoint_and_disarms():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    leave(fake, 0xA000, f)
    # After the release an interrupt frame lands on the dead canary: not watched any more.
    prog.store(task=0xA000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=f["cfa"] - 0x30)
    engine = make(fake)
    assert fake.breakpoints == {PROBE}              # no breakpoint at the release point
    assert engine.run().hits == []
    stats = engine.stats[0]
    assert (stats.calls, stats.armed, stats.returns, stats.read_releases) == (1, 1, 1, 1)
    assert fake.watchpoints == set() and fake.read_watchpoints == []


def test_reads_by_others_or_from_deeper_frames_do_not_release():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    leave(fake, 0xB000, f, pc=WRITER_PC)                       # another task's unwinder
    leave(fake, 0xA000, f, pc=WRITER_PC, sp=f["sp"] - 0x100)   # a callee walking the stack
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00,
               cpu=1)
    leave(fake, 0xA000, f)
    engine = make(fake)
    result = engine.run()
    assert len(result.hits) == 1                    # still armed after the foreign reads
    stats = engine.stats[0]
    assert (stats.foreign_reads, stats.read_releases, stats.returns) == (2, 1, 1)
    assert fake.watchpoints == set() and fake.read_watchpoints == []


def test_off_by_default_keeps_the_release_breakpoint():
    fake = FakeTarget()
    make(fake, by_read=False)
    assert fake.breakpoints == {PROBE, EXIT}
    assert inspect.signature(Engine).parameters["release_by_read"].default is False


def test_a_probe_above_drops_a_frame_whose_read_was_never_seen():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    inner = prog.call(task=0xA000, sp=0x8000_3e00)
    outer = prog.call(task=0xA000, sp=0x8000_3f00)  # a new call higher up: inner is gone
    leave(fake, 0xA000, outer)
    engine = make(fake)
    engine.run()
    stats = engine.stats[0]
    assert (stats.stale, stats.read_releases) == (1, 1)
    assert inner["cfa"] != outer["cfa"]
    assert fake.watchpoints == set() and fake.read_watchpoints == []


def plan(prog, func):
    fo = prog.analyze(func).suggest_offset()
    resolved = resolve_watch(parse_watch(f"fn={func} fo={fo:#x}"), prog)
    return resolved, resolved.to_arm_spec(read_release=True)


def test_leave_is_its_own_releasing_read_and_add_rsp_is_not():
    """s7_victim: `leave` releases the slot and reads the saved RBP at CFA-16, leaving SP at
    CFA-8. s3_victim: `add rsp, 0x58` releases and reads nothing; the `pop rbx` after it is
    not used, since an interrupt can come in between (see kswgdb.watch.readrelease)."""
    prog = ElfProgram.load(IMAGE, cache=False)
    resolved, spec = plan(prog, "s7_victim")
    (release, _, _), = spec.exits
    assert resolved.analysis.code.at(release).mnemonic.startswith("leave")
    assert spec.read_exits == ((-16, 8, -8),)
    assert resolved.to_arm_spec().read_exits == ()               # off by default: not analysed
    slot_end = resolved.cfa_offset + resolved.slot.length
    assert slot_end <= -16 or resolved.cfa_offset >= -8         # not the watched slot
    resolved, spec = plan(prog, "s3_victim")
    (release, _, _), = spec.exits
    assert resolved.analysis.code.at(release).mnemonic == "add"
    assert spec.read_exits == ()
