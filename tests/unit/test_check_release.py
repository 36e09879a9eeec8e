"""A canary watch released by its own stack-protector check's read (kswgdb.watch.checkrelease)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import capstone

from kswgdb.run.options import RunOptions
from kswgdb.symbols.disasm import Disassembler, FunctionCode
from kswgdb.symbols.elf import Symbol
from kswgdb.symbols.frame import FrameAnalysis
from kswgdb.symbols.program import Program as ElfProgram
from kswgdb.watch.checkrelease import check_ends
from kswgdb.watch.config import parse_watch
from kswgdb.watch.engine import Engine
from kswgdb.watch.resolve import resolve_watch
from kswgdb.watch.slots import SlotPool
from tests.unit.fake_target import GUARD, Event, FakeTarget, Program
from tests.unit.test_engine import LAYOUT, PROBE, RET_SITE, WRITER_PC, FakeSymbols, canary_spec

EXIT = PROBE + 0x40                 # the epilogue's release (`add rsp` / `leave`)
CHECK_END = EXIT - 9                # just after the check's `mov rax, [rbp-8]`
READER_PC = 0x40_3100               # someone else reading the slot (an unwinder)
IMAGE = Path(__file__).resolve().parents[2] / "images" / "kswtest.elf"


class StoreSymbols(FakeSymbols):
    """The symbol layer's decoding: only the corrupter's instruction stores."""

    def is_store(self, pc: int) -> bool:
        return pc == WRITER_PC


def check_spec(depth: int = 0):
    return dataclasses.replace(canary_spec(depth=depth), exits=((EXIT, "rbp", 16),),
                               check_ends=(CHECK_END,))


def make(fake, by_check=True, depth=0):
    engine = Engine(fake, [check_spec(depth)], LAYOUT, StoreSymbols(), SlotPool(capacity=64),
                    release_by_check=by_check)
    engine.install()
    return engine


def one_call():
    """A fake guest whose task 0xA000 makes one call of the watched function."""
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    return fake, prog, prog.call(task=0xA000, sp=0x8000_3f00)


def check(fake, task, frame, pc=CHECK_END):
    """The owner's epilogue reads its canary slot to compare it with the guard."""
    regs = {"rsp": frame["sp"], "rbp": frame["rbp"]}
    fake.script.append(Event("read", task=task, regs=regs, addr=frame["canary"], pc=pc))


def test_the_check_read_releases_with_no_breakpoint_and_no_write_watch():
    fake, prog, f = one_call()
    check(fake, 0xA000, f)
    # After the release an interrupt frame lands on the dead canary: not watched any more.
    prog.store(task=0xA000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=f["cfa"] - 0x30)
    engine = make(fake)
    assert fake.breakpoints == {PROBE}              # no breakpoint at the release point
    assert engine.run().hits == []
    stats = engine.stats[0]
    assert (stats.calls, stats.armed, stats.returns, stats.check_releases) == (1, 1, 1, 1)
    assert fake.watchpoints == set() and fake.access_watchpoints == set()
    assert engine.pool.in_use == 0


def test_a_read_by_another_instruction_is_counted_and_keeps_the_watch():
    fake, prog, f = one_call()
    check(fake, 0xB000, f, pc=READER_PC)            # another task reads the slot
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00,
               cpu=1)
    check(fake, 0xA000, f)
    engine = make(fake)
    result = engine.run()
    assert len(result.hits) == 1                    # still armed after the read
    stats = engine.stats[0]
    assert (stats.slot_reads, stats.hits, stats.stale) == (1, 1, 1)   # the check then fails
    assert fake.access_watchpoints == set()


def test_a_write_on_the_access_watch_is_a_hit_with_its_writer():
    fake, prog, f = one_call()
    prog.store(task=0xB000, addr=f["canary"], value=b"\x42" * 8, pc=WRITER_PC, sp=0x9000_3f00,
               cpu=1)
    check(fake, 0xA000, f)
    engine = make(fake)
    hit, = engine.run().hits
    assert hit.addr == f["canary"] and hit.old == GUARD.hex() and hit.new == "42" * 8
    assert hit.writer.insn_addr == WRITER_PC - 3
    stats = engine.stats[0]
    # The check then reads the corrupted canary: it fails, the task does not return.
    assert (stats.hits, stats.slot_reads, stats.check_releases) == (1, 0, 0)
    assert (stats.returns, stats.stale) == (0, 1) and fake.access_watchpoints == set()


def test_a_canary_written_back_is_a_return_again():
    fake, prog, f = one_call()
    for value in (b"\x42" * 8, GUARD):          # corrupted, then repaired
        prog.store(task=0xB000, addr=f["canary"], value=value, pc=WRITER_PC, sp=0x9000_3f00,
                   cpu=1)
    check(fake, 0xA000, f)
    engine = make(fake)
    assert len(engine.run().hits) == 2
    stats = engine.stats[0]
    assert (stats.returns, stats.check_releases, stats.stale) == (1, 1, 0)


def test_an_unarmed_frame_is_released_by_its_check_too():
    """dp=1: the outer call is probed but not armed; its check still ends it, so the
    next call at the same depth is a new call, not a loop re-entering the probe."""
    fake, prog, first = one_call()
    check(fake, 0xA000, first)
    second = prog.call(task=0xA000, sp=0x8000_3f00)
    check(fake, 0xA000, second)
    engine = make(fake, depth=1)
    engine.run()
    stats = engine.stats[0]
    assert (stats.calls, stats.skipped_depth, stats.reentries, stats.check_releases) == (2, 2, 0, 2)
    assert fake.access_watchpoints == set()


def test_switched_off_keeps_the_release_breakpoint_and_the_write_watch():
    """The engine does it only when asked; a run asks by default (TCG only: the rig)."""
    fake, _, _ = one_call()
    engine = make(fake, by_check=False)
    assert fake.breakpoints == {PROBE, EXIT}
    engine.handle(engine.target.wait_stop(None))
    assert len(fake.watchpoints) == 1 and fake.access_watchpoints == set()
    assert inspect.signature(Engine).parameters["release_by_check"].default is False
    assert RunOptions().release_by_check is True


# ------------------------------------------------------------- the analysis
BASE = 0x20_0000
#  0 sub rsp,0x18; 4 mov rax,gs:0x28; d mov [rsp+0x10],rax; 12 xor eax,eax (probe)
# 14 test edi,edi; 16 je +0x15 (early); 18 mov rax,[rsp+0x10] (the check);
# 1d sub rax,gs:0x28; 26 jne fail; 28 add rsp,0x18; 2c ret
# 2d add rsp,0x18 (early return, no check); 31 ret; 32 call FAIL (__stack_chk_fail)
CODE = bytes.fromhex("4883ec1865488b042528000000488944241031c085ff7415488b44241065482b0425"
                     "28000000750a4883c418c34883c418c3e8c9ffefff")
FAIL = 0x10_0000


def analysed(code: bytes) -> tuple[FunctionCode, FrameAnalysis]:
    decoder = Disassembler.__new__(Disassembler)      # decode() needs no symbol table
    decoder._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    decoder._cs.detail = True
    func = FunctionCode(Symbol("f", BASE, len(code), "func", "global"), decoder.decode(code, BASE))
    return func, FrameAnalysis(func)


def ends(code: bytes, noreturn=frozenset({FAIL})) -> tuple[int, ...]:
    func, frame = analysed(code)
    return check_ends(func, frame, BASE + 0x12, (BASE + 0x28, BASE + 0x2D), -0x10, 8, noreturn)


def test_a_return_path_that_skips_the_check_keeps_the_breakpoints():
    assert ends(CODE) == ()


def test_every_path_through_the_check_is_seen_by_it():
    one_path = CODE[:0x17] + b"\x00" + CODE[0x18:]      # `je` to the next instruction
    assert ends(one_path) == (BASE + 0x1D,)
    # The fail path's call must be known never to return: else the window has a call.
    assert ends(one_path, noreturn=frozenset()) == ()


def test_the_test_kernels_canary_functions_are_seen_by_their_checks():
    prog = ElfProgram.load(IMAGE, cache=False)
    for func in ("s3_victim", "s6_helper"):
        fo = prog.analyze(func).suggest_offset()
        resolved = resolve_watch(parse_watch(f"fn={func} fo={fo:#x}"), prog)
        spec = resolved.to_arm_spec(check_release=True)
        (end,) = spec.check_ends
        check_insn = resolved.analysis.code.ending_at(end)
        assert check_insn.mnemonic == "mov" and check_insn.mem_reads, check_insn
        assert resolved.to_arm_spec().check_ends == ()        # analysed only when asked


def test_the_probe_reads_go_with_the_resume():
    """Nothing decided before the resume depends on the slot's bytes: they are read in the
    resume's write (StubTarget.read_with_resume) and the call is armed before the next stop."""
    fake, _, _ = one_call()
    engine = make(fake)
    engine.handle(fake.wait_stop(None))
    assert len(fake.access_watchpoints) == 1 and len(fake.with_resume) == 1
    assert engine.stats[0].armed == 0
    fake.resume()
    assert engine.stats[0].armed == 1 and engine.live_watches() == 1


def test_a_missed_check_is_made_good_by_the_owners_first_write_on_its_dead_frame():
    fake, prog, f = one_call()
    # No check stop seen (say, lost); the owner, returned, reuses the stack over the slot.
    prog.store(task=0xA000, addr=f["canary"], value=b"\x43" * 8, pc=WRITER_PC, sp=f["cfa"])
    engine = make(fake)
    assert engine.run().hits == []
    stats = engine.stats[0]
    assert (stats.dead_frame_writes, stats.stale, stats.returns) == (1, 1, 0)
    assert fake.access_watchpoints == set() and engine.live_watches() == 0


def test_no_write_watch_goes_under_an_access_watch():
    """QEMU 7.2 aborts on watchpoints of two kinds over one slot: a second config watching
    the same bytes with a write watch is refused while the access watch is in."""
    fake, _, _ = one_call()
    plain = dataclasses.replace(check_spec(), text="fn=victim fo=0x10 so=0x20", mode="offset",
                                guard=None, check_ends=())
    engine = Engine(fake, [check_spec(), plain], LAYOUT, StoreSymbols(), SlotPool(capacity=64),
                    release_by_check=True)
    engine.install()
    engine.handle(fake.wait_stop(None))
    assert len(fake.access_watchpoints) == 1 and fake.watchpoints == set()
    first, second = engine.stats
    assert (first.armed, second.armed, second.refused_check) == (1, 0, 1)
