"""One kernel ELF with everything kswgdb knows about it statically.

The engine, the CLI and the report renderers all ask the same questions of the
same file (what is at this address, which line, where is this local, what is
``task.stack``); this bundles the symbol table (always), and the DWARF, line
table, type index and decoded functions (each loaded on first use, since a
config in offset mode needs no DWARF at all).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from kswgdb.errors import BadInput
from kswgdb.symbols.disasm import Disassembler, Instruction
from kswgdb.symbols.dwarf import DwarfInfo
from kswgdb.symbols.elf import Symbol, Symbolized, SymbolTable, cache_dir, raw_symbol_address
from kswgdb.symbols.factcache import FactCache
from kswgdb.symbols.lines import LineTable, RowCache, SourceLine
from kswgdb.symbols.locals import FrameVar, find_local, frame_variables
from kswgdb.symbols.prologue import FunctionAnalysis, analyze
from kswgdb.symbols.types import TypeIndex


class Program:
    """Symbols, DWARF and code of one ELF; every part is loaded on first use."""

    def __init__(self, symtab: SymbolTable, dwarf: DwarfInfo | None = None,
                 facts: FactCache | None = None,
                 open_dwarf: Callable[[], DwarfInfo] | None = None) -> None:
        self.symtab = symtab
        self._dwarf = dwarf
        self._open_dwarf = open_dwarf   # how to open the DWARF on first use (default: the file)
        self._analyses: dict[int, FunctionAnalysis] = {}
        self._locals: dict[int, list[FrameVar]] = {}
        self.facts = facts          # remembered DWARF answers (None: always ask the DWARF)
        #: A relocatable file's (a module's) code relocations by field address, loaded
        #: on first use; None for linked files, whose fields hold their final values.
        self.load_relocations: Callable[[], dict] | None = None
        self._relocations: dict | None = None

    def relocation_in(self, start: int, end: int):
        """The relocation of a field inside ``(start, end)`` (an instruction), if any."""
        if self.load_relocations is None:
            return None
        if self._relocations is None:
            try:
                self._relocations = self.load_relocations()
            except (OSError, BadInput):
                self._relocations = {}
        return next((self._relocations[a] for a in range(start + 1, end)
                     if a in self._relocations), None)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, cache: bool = True) -> Program:
        symtab = SymbolTable.load(path, cache=cache)
        facts = FactCache(symtab.path, symtab.build_id, cache_dir()) if cache else None
        return cls(symtab, facts=facts)

    def _fact(self, question: str, compute) -> int:
        return compute() if self.facts is None else self.facts.answer(question, compute)

    @property
    def path(self) -> Path:
        return self.symtab.path

    # -- parts -------------------------------------------------------------------

    @property
    def dwarf(self) -> DwarfInfo:
        """The DWARF; `BadInput` if the file has none."""
        if self._dwarf is None:
            self._dwarf = (self._open_dwarf() if self._open_dwarf is not None
                           else DwarfInfo.open(self.symtab.path))
            if self.row_cache is not None:
                self._dwarf.aranges_store = self.row_cache.dir / "aranges.pickle"
        return self._dwarf

    @cached_property
    def has_dwarf(self) -> bool:
        try:
            self.dwarf  # noqa: B018 -- opening is the check
        except BadInput:
            return False
        return True

    @cached_property
    def lines(self) -> LineTable | None:
        return LineTable(self.dwarf, self.row_cache) if self.has_dwarf else None

    @cached_property
    def row_cache(self) -> RowCache | None:
        """Decoded line rows and aranges on disk, when loaded with the on-disk caches."""
        if self.facts is None:
            return None
        try:
            return RowCache(self.symtab.path, self.symtab.build_id, cache_dir())
        except OSError:
            return None

    @cached_property
    def types(self) -> TypeIndex:
        return TypeIndex(self.dwarf, self.symtab)

    @cached_property
    def disasm(self) -> Disassembler:
        return Disassembler(self.symtab)

    # -- questions ---------------------------------------------------------------

    def function(self, name: str) -> Symbol:
        """``NAME``, ``NAME@0xADDR``, ``NAME@FILE`` or ``0xADDR`` (`SymbolTable.function`)."""
        return self.symtab.function(name, self._file_of if self.has_dwarf else None)

    def config_name(self, sym: Symbol) -> str:
        """How a watch config names ``sym`` unambiguously: NAME, or NAME@0xADDR for a
        static name several files define."""
        same = [s for s in self.symtab.lookup_all(sym.name) if s.kind == "func"]
        if len(same) > 1 and (sym.bind == "local" or same[0].addr != sym.addr):
            return f"{sym.name}@{sym.addr:#x}"
        return sym.name

    def _file_of(self, addr: int) -> str | None:
        """The file that compiled the code at ``addr`` (its CU: compat_binfmt_elf.c, not
        the binfmt_elf.c it includes), else its source line's file."""
        cu = self.dwarf.cu_at(addr)
        name = cu.get_top_DIE().attributes.get("DW_AT_name") if cu is not None else None
        if name is not None:
            return name.value.decode("utf-8", "replace")
        line = self.source_line(addr)
        return line.file if line is not None else None

    def symbolize(self, addr: int) -> Symbolized | None:
        return self.symtab.symbolize(addr)

    def source_line(self, addr: int) -> SourceLine | None:
        return self.lines.lookup(addr) if self.lines is not None else None

    def analyze(self, func: str | Symbol) -> FunctionAnalysis:
        """Decoded code, frame states and canary of a function (cached)."""
        sym = self.function(func) if isinstance(func, str) else func
        if sym.addr not in self._analyses:
            analysis = analyze(self.disasm, sym)
            analysis.find_objects = lambda: self.stack_objects(analysis)
            self._analyses[sym.addr] = analysis
        return self._analyses[sym.addr]

    def stack_objects(self, analysis: FunctionAnalysis) -> list[tuple[int, int]]:
        """The function's locals in its frame as (CFA offset, size), from DWARF."""
        region = analysis.frame.straight_line()
        body_pc = region[-1].end if region else analysis.symbol.addr
        state = analysis.frame.state_after(region[-1].addr) if region else None
        out = []
        for v in self.locals_at(body_pc):
            loc = v.location
            cfa = loc.cfa_offset
            if cfa is None and state is not None and loc.base is not None \
                    and loc.offset is not None:
                cfa = state.cfa_offset(loc.base, loc.offset)    # DW_OP_breg7 (realigned)
            if v.on_stack and cfa is not None and v.total_size:
                out.append((cfa, v.total_size))
        return out

    def writer_of(self, pc: int) -> Instruction | None:
        """The instruction that made a write watchpoint stop with PC = ``pc``."""
        return self.disasm.likely_writer(pc)

    def local(self, func: str, name: str, pc: int) -> FrameVar:
        return find_local(self.dwarf, func, name, pc)

    def locals_at(self, pc: int) -> list[FrameVar]:
        if pc not in self._locals:
            self._locals[pc] = frame_variables(self.dwarf, pc) if self.has_dwarf else []
        return self._locals[pc]

    def member_offset(self, type_name: str, member: str) -> int:
        return self._fact(f"offsetof({type_name}, {member})",
                          lambda: self.types.member_offset(type_name, member))

    def type_size(self, type_name: str) -> int:
        return self._fact(f"sizeof({type_name})", lambda: self.types.type_size(type_name))

    def linker_symbol(self, name: str) -> int:
        """A linker-script symbol's value (``__end_init_task``: no type, no DWARF)."""
        return self._fact(f"linker symbol {name}", lambda: raw_symbol_address(self.path, name))

    def global_address(self, name: str) -> int:
        """A global's address: the symbol table first (no DWARF needed), then DWARF."""
        if self.symtab.lookup_all(name):
            return self.symtab.lookup(name).addr
        return self._fact(f"&{name}", lambda: self.types.global_address(name))
