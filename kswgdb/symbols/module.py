"""A loadable kernel module (``.ko``, a relocatable ELF) as a `Program`.

A module has no addresses of its own: the kernel places each of its sections
wherever it loads it. kswgdb gives each code section (``.text``,
``.text.unlikely``, ``.init.text``...) a placeholder base, ``section index <<
24``, and applies the module's relocations to its DWARF with those same bases,
so function symbols, decoded instructions and line rows agree on one numbering
(relocated with the sections at 0, as pyelftools does by default, every code
section's rows would overlap). The watch layer later maps a placeholder address
to the guest's by one delta per section, found from the kernel's own symbol
table of the loaded module.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.construct.lib.container import Container
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import Symbol as ElfSymbol
from elftools.elf.sections import SymbolTableSection

from kswgdb.errors import BadInput
from kswgdb.symbols.dwarf import DwarfInfo
from kswgdb.symbols.elf import (
    _BIND_RANK,
    _STB,
    _STT,
    SectionHeader,
    Symbol,
    SymbolTable,
    _Region,
    c_string,
    section_headers,
    symbol_entries,
)
from kswgdb.symbols.program import Program

_ET_REL = 1
_SHT_SYMTAB = 2
_SHT_RELA = 4
_STT_SECTION = 3
_SHN_UNDEF = 0
#: x86-64 relocations a direct call/jump's rel32 carries (value = S + A - P).
R_X86_64_PC32, R_X86_64_PLT32 = 2, 4
_SHF_ALLOC, _SHF_EXECINSTR = 0x2, 0x4
#: Placeholder base of code section N: N << 24 (16 MiB apart; a module section is far smaller).
SECTION_SHIFT = 24


def section_base(index: int) -> int:
    return index << SECTION_SHIFT


def section_of(addr: int) -> int:
    """The section index a placeholder address belongs to."""
    return addr >> SECTION_SHIFT


def load_module(path: str | os.PathLike[str]) -> Program:
    """The module's ``.text`` functions and DWARF, with ``.text`` at address 0."""
    path = Path(path).resolve()
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read module {path}: {exc}") from None
    try:
        symtab = _module_symtab(path, data)
    except (struct.error, IndexError, ValueError):
        raise BadInput(f"{path} is a malformed ELF file") from None
    finally:
        data.close()
    code_sections = frozenset(section_of(r.addr) for r in symtab.regions)

    def open_dwarf() -> DwarfInfo:
        """Relocating a module's DWARF takes ~1 s in Python: only when a line is asked for."""
        stream = open(path, "rb")  # noqa: SIM115 -- pyelftools reads lazily from it
        elf = _PlacedModuleELF(stream)
        elf.code_sections = code_sections
        if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
            stream.close()
            raise BadInput(f"{path} has no DWARF debug info (build it with -g)")
        return DwarfInfo(path, elf, elf.get_dwarf_info(relocate_dwarf_sections=True))

    program = Program(symtab, open_dwarf=open_dwarf)
    program.load_relocations = lambda: module_relocations(path)
    return program


class _PlacedSymtab(SymbolTableSection):
    """The module's symbol table as relocations see it: section symbols at their bases."""

    def get_symbol(self, n: int) -> ElfSymbol:
        sym = super().get_symbol(n)
        shndx = sym["st_shndx"]
        if isinstance(shndx, int) and shndx in self.elffile.code_sections:
            entry = Container(**dict(sym.entry))
            entry["st_value"] = sym["st_value"] + section_base(shndx)
            return ElfSymbol(entry, sym.name)
        return sym


class _PlacedModuleELF(ELFFile):
    """An ELFFile whose relocations place every code section at `section_base` (DWARF only)."""

    code_sections: frozenset[int] = frozenset()

    def get_section(self, n: int, type=None):  # noqa: A002 -- pyelftools' signature
        sec = super().get_section(n, type) if type is not None else super().get_section(n)
        if isinstance(sec, SymbolTableSection) and not isinstance(sec, _PlacedSymtab):
            sec.__class__ = _PlacedSymtab
        return sec


def _module_symtab(path: Path, data: mmap.mmap) -> SymbolTable:
    if data[:4] != b"\x7fELF" or struct.unpack_from("<H", data, 16)[0] != _ET_REL:
        raise BadInput(f"{path} is not a kernel module (a relocatable ELF .ko)")
    sections, e_shstrndx = section_headers(data)
    shstr = sections[e_shstrndx]

    def sec_name(sh: SectionHeader) -> str:
        return c_string(data, shstr, sh.name)

    code = {i: sh for i, sh in enumerate(sections)
            if sh[2] & _SHF_ALLOC and sh[2] & _SHF_EXECINSTR and sh[5]}
    symtab = next((sh for sh in sections if sh[1] == _SHT_SYMTAB), None)
    if not code or symtab is None:
        raise BadInput(f"{path} has no code or no symbol table")
    strtab = sections[symtab[6]]
    strings = data[strtab.offset:strtab.offset + strtab.size]
    symbols: list[Symbol] = []
    for st_name, st_info, _other, st_shndx, st_value, st_size in symbol_entries(data, symtab):
        kind, bind = _STT.get(st_info & 0xF), _STB.get(st_info >> 4)
        if kind != "func" or bind is None or st_shndx not in code or not st_name:
            continue
        name = strings[st_name:strings.find(b"\0", st_name)].decode("utf-8", "replace")
        symbols.append(Symbol(name, section_base(st_shndx) + st_value, st_size,
                              kind, bind))  # type: ignore[arg-type]
    if not symbols:
        raise BadInput(f"{path} has no functions")
    symbols.sort(key=lambda s: (s.addr, _BIND_RANK[s.bind], s.name))
    regions = [_Region(sec_name(sh), section_base(i), sh[5], sh[4]) for i, sh in code.items()]
    return SymbolTable(path, "rel", None, symbols, regions)


@dataclass(frozen=True, slots=True)
class Relocation:
    """One relocation of a module's code, at placeholder addresses.

    Until the kernel loader applies it, the field holds 0: decoded from the
    file, a ``call __fentry__`` reads as a call to the next instruction. The
    relocation says what is really there.
    """

    field: int                 # placeholder address of the relocated bytes
    kind: int                  # R_X86_64_*
    symbol: str                # the symbol's name (a section symbol: the section's)
    target: int | None         # its placeholder address, when it is code of this module
    addend: int

    def branch_target(self, insn_end: int) -> int | None:
        """Where a PC-relative branch whose rel32 this is goes (placeholder), if here."""
        if self.target is None or self.kind not in (R_X86_64_PC32, R_X86_64_PLT32):
            return None
        return self.target + self.addend + (insn_end - self.field)

    def describe(self, insn_end: int) -> str:
        """``symbol`` or ``symbol+0x10``: what a branch through this relocation reaches."""
        extra = self.addend + (insn_end - self.field) if self.kind in (
            R_X86_64_PC32, R_X86_64_PLT32) else self.addend
        return self.symbol + (f"{extra:+#x}" if extra else "")


def module_relocations(path: str | os.PathLike[str]) -> dict[int, Relocation]:
    """The relocations of the module's code sections, keyed by field placeholder address."""
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _relocations(data)
    except (struct.error, IndexError, ValueError):
        raise BadInput(f"{path}: malformed relocations") from None
    finally:
        data.close()


def _relocations(data: mmap.mmap) -> dict[int, Relocation]:
    sections, e_shstrndx = section_headers(data)
    shstr = sections[e_shstrndx]

    def cstr(table: SectionHeader, offset: int) -> str:
        return c_string(data, table, offset)

    code = {i for i, sh in enumerate(sections) if sh[2] & _SHF_ALLOC and sh[2] & _SHF_EXECINSTR}
    out: dict[int, Relocation] = {}
    for rela in sections:
        if rela[1] != _SHT_RELA or rela[7] not in code:
            continue
        symtab = sections[rela[6]]
        strtab = sections[symtab[6]]
        for r_offset, r_info, r_addend in struct.iter_unpack(
                "<QQq", data[rela[4]:rela[4] + rela[5] - rela[5] % 24]):
            st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from(
                "<IBBHQQ", data, symtab[4] + (r_info >> 32) * 24)
            if st_info & 0xF == _STT_SECTION:
                name = cstr(shstr, sections[st_shndx][0]) if st_shndx < len(sections) else "?"
            else:
                name = cstr(strtab, st_name)
            target = section_base(st_shndx) + st_value if st_shndx in code else None
            field = section_base(rela[7]) + r_offset
            out[field] = Relocation(field, r_info & 0xFFFF_FFFF, name, target, r_addend)
    return out
