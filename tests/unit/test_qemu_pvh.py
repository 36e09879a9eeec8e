"""The hand-built PVH images: valid ELF, PVH note, and code that does what it says."""

from __future__ import annotations

import io
import struct

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from kswgdb.qemu import pvh


def _elf(prog: pvh.Program) -> ELFFile:
    return ELFFile(io.BytesIO(prog.elf))


def _disasm(prog: pvh.Program) -> list[str]:
    elf = _elf(prog)
    load = next(s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    code = load.data()[: pvh.TEXT_OFFSET].rstrip(b"\0")
    return [f"{i.mnemonic} {i.op_str}".strip()
            for i in md.disasm(code, load["p_paddr"])]


@pytest.mark.parametrize("prog", [
    pvh.watch_loop(), pvh.print_and_exit("x\n", 1), pvh.print_and_hang("y\n"),
    pvh.triple_fault("z\n"), pvh.poweroff_piix4(),
])
def test_elf_layout_and_pvh_note(prog: pvh.Program) -> None:
    elf = _elf(prog)
    assert elf.elfclass == 64 and elf.little_endian
    assert elf["e_machine"] == "EM_X86_64"
    assert elf["e_entry"] == pvh.LOAD_ADDR
    load, note = list(elf.iter_segments())
    assert load["p_type"] == "PT_LOAD" and load["p_paddr"] == pvh.LOAD_ADDR
    assert load["p_memsz"] >= load["p_filesz"] + pvh.PAGE
    (n,) = list(note.iter_notes())
    assert n["n_name"] == "Xen"
    assert n["n_type"] == pvh.XEN_ELFNOTE_PHYS32_ENTRY == 18
    assert n["n_descsz"] == 8
    assert struct.unpack("<Q", prog.elf[note["p_offset"] + 16:][:8])[0] == pvh.LOAD_ADDR


def test_watch_loop_stores_to_the_watched_word() -> None:
    prog = pvh.watch_loop()
    assert prog.watch_addr == pvh.LOAD_ADDR + pvh.PAGE
    insns = _disasm(prog)
    assert insns == ["xor eax, eax", "inc eax", f"mov dword ptr [{prog.watch_addr:#x}], eax",
                     "jmp 0x100002"]
    load = next(s for s in _elf(prog).iter_segments() if s["p_type"] == "PT_LOAD")
    assert load["p_paddr"] + load["p_filesz"] <= prog.watch_addr  # in zeroed memory
    assert prog.watch_addr + 4 <= load["p_paddr"] + load["p_memsz"]


def test_print_and_exit() -> None:
    prog = pvh.print_and_exit("HELLO\n", 0x21)
    insns = _disasm(prog)
    assert insns[0] == f"mov esi, {pvh.LOAD_ADDR + pvh.TEXT_OFFSET:#x}"
    assert "out dx, al" in insns
    assert insns[-4:] == ["mov al, 0x21", "mov dx, 0xf4", "out dx, al", "jmp 0x" +
                          format(pvh.LOAD_ADDR + _len(prog) - 2, "x")]
    assert b"HELLO\n\0" in prog.elf


def _len(prog: pvh.Program) -> int:
    load = next(s for s in _elf(prog).iter_segments() if s["p_type"] == "PT_LOAD")
    return len(load.data()[: pvh.TEXT_OFFSET].rstrip(b"\0"))


def test_triple_fault_loads_empty_idt() -> None:
    insns = _disasm(pvh.triple_fault())
    assert insns[0] == f"lidt [{pvh.LOAD_ADDR + pvh.TEXT_OFFSET - 8:#x}]"
    assert insns[1] == "int3"


def test_poweroff_writes_slp_en() -> None:
    insns = _disasm(pvh.poweroff_piix4())
    assert insns[-4:-1] == ["mov ax, 0x2000", "mov dx, 0x604", "out dx, ax"]


def test_rel8_range_checked() -> None:
    asm = pvh.Asm()
    asm.label("far")
    asm.emit(bytes(200))
    asm.jmp("far")
    with pytest.raises(ValueError):
        asm.assemble()
