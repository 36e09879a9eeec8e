"""A function whose returns are in its ``NAME.cold`` part, on its real code.

GCC moves unlikely paths out of a function into ``NAME.cold`` (``.text.unlikely``) and
jumps there and back. Debian's 6.1 ``get_sb_mode`` realigns its stack and has every
return, with the canary check, in ``get_sb_mode.cold``: with the cold part taken for
another function, the jump into it looked like a tail call, no release point was
found and its canary could not be watched. The cold part is analysed with the
function: its release points are real release points. The code (from
tests/unit/data, which names its build) is then run under unicorn from the entry
through the probe to the release point in the cold part, to check the numbers
`run` hands the engine against the machine's own.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from rich.console import Console
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn.x86_const import UC_X86_REG_GS_BASE, UC_X86_REG_RBP, UC_X86_REG_RSP

from kswgdb.emulate.x86 import uc_address
from kswgdb.errors import BadInput
from kswgdb.render.disasm import render_disasm
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program
from kswgdb.watch.config import parse_watch
from kswgdb.watch.resolve import resolve_watch
from tests.unit.realcode import code_program, run_anywhere

FIXTURE = Path(__file__).parent / "data" / "cold-debian-6.1.json"
NAME = "get_sb_mode"
#: ``testb $0x10, efi+0xc`` (EFI_RUNTIME_SERVICES): set, get_sb_mode asks EFI.
EFI_FLAGS = 0xFFFF_FFFF_82C4_136C


def _program(tmp_path: Path, names: dict[str, str] | None = None,
             decoy: int | None = None) -> Program:
    """The fixture's code at its vmlinux addresses, in a file of their own. ``names``
    renames symbols; ``decoy`` puts a copy of the cold part, under the same name, there."""
    data = json.loads(FIXTURE.read_text())
    parts = [((names or {}).get(f["name"], f["name"]), int(f["addr"], 16),
              bytes.fromhex(f["code"]), ".text") for f in data["functions"]]
    if decoy is not None:
        parts.append((parts[1][0], decoy, parts[1][2], ".text"))
    return code_program(tmp_path / "cold.bin", data["build_id"], parts, bind="local")


@pytest.fixture
def program(tmp_path: Path) -> Program:
    return _program(tmp_path)


def test_the_cold_part_is_decoded_with_the_function(program: Program) -> None:
    code = program.analyze(NAME).code
    cold = program.symtab.lookup_all(f"{NAME}.cold")[0]
    assert code.parts == (cold,)
    assert code.instructions[0].addr == code.start            # the entry comes first
    assert code.at(cold.addr + 0x11).text == "mov rdx, qword ptr [rsp + 0x38]"
    assert not code.in_main(cold.addr) and code.part_of(cold.addr + 4) == cold
    assert code.after(code.start + 0xdf) is None              # its last jmp: no fall-through
    assert not code.detours                                   # a jump into it is no detour


def test_canary_watch_is_placed_and_released_in_the_cold_part(program: Program) -> None:
    analysis = program.analyze(NAME)
    cold = program.symtab.lookup_all(f"{NAME}.cold")[0]
    listing = build_listing(program, NAME)
    assert listing.suggested_config is not None, listing.note
    r = resolve_watch(parse_watch(listing.suggested_config), program)
    assert r.probe_addr in program.function(NAME)             # fo is in the function itself
    spec = r.to_arm_spec()
    assert (spec.cfa_base, spec.cfa_offset) == ("rbp", 16) and spec.base == "rsp"
    (release, base, off), = spec.exits
    assert release in cold and (base, off) == ("rbp", 16)
    assert analysis.code.at(release).text == "lea rsp, [rbp - 0x18]"
    # The listing shows the cold part, its canary check, and arms in the function.
    assert sum(row.suggested for row in listing.rows) == 1
    check = next(row for row in listing.rows if "canary check" in row.marks)
    assert check.part == cold and check.offset == 0x16
    buf = io.StringIO()
    Console(file=buf, width=1000, color_system=None).print(render_disasm(listing))
    assert f"{NAME}.cold @ {cold.addr:#x} (cold part)" in buf.getvalue()


def test_arm_and_release_under_unicorn(program: Program) -> None:
    """From the entry to the probe, then into the cold part up to the release: the
    frame key read at the probe and at the release is the same CFA, the slot holds the
    canary, and once the release point has run SP is above the slot."""
    spec = resolve_watch(parse_watch(build_listing(program, NAME).suggested_config),
                         program).to_arm_spec()
    (release, base, off), = spec.exits
    canary, ret = 0x5EC7_E7C0_FFEE_0042, 0xFFFF_FFFF_8151_E562
    for entry_sp in (0x7000_8F08, 0x7000_8F00, 0x7000_8EF8):
        uc = _machine(program, entry_sp, canary, ret)
        uc.emu_start(uc_address(program.function(NAME).addr), uc_address(spec.probe_addr))
        sp, fp = uc.reg_read(UC_X86_REG_RSP), uc.reg_read(UC_X86_REG_RBP)
        cfa = entry_sp + 8
        assert spec.cfa(sp, fp) == cfa
        slot = spec.slot_address(sp, fp)
        assert struct.unpack("<Q", uc.mem_read(slot, 8))[0] == canary
        assert slot % 16 == 8 and sp <= slot < cfa          # [rsp+0x38] of the aligned frame
        uc.emu_start(uc_address(spec.probe_addr), uc_address(release))
        regs = {"rsp": uc.reg_read(UC_X86_REG_RSP), "rbp": uc.reg_read(UC_X86_REG_RBP)}
        assert regs[base] + off == cfa                       # the same frame as at the probe
        uc.emu_start(uc_address(release), uc_address(release + 4), count=1)
        assert uc.reg_read(UC_X86_REG_RSP) >= slot + 8       # released: SP above the slot


def _machine(program: Program, entry_sp: int, canary: int, ret: int) -> Uc:
    """Both parts mapped at their addresses (unicorn's 52-bit space), the per-CPU canary
    at %gs:0x28, EFI runtime services on (`run_anywhere` does the rest)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    for part in (program.function(NAME), program.symtab.lookup_all(f"{NAME}.cold")[0]):
        start = uc_address(part.addr)
        page = start & ~0xFFF
        uc.mem_map(page, ((start + part.size - page) | 0xFFF) + 1)
        uc.mem_write(start, program.symtab.read_bytes(part.addr, part.size))
    uc.mem_map(uc_address(EFI_FLAGS) & ~0xFFF, 0x1000)
    uc.mem_write(uc_address(EFI_FLAGS), b"\x10")
    uc.mem_map(0x7000_0000, 0x10000)
    uc.mem_write(entry_sp, struct.pack("<Q", ret))
    uc.reg_write(UC_X86_REG_RSP, entry_sp)
    uc.reg_write(UC_X86_REG_RBP, 0x1234_5678)
    gs = 0x6000_0000
    uc.mem_map(gs, 0x1000)
    uc.mem_write(gs + 0x28, struct.pack("<Q", canary))
    uc.reg_write(UC_X86_REG_GS_BASE, gs)

    run_anywhere(uc)
    return uc


def test_without_its_cold_part_there_is_no_release_point(tmp_path: Path) -> None:
    """A part named otherwise is another function: the jump into it ends get_sb_mode
    (a tail call), no return is left, and both disasm and run refuse, saying why."""
    program = _program(tmp_path, {f"{NAME}.cold": "efi_other.cold"})
    assert program.analyze(NAME).code.parts == ()
    listing = build_listing(program, NAME)
    assert listing.suggested_config is None and "never releases" in listing.note
    with pytest.raises(BadInput, match="no release point"):
        resolve_watch(parse_watch(f"fn={NAME} fo=0x88"), program)


def test_a_same_named_cold_part_it_never_jumps_to_is_not_its_own(tmp_path: Path) -> None:
    """Static names repeat in a kernel: the cold part is the one the code jumps to."""
    decoy = 0xFFFF_FFFF_819F_0000
    program = _program(tmp_path, decoy=decoy)
    (part,) = program.analyze(NAME).code.parts
    assert part.addr != decoy and part.name == f"{NAME}.cold"
