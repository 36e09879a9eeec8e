"""Functions that realign their stack through a DRAP register, on their real code.

Debian's 6.1 vmlinux has 56 of them, each with a canary (`lea r10, [rsp+8]; and rsp,
-16; push [r10-8]; push rbp; mov rbp, rsp`): RBP lands in the aligned space, so
neither RBP nor RSP gives the CFA. The frame is keyed by A (RSP just after the
``and``, = RBP + 16) instead: A - 8 holds the copied return address and A - 16 the
caller's RBP, as CFA - 8 and CFA - 16 do in an ordinary frame. The code of three
of them is in tests/unit/data (the fixture names its build); their prologue is run
under unicorn from several entry stack pointers to check the numbers `run` hands
the engine against the machine's own.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn.x86_const import (
    UC_X86_REG_GS_BASE,
    UC_X86_REG_R10,
    UC_X86_REG_RBP,
    UC_X86_REG_RSP,
)

from kswgdb.emulate.x86 import uc_address
from kswgdb.errors import BadInput
from kswgdb.symbols.listing import WatchRequest, build_listing
from kswgdb.symbols.program import Program
from kswgdb.watch.config import parse_watch
from kswgdb.watch.resolve import resolve_watch
from tests.unit.realcode import code_program, run_anywhere

FIXTURE = Path(__file__).parent / "data" / "drap-debian-6.1.json"
NAMES = ("sg_alloc_table_from_pages_segment", "ip6_tun_build_state", "vfs_rename")


def _program(tmp_path: Path, patch: dict[str, tuple[int, bytes]] | None = None) -> Program:
    """The fixture's functions at their vmlinux addresses, in a file of their own."""
    data = json.loads(FIXTURE.read_text())
    functions = []
    for f in data["functions"]:
        code = bytearray.fromhex(f["code"])
        if patch and f["name"] in patch:
            off, new = patch[f["name"]]
            code[off:off + len(new)] = new
        functions.append((f["name"], int(f["addr"], 16), bytes(code), ".text"))
    aux = data["aux"]           # code of no function: a static_cpu_has test
    others = [("aux", int(aux["addr"], 16), bytes.fromhex(aux["code"]), ".altinstr_aux")]
    return code_program(tmp_path / "drap.bin", data["build_id"], functions, others)


@pytest.fixture
def program(tmp_path: Path) -> Program:
    return _program(tmp_path)


def _run_prologue(program: Program, name: str, until: int, entry_sp: int,
                  canary: int, ret: int) -> Uc:
    """Run ``name`` from its entry to ``until`` (calls skipped: none touches the frame
    before the probe), with the per-CPU canary at %gs:0x28 and zeroes wherever the
    arguments point. The code runs at its
    address in unicorn's 52-bit space (`kswgdb.emulate.x86.uc_address`)."""
    sym = program.function(name)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    start = uc_address(sym.addr)
    code_page = start & ~0xFFF
    uc.mem_map(code_page, ((start + sym.size - code_page) | 0xFFF) + 1)
    uc.mem_write(start, program.symtab.read_bytes(sym.addr, sym.size))
    stack = 0x7000_0000
    uc.mem_map(stack, 0x10000)
    gs = 0x6000_0000
    uc.mem_map(gs, 0x1000)
    uc.mem_write(gs + 0x28, struct.pack("<Q", canary))
    uc.reg_write(UC_X86_REG_GS_BASE, gs)
    uc.mem_write(entry_sp, struct.pack("<Q", ret))          # what the call pushed
    uc.reg_write(UC_X86_REG_RSP, entry_sp)
    uc.reg_write(UC_X86_REG_RBP, 0x1234_5678)               # the caller's

    run_anywhere(uc)
    uc.emu_start(start, uc_address(until))
    return uc


@pytest.mark.parametrize("name", NAMES)
def test_drap_canary_watch_is_placed_keyed_and_released(program: Program, name: str) -> None:
    analysis = program.analyze(name)
    assert analysis.frame.drap_anchored
    listing = build_listing(program, name)
    assert listing.suggested_config is not None, listing.note
    r = resolve_watch(parse_watch(listing.suggested_config), program)
    spec = r.to_arm_spec()
    assert (spec.cfa_base, spec.cfa_offset) == ("rbp", 16)       # A = RBP + 16
    assert spec.exits and all((base, off) == ("rbp", 16) for _, base, off in spec.exits)
    assert spec.read_exits == ()
    canary, ret = 0x5EC7_E7C0_FFEE_0042, 0xFFFF_FFFF_8112_3456
    for entry_sp in (0x7000_8F08, 0x7000_8F00, 0x7000_8EF8):    # CFA = entry_sp + 8
        uc = _run_prologue(program, name, spec.probe_addr, entry_sp, canary, ret)
        sp, fp = uc.reg_read(UC_X86_REG_RSP), uc.reg_read(UC_X86_REG_RBP)
        anchor = entry_sp & ~15
        assert spec.cfa(sp, fp) == anchor
        # The engine reads the return address at key - 8, and the caller's RBP sits at
        # key - 16 (the frame-pointer chain `_frame_is_dead` walks).
        assert struct.unpack("<Q", uc.mem_read(anchor - 8, 8))[0] == ret
        assert struct.unpack("<Q", uc.mem_read(anchor - 16, 8))[0] == 0x1234_5678
        slot = spec.slot_address(sp, fp)
        assert struct.unpack("<Q", uc.mem_read(slot, 8))[0] == canary
        assert sp <= slot and slot + 8 <= anchor
    # Every release point moves SP to just above the canary (from RBP, which the
    # body never changes: the same key at the probe and at the release).
    for addr, _, _ in spec.exits:
        insn = analysis.code.at(addr)
        assert insn.mnemonic == "lea" and insn.op_str.startswith("rsp, [rbp - ")
        assert analysis.frame.state_before(addr).fp == analysis.frame.state_after(
            r.probe_addr).fp
        lifted = insn.address_ref.disp
        assert lifted >= r.slot.offset + 8 and lifted <= 0


def test_drap_so_wl_watch_at_the_suggested_point(program: Program) -> None:
    """so=/wl= on the same frame: SP-relative at the probe, keyed and released by A."""
    r0 = resolve_watch(parse_watch(build_listing(program, "vfs_rename").suggested_config),
                       program)
    body = program.analyze("vfs_rename").frame.state_after(r0.probe_addr)
    so = r0.slot.offset + (body.sp - body.fp)     # the canary's bytes, from RSP
    listing = build_listing(program, "vfs_rename", WatchRequest(so=so, wl=8))
    assert listing.suggested_config is not None, listing.note
    r = resolve_watch(parse_watch(listing.suggested_config), program)
    spec = r.to_arm_spec()
    assert (spec.base, spec.cfa_base, spec.cfa_offset) == ("rsp", "rbp", 16)
    assert spec.exits == r0.to_arm_spec().exits


def test_drap_prologue_without_the_copied_return_address_is_refused(tmp_path: Path) -> None:
    """No `push [r10-8]`: nothing at A - 8 to key the frame by, so no release point can
    be matched, and `disasm` suggests nothing while `run` refuses, both saying why."""
    program = _program(tmp_path, {"sg_alloc_table_from_pages_segment": (9, bytes.fromhex(
        "0f1f4000"))})        # push qword ptr [r10-8] -> a 4-byte nop
    name = "sg_alloc_table_from_pages_segment"
    assert not program.analyze(name).frame.drap_anchored
    listing = build_listing(program, name)
    assert listing.suggested_config is None
    assert "DRAP" in listing.note and "no release point" in listing.note
    fo = program.analyze(name).canary.store_addr + 4 - program.function(name).addr
    with pytest.raises(BadInput) as info:
        resolve_watch(parse_watch(f"fn={name} fo={fo:#x}"), program)
    assert "no release point" in str(info.value) or "cannot follow" in str(info.value)


def test_r10_holds_the_cfa_after_the_lea(program: Program) -> None:
    """The DRAP register is the CFA (entry RSP + 8), which is what the pattern reads
    the return address through."""
    sym = program.function("vfs_rename")
    uc = _run_prologue(program, "vfs_rename", sym.addr + 0xa, 0x7000_8F08, 1, 2)
    assert uc.reg_read(UC_X86_REG_R10) == 0x7000_8F10


def test_a_jump_out_to_a_cpu_feature_test_and_back_is_followed(program: Program) -> None:
    """native_flush_tlb_global realigns its stack, then `jmp`s to a static_cpu_has test
    in .altinstr_aux that jumps back to one of two labels: both paths reach the epilogue,
    so its canary has a release point (it had none when the jump looked like a tail call)."""
    name = "native_flush_tlb_global"
    analysis = program.analyze(name)
    code = analysis.code
    ((jump, back),) = code.detours.items()
    assert code.at(jump).target not in program.function(name)
    assert len(back) == 2 and all(code.is_boundary(t) for t in back)
    assert not analysis.frame.drap_anchored            # RBP gives the CFA here
    listing = build_listing(program, name)
    assert listing.suggested_config is not None, listing.note
    spec = resolve_watch(parse_watch(listing.suggested_config), program).to_arm_spec()
    assert (spec.cfa_base, spec.cfa_offset) == ("rbp", 16) and spec.base == "rsp"
    (release, _, _), = spec.exits
    assert code.at(release).text == "lea rsp, [rbp - 0x10]"
    code.detours.clear()                    # as before: the jump ends the function
    program._analyses.clear()
    from kswgdb.symbols.prologue import analyze
    again = analyze(program.disasm, program.function(name))
    assert not again.writers.releases(analysis.canary.cfa_offset, 8)
