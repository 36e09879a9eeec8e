"""Writes by interrupt entry code: named, decoded from a known start, marked as interrupts.

The test kernel's entry code is assembly with untyped symbols: ``isr_table``
(256 stubs under one global label, no size) and ``isr_common`` (a local label).
A write by ``push rsi`` in ``isr_common`` must be named ``isr_common+0x4``, the
instruction found by decoding forward from the label (never by guessing
backwards from the PC), and the hit marked ``interrupt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kswgdb.symbols.program import Program
from kswgdb.watch.engine import Engine
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.slots import SlotPool
from kswgdb.watch.symbolize import ProgramSymbolizer
from tests.unit.fake_target import FakeTarget
from tests.unit.fake_target import Program as Calls
from tests.unit.test_engine import PROBE, RET_SITE, canary_spec

IMAGE = Path(__file__).resolve().parents[2] / "images" / "kswtest.elf"
LAYOUT = GuestLayout(flavour="fake", current_gs_offset=0, entry_code=("isr_table", "isr_common"))


@pytest.fixture(scope="module")
def program() -> Program:
    if not IMAGE.is_file():
        pytest.skip("the test kernel is not built (make guest)")
    return Program.load(IMAGE)


def test_untyped_entry_labels_are_named_and_decoded_forward(program: Program) -> None:
    isr_common = program.symtab.lookup("isr_common").addr
    isr_table = program.symtab.lookup("isr_table").addr
    sym = ProgramSymbolizer(program)
    assert sym.function(isr_common + 5) == "isr_common"
    assert sym.symbol(isr_common + 5).startswith("isr_common+0x5/")
    insn = program.disasm.instruction_before(isr_common + 5)
    assert insn is not None and insn.addr == isr_common + 4 and insn.text == "push rsi"
    # Stub 3 (`pushq $0; pushq $3; jmp isr_common`, 16 bytes apart): after `pushq $0`.
    stub = isr_table + 3 * 16
    assert program.disasm.instruction_before(stub + 2).text == "push 0"
    # Not on a boundary of that decoding: nothing, rather than a guess.
    assert program.disasm.instruction_before(stub + 1) is None
    # At a stub's first byte nothing before it wrote: the CPU pushed the frame.
    text = sym.writer(stub, None)[1]  # type: ignore[arg-type]
    assert text.startswith("(the CPU delivering an interrupt or exception")


def test_a_hit_by_entry_code_names_it_and_is_marked_interrupt(program: Program) -> None:
    pc = program.symtab.lookup("isr_common").addr + 5          # after `push rsi`
    fake = FakeTarget()
    calls = Calls(fake, PROBE, RET_SITE)
    frame = calls.call(task=0xA000, sp=0x8000_3f00)
    calls.store(task=0xB000, addr=frame["canary"], value=b"\x55" * 8, pc=pc, sp=0x9000_3f00)
    calls.ret(task=0xA000, frame=frame)
    engine = Engine(fake, [canary_spec()], LAYOUT, ProgramSymbolizer(program),
                    SlotPool(capacity=4))
    engine.install()
    hits = engine.run().hits
    assert len(hits) == 1
    hit = hits[0]
    assert hit.writer.function == "isr_common" and hit.writer.disasm == "push rsi"
    assert hit.writer.symbol.startswith("isr_common+0x4/")
    assert hit.interrupt is True
    assert hit.to_json()["interrupt"] is True
