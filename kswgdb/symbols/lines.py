"""Source lines of addresses, from the DWARF line table.

A hit report names the writing instruction's ``file:line`` and the disassembly
listing shows where the source line changes. Decoding every CU's line program
of a vmlinux takes minutes, so rows are decoded per CU on first use and kept.
DWARF 5 numbers files and directories from 0, earlier versions from 1 (with
directory 0 meaning the CU's directory); both are handled here.
"""

from __future__ import annotations

import bisect
import posixpath
from dataclasses import dataclass

from kswgdb.symbols.dwarf import DwarfInfo


@dataclass(frozen=True, slots=True)
class SourceLine:
    """Where an instruction came from."""

    file: str
    line: int

    @property
    def basename(self) -> str:
        return posixpath.basename(self.file)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class LineTable:
    """address -> SourceLine, decoding each compile unit's rows on first use."""

    def __init__(self, dwarf: DwarfInfo) -> None:
        self.dwarf = dwarf
        # per CU offset: sorted row starts, and rows (address, SourceLine | None for ends)
        self._rows: dict[int, tuple[list[int], list[SourceLine | None]]] = {}

    def lookup(self, addr: int) -> SourceLine | None:
        """The source line of the instruction at ``addr``; None without line info."""
        cu = self.dwarf.cu_at(addr)
        if cu is None:
            return None
        starts, lines = self._cu_rows(cu)
        i = bisect.bisect_right(starts, addr) - 1
        return lines[i] if i >= 0 else None

    def _cu_rows(self, cu) -> tuple[list[int], list[SourceLine | None]]:
        if cu.cu_offset not in self._rows:
            self._rows[cu.cu_offset] = _decode(self.dwarf, cu)
        return self._rows[cu.cu_offset]


def _decode(dwarf: DwarfInfo, cu) -> tuple[list[int], list[SourceLine | None]]:
    """All rows of one CU, sorted by address; a sequence end maps to None."""
    program = dwarf.info.line_program_for_CU(cu)
    if program is None:
        return [], []
    names = _file_names(program, cu)
    rows: list[tuple[int, int, SourceLine | None]] = []
    for entry in program.get_entries():
        state = entry.state
        if state is None:
            continue
        if state.end_sequence:
            rows.append((state.address, 0, None))
        else:
            rows.append((state.address, 1, SourceLine(names.get(state.file, "?"), state.line)))
    # Several rows can share an address: the last one describes the instruction there.
    # The sort is stable and puts sequence ends first, so a sequence that starts where
    # another ends wins.
    rows.sort(key=lambda r: (r[0], r[1]))
    starts: list[int] = []
    lines: list[SourceLine | None] = []
    for addr, _kind, line in rows:
        if starts and starts[-1] == addr:
            lines[-1] = line
            continue
        starts.append(addr)
        lines.append(line)
    return starts, lines


def _file_names(program, cu) -> dict[int, str]:
    """File index -> path, for this line program's numbering (DWARF 5 or earlier)."""
    header = program.header
    version = header["version"]
    comp_dir = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
    comp = comp_dir.value.decode("utf-8", "replace") if comp_dir is not None else ""
    dirs = [_text(d) for d in header["include_directory"]]
    if version < 5:
        dirs = [comp] + dirs
    first = 0 if version >= 5 else 1
    out: dict[int, str] = {}
    for i, entry in enumerate(header["file_entry"], first):
        name = _text(entry.name)
        d = dirs[entry.dir_index] if 0 <= entry.dir_index < len(dirs) else ""
        out[i] = name if posixpath.isabs(name) or not d else posixpath.join(d, name)
    return out


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
