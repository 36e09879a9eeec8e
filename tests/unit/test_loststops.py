"""Finding a watchpoint stop QEMU lost, from a parked vCPU's registers.

`LostStopFinder` decides from the instruction a vCPU last ran (decoded
forward from its function's start) and the registers after it whether that
instruction touched a live watchpoint; `StubTarget` then collects the stop.
"""

from __future__ import annotations

import capstone

from kswgdb.symbols.disasm import Disassembler, FunctionCode, Instruction
from kswgdb.symbols.elf import Symbol
from kswgdb.watch.engine import Engine
from kswgdb.watch.loststops import LostStopFinder
from kswgdb.watch.slots import SlotPool
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.target import Registers
from tests.unit.fake_target import FakeTarget, Program
from tests.unit.test_engine import LAYOUT, PROBE, RET_SITE, FakeSymbols

BASE = 0x10_0000
# push rbp; mov rbp, rsp; mov [rdx+8], rax; pop rbx; rep stosq; call BASE; ret
CODE = bytes.fromhex("55" "4889e5" "48894208" "5b" "f348ab" "e8e6ffffff" "c3")


class OneFunction:
    """The two look-ups the finder makes, over one hand-assembled function."""

    def __init__(self) -> None:
        decoder = Disassembler.__new__(Disassembler)      # decode() needs no symbol table
        decoder._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        decoder._cs.detail = True
        self.func = FunctionCode(Symbol("f", BASE, len(CODE), "func", "global"),
                                 decoder.decode(CODE, BASE))

    def function_at(self, pc: int) -> FunctionCode | None:
        return self.func if BASE <= pc < BASE + len(CODE) else None

    def instruction_before(self, pc: int) -> Instruction | None:
        return self.func.ending_at(pc) if self.func.is_boundary(pc) and pc > BASE else None


def finder() -> LostStopFinder:
    return LostStopFinder(OneFunction())  # type: ignore[arg-type]


def regs(pc: int, **values: int) -> Registers:
    return Registers({"rip": pc, "rsp": 0x8000, "rbp": 0x8100, "eflags": 0x2, **values})


def test_a_store_just_run_onto_a_watched_word_is_found():
    f = finder()
    after_store = BASE + 8                       # after mov [rdx+8], rax
    assert f.find(regs(after_store, rdx=0x9000), [(0x9008, 8)], []) == (0x9008, "write")
    assert f.find(regs(after_store, rdx=0x9100), [(0x9008, 8)], []) is None


def test_a_push_a_call_a_pop_and_a_ret_are_found_at_the_stack_pointer():
    f = finder()
    assert f.find(regs(BASE + 1), [(0x8000, 8)], []) == (0x8000, "write")        # push rbp
    assert f.find(regs(BASE), [(0x8000, 8)], []) == (0x8000, "write")            # call landed
    assert f.find(regs(BASE + 9), [], [(0x7ff8, 8)]) == (0x7ff8, "read")         # pop rbx
    assert f.find(regs(BASE + 17), [], [(0x7ff8, 8)]) == (0x7ff8, "read")        # ret to here
    assert f.find(regs(BASE + 9), [(0x7ff8, 8)], []) is None                     # pop writes none


def test_a_rep_store_is_found_on_itself_with_the_element_it_just_wrote():
    f = finder()
    assert f.find(regs(BASE + 9, rdi=0x9010), [(0x9008, 8)], []) == (0x9008, "write")
    assert f.find(regs(BASE + 9, rdi=0x9010, eflags=0x402), [(0x9018, 8)], []) \
        == (0x9018, "write")


def test_an_address_off_an_instruction_boundary_is_never_guessed():
    f = finder()
    assert f.find(regs(BASE + 3, rdx=0x9000), [(0x9008, 8), (0x8000, 8)], []) is None


def test_a_slot_below_sp_is_never_armed():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.ret(task=0xA000, frame=f)
    spec = ArmSpec(text="fn=victim fo=0x10 so=-0x8 wl=8", func="victim", func_addr=0x40_1000,
                   func_size=0x100, probe_addr=PROBE, cfa_offset=Program.CFA_FROM_SP,
                   mode="offset", base="rsp", offset=-8, length=8, what="SP+so",
                   depth=0, max_watch=0, guard=None)
    engine = Engine(fake, [spec], LAYOUT, FakeSymbols(), SlotPool(capacity=4))
    engine.install()
    engine.run()
    stats = engine.stats[0]
    assert (stats.calls, stats.armed, stats.refused_below_sp, stats.not_armed) == (1, 0, 1, 1)
    assert not fake.watchpoints
    assert engine.summary()[0]["refused_below_sp"] == 1
