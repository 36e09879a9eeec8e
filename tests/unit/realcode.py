"""Real kernel code stored as bytes (tests/unit/data), loaded and run without the kernel.

A fixture holds functions of a named build (name, address, bytes): `code_program`
places them at their addresses in a file of their own, as a `Program` without DWARF;
`run_anywhere` lets unicorn run them with every call skipped and zeroes wherever a
pointer goes, which is enough to run a prologue or an epilogue.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_UNMAPPED, Uc
from unicorn.x86_const import UC_X86_REG_RIP

from kswgdb.errors import BadInput
from kswgdb.symbols.elf import Bind, Symbol, SymbolTable, _Region
from kswgdb.symbols.program import Program

#: (name, address, bytes, section)
Part = tuple[str, int, bytes, str]


def _no_dwarf():
    raise BadInput("the fixture has no DWARF")


def code_program(path: Path, build_id: str | None, functions: Iterable[Part],
                 others: Iterable[Part] = (), bind: Bind = "global") -> Program:
    """``functions`` (with symbols) and ``others`` (code of no function) at their
    addresses, written to ``path``."""
    blob = bytearray()
    symbols, regions = [], []
    for name, addr, code, section in functions:
        symbols.append(Symbol(name, addr, len(code), "func", bind))
        regions.append(_Region(section, addr, len(code), len(blob)))
        blob += code
    for _name, addr, code, section in others:
        regions.append(_Region(section, addr, len(code), len(blob)))
        blob += code
    path.write_bytes(bytes(blob))
    table = SymbolTable(path, "EXEC", build_id, sorted(symbols, key=lambda s: s.addr),
                        sorted(regions, key=lambda r: r.addr))
    return Program(table, open_dwarf=_no_dwarf)


def run_anywhere(uc: Uc) -> None:
    """Skip every ``call rel32``; map a page of zeroes wherever an access lands unmapped."""

    def skip_calls(uc: Uc, addr: int, size: int, _user) -> None:
        if uc.mem_read(addr, 1) == b"\xe8":
            uc.reg_write(UC_X86_REG_RIP, addr + size)

    def zero_page(uc: Uc, _access, addr: int, _size, _value, _user) -> bool:
        uc.mem_map(addr & ~0xFFF, 0x1000)
        return True

    uc.hook_add(UC_HOOK_CODE, skip_calls)
    uc.hook_add(UC_HOOK_MEM_UNMAPPED, zero_page)
