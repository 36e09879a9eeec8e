"""Does the symbol file describe the kernel QEMU boots?

A vmlinux from another build gives every address a plausible but wrong name,
and a watch armed at ``fn+fo`` lands in the middle of some other instruction:
the run "works" and catches nothing. So before QEMU starts we compare the two
files when the kernel is an ELF: the GNU build-ids if both have one, and in any
case the bytes of every watched function as each file would load them. A
compressed bzImage cannot be compared this way; it is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kswgdb.errors import BadInput
from kswgdb.symbols.elf import SymbolTable

_ELF_MAGIC = b"\x7fELF"


def _build_id(elf: ELFFile) -> str | None:
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOTE":
            continue
        for note in section.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return None


def _loaded_bytes(elf: ELFFile, addr: int, size: int) -> bytes | None:
    """The bytes a loader would put at [addr, addr+size), from the PT_LOAD segments."""
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        for base in (seg["p_vaddr"], seg["p_paddr"]):
            if base <= addr and addr + size <= base + seg["p_filesz"]:
                data = seg.data()
                return data[addr - base:addr - base + size]
    return None


def check_kernel_matches(kernel: Path, symbols: Path, functions: Iterable[str]) -> None:
    """Raise `BadInput` if ``symbols`` is provably not the symbol file of ``kernel``."""
    if Path(kernel).resolve() == Path(symbols).resolve():
        return
    try:
        with open(kernel, "rb") as fh:
            if fh.read(4) != _ELF_MAGIC:
                return                  # bzImage or raw: nothing to compare
            fh.seek(0)
            kelf = ELFFile(fh)
            table = SymbolTable.load(symbols)
            kid = _build_id(kelf)
            if kid and table.build_id and kid != table.build_id:
                raise BadInput(f"symbol file {symbols} does not match kernel {kernel}: "
                               f"build-id {table.build_id} != {kid}")
            for name in functions:
                func = table.function(name)
                want = table.read_bytes(func.addr, func.size)
                got = _loaded_bytes(kelf, func.addr, func.size)
                if got is None:
                    raise BadInput(f"symbol file {symbols} does not match kernel {kernel}: "
                                   f"{name} ({func.addr:#x}) is not in the kernel's image")
                if got != want:
                    raise BadInput(f"symbol file {symbols} does not match kernel {kernel}: "
                                   f"the bytes of {name} differ (another build?)")
    except (ELFError, OSError, ValueError) as exc:
        raise BadInput(f"kernel {kernel}: cannot read it as ELF: {exc}") from None
