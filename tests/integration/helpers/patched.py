"""A copy of the test kernel with one function's code replaced, described as an image.

Faults the test kernel has no knob for (a triple fault, an ACPI power-off, a
silent hang) are made by overwriting the start of ``ksw_exit`` -- which the
kernel calls once its scenario is done -- in a *copy* of the kernel, while the
symbols still come from the original file. The watched functions keep their
bytes, so the symbol/kernel match check accepts the pair.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from elftools.elf.elffile import ELFFile

from kswgdb.image import IMAGES_DIR
from kswgdb.qemu import pvh
from kswgdb.symbols.elf import SymbolTable

KERNEL = IMAGES_DIR / "kswtest.elf"

#: push 0; push 0; lidt [rsp]; ud2 -- an empty IDT, then #UD -> #GP -> #DF -> reset.
TRIPLE_FAULT = bytes.fromhex("6a006a000f011c240f0b")
#: cli; hlt; jmp back to the hlt: this CPU stops for good, silently.
HANG = bytes.fromhex("faf4ebfd")


def poweroff() -> bytes:
    """ACPI soft-off through PIIX4 (the same port writes as `pvh.poweroff_piix4`)."""
    asm = pvh.Asm()
    pm_base = 0x600
    for reg, value, wide in ((0x40, pm_base | 1, True), (0x80, 1, False)):
        asm.mov_eax(0x80000000 | (1 << 11) | (3 << 8) | reg)
        asm.mov_dx(0xCF8)
        asm.out_eax()
        asm.mov_dx(0xCFC)
        if wide:
            asm.mov_eax(value)
            asm.out_eax()
        else:
            asm.mov_al(value)
            asm.out_al()
    asm.mov_ax(0x2000)
    asm.mov_dx(pm_base + 4)
    asm.out_ax()
    asm.hang()
    return asm.assemble()


def _file_offset(path: Path, addr: int) -> int:
    with open(path, "rb") as fh:
        for seg in ELFFile(fh).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + \
                    seg["p_filesz"]:
                return seg["p_offset"] + addr - seg["p_vaddr"]
    raise ValueError(f"{addr:#x} not in a loadable segment of {path}")


def patched_image(workdir: Path, code: bytes, func: str = "ksw_exit",
                  spill: str = "s6_helper") -> Path:
    """Write kernel copy + TOML; ``code`` goes into ``spill`` if it does not fit ``func``."""
    table = SymbolTable.load(KERNEL)
    kernel = workdir / "patched.elf"
    shutil.copyfile(KERNEL, kernel)
    target = table.function(func)
    data = bytearray(kernel.read_bytes())
    if len(code) > target.size:
        room = table.function(spill)
        assert len(code) <= room.size
        _put(data, _file_offset(KERNEL, room.addr), code)
        rel = room.addr - (target.addr + 5)
        code = b"\xe9" + struct.pack("<i", rel)       # jmp room
    _put(data, _file_offset(KERNEL, target.addr), code)
    kernel.write_bytes(bytes(data))
    toml = workdir / "patched.toml"
    toml.write_text(
        f'name = "kswtest-patched"\nkernel = "{kernel}"\nsymbols = "{KERNEL}"\n'
        'memory = "64M"\ncpus = 2\nmachine = "pc"\nbios = "qboot"\nguest = "kswtest"\n')
    return toml


def _put(data: bytearray, offset: int, code: bytes) -> None:
    data[offset:offset + len(code)] = code
