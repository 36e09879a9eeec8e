"""A kernel's symbols where the running kernel put them (KASLR): a relocated view.

A distribution kernel boots with KASLR: the decompressor moves the kernel's
virtual image by a random multiple of 2 MiB (its "slide") and fixes its
absolute references, so every address in the vmlinux file is off by the slide
in the guest. `slid_program` wraps a `Program` so that every address it hands
out (symbols, disassembly, analyses, globals) and takes in (symbolize, source
line, locals at a pc) is a *guest* address: the rest of kswgdb keeps working in
the guest's addresses and never sees the file's.

Only addresses of the kernel image move: the x86-64 kernel map is
``[__START_KERNEL_map, +1 GiB)``. Per-CPU symbols (offsets from the GS base,
linked at 0) and module addresses do not.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

from kswgdb.symbols.elf import Kind, Symbol, Symbolized, SymbolTable, _Region
from kswgdb.symbols.lines import SourceLine
from kswgdb.symbols.locals import FrameVar
from kswgdb.symbols.program import Program

#: x86-64 ``__START_KERNEL_map`` and the end of the KASLR kernel image range
#: (``KERNEL_IMAGE_SIZE`` = 1 GiB with CONFIG_RANDOMIZE_BASE).
KERNEL_MAP_START = 0xFFFF_FFFF_8000_0000
KERNEL_MAP_END = 0xFFFF_FFFF_C000_0000
#: KASLR moves the kernel by multiples of CONFIG_PHYSICAL_ALIGN, at least 2 MiB on x86-64.
SLIDE_ALIGN = 0x20_0000


@dataclass(frozen=True)
class KernelSlide:
    """Where the running kernel is, relative to its file: ``guest = file + virtual``.

    ``physical`` is the same for the kernel's physical load address (``_text``'s
    physical address minus its link-time one), None when it was not read.
    """

    virtual: int = 0
    physical: int | None = None
    found_by: str = "none"      # how it was found ("entry breakpoint", "not needed")

    def describe(self) -> str:
        if self.found_by == "no KASLR":
            return "kernel at its link-time addresses (no KASLR)"
        phys = "" if self.physical is None else f", physical {self.physical:+#x}"
        return f"kaslr slide {self.virtual:+#x}{phys} ({self.found_by})"


def gdb_symbols(path: object, slide: KernelSlide | None) -> str:
    """How gdb's command line names the symbol file: moved by the slide when there is one."""
    if slide is None or not slide.virtual:
        return str(path)
    return f"-ex 'symbol-file -o {slide.virtual:#x} {path}'"


class SlidSymbolTable:
    """A `SymbolTable` read through a slide: the same questions, guest addresses."""

    def __init__(self, base: SymbolTable, slide: int) -> None:
        self.base = base
        self.slide = slide
        self.path = base.path
        self.elf_type = base.elf_type
        self.build_id = base.build_id

    # -- address translation -------------------------------------------------
    def to_guest(self, addr: int) -> int:
        """A file address as the guest sees it (only kernel-image addresses move)."""
        return addr + self.slide if KERNEL_MAP_START <= addr < KERNEL_MAP_END else addr

    def to_file(self, addr: int) -> int:
        """A guest address as the file has it: a kernel-map address the guest does not
        use for the image (the file's own one, say) becomes one the file has nothing at."""
        return addr - self.slide if KERNEL_MAP_START <= addr < KERNEL_MAP_END else addr

    def _sym(self, sym: Symbol) -> Symbol:
        moved = self.to_guest(sym.addr)
        return sym if moved == sym.addr else replace(sym, addr=moved)

    # -- SymbolTable's questions -----------------------------------------------
    def lookup_all(self, name: str) -> list[Symbol]:
        return [self._sym(s) for s in self.base.lookup_all(name)]

    def lookup(self, name: str, kind: Kind | None = None) -> Symbol:
        return self._sym(self.base.lookup(name, kind))

    def function(self, name: str, file_of: Callable[[int], str | None] | None = None
                 ) -> Symbol:
        """As `SymbolTable.function`; an ``@0xADDR`` or ``0xADDR`` is the file's address
        (what ``kswgdb symbols`` prints), the answer the guest's."""
        return self._sym(self.base.function(name, file_of))

    def address_of(self, name: str) -> int:
        return self.lookup(name).addr

    def names(self, kind: Kind | None = None) -> list[str]:
        return self.base.names(kind)

    def containing(self, addr: int, kind: Kind | None = None) -> Symbol | None:
        sym = self.base.containing(self.to_file(addr), kind)
        return self._sym(sym) if sym is not None else None

    def symbolize(self, addr: int) -> Symbolized | None:
        return self.base.symbolize(self.to_file(addr))

    def code_extent(self, addr: int) -> tuple[Symbol, int] | None:
        found = self.base.code_extent(self.to_file(addr))
        if found is None:
            return None
        sym, end = found
        return self._sym(sym), self.to_guest(end)

    def read_bytes(self, addr: int, n: int) -> bytes:
        return self.base.read_bytes(self.to_file(addr), n)

    def section_name(self, addr: int) -> str | None:
        return self.base.section_name(self.to_file(addr))

    @cached_property
    def symbols(self) -> list[Symbol]:
        return [self._sym(s) for s in self.base.symbols]

    @cached_property
    def regions(self) -> list[_Region]:
        moved = [replace(r, addr=self.to_guest(r.addr)) for r in self.base.regions]
        return sorted(moved, key=lambda r: r.addr)

    def _region_index(self, addr: int) -> int | None:
        i = bisect.bisect_right([r.addr for r in self.regions], addr) - 1
        if i >= 0 and addr < self.regions[i].addr + self.regions[i].size:
            return i
        return None


class SlidProgram(Program):
    """`Program` whose every address is a guest address (see the module docstring).

    Shares the DWARF, the fact cache and the file with ``base``; disassembly and
    prologue analyses are made at guest addresses, DWARF answers are moved.
    """

    def __init__(self, base: Program, slide: int) -> None:
        super().__init__(SlidSymbolTable(base.symtab, slide), facts=base.facts,
                         open_dwarf=lambda: base.dwarf)
        self.base = base
        self.slide = slide
        self.load_relocations = base.load_relocations

    @property
    def table(self) -> SlidSymbolTable:
        assert isinstance(self.symtab, SlidSymbolTable)
        return self.symtab

    def source_line(self, addr: int) -> SourceLine | None:
        return self.base.source_line(self.table.to_file(addr))

    def locals_at(self, pc: int) -> list[FrameVar]:
        return self.base.locals_at(self.table.to_file(pc))

    def local(self, func: str, name: str, pc: int) -> FrameVar:
        return self.base.local(func, name, self.table.to_file(pc))

    def member_offset(self, type_name: str, member: str) -> int:
        return self.base.member_offset(type_name, member)

    def type_size(self, type_name: str) -> int:
        return self.base.type_size(type_name)

    def linker_symbol(self, name: str) -> int:
        return self.table.to_guest(self.base.linker_symbol(name))

    def global_address(self, name: str) -> int:
        return self.table.to_guest(self.base.global_address(name))


def slid_program(program: Program, slide: int) -> Program:
    """``program`` seen at the guest's addresses; itself when nothing moved."""
    if slide == 0:
        return program
    base = program.base if isinstance(program, SlidProgram) else program
    return SlidProgram(base, slide)


__all__ = ["KERNEL_MAP_END", "KERNEL_MAP_START", "SLIDE_ALIGN", "KernelSlide", "gdb_symbols",
           "SlidProgram", "SlidSymbolTable", "slid_program"]
