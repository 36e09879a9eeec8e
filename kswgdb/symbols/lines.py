"""Source lines of addresses, from the DWARF line table.

A hit report names the writing instruction's ``file:line`` and the disassembly
listing shows where the source line changes. Decoding every CU's line program
of a vmlinux takes minutes, so rows are decoded per CU on first use and kept,
in memory and (`RowCache`) on disk: a CU's program takes pyelftools 0.3-0.8 s
to decode, its stored rows a millisecond to load.
DWARF 5 numbers files and directories from 0, earlier versions from 1 (with
directory 0 meaning the CU's directory); both are handled here.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import pickle
import posixpath
from array import array
from dataclasses import dataclass
from pathlib import Path

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


class Rows:
    """One CU's rows, sorted by address: ``files[file_ids[i]]:lines[i]`` from
    ``starts[i]`` on; file id -1 marks a sequence end (no line)."""

    def __init__(self, starts: array, file_ids: array, lines: array, files: list[str]) -> None:
        self.starts, self.file_ids, self.lines, self.files = starts, file_ids, lines, files

    def at(self, addr: int) -> SourceLine | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0 or self.file_ids[i] < 0:
            return None
        return SourceLine(self.files[self.file_ids[i]], self.lines[i])


class RowCache:
    """Decoded rows of one ELF file's CUs on disk, one small file per CU.

    Keyed by the file's path, size, mtime and build-id (a rebuilt kernel at the
    same path gets a new directory); any problem reading or writing just means
    decoding again.
    """

    def __init__(self, path: Path, build_id: str | None, directory: Path) -> None:
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{build_id}|{_VERSION}"
        self.dir = directory / f"lines-{path.name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def get(self, cu_offset: int) -> Rows | None:
        try:
            with open(self.dir / f"{cu_offset:x}.pickle", "rb") as f:
                starts, file_ids, lines, files = pickle.load(f)
        except Exception:
            return None
        return Rows(starts, file_ids, lines, files)

    def put(self, cu_offset: int, rows: Rows) -> None:
        target = self.dir / f"{cu_offset:x}.pickle"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                pickle.dump((rows.starts, rows.file_ids, rows.lines, rows.files), f,
                            protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, target)
        except OSError:
            pass


_VERSION = 1


class LineTable:
    """address -> SourceLine, decoding each compile unit's rows on first use."""

    def __init__(self, dwarf: DwarfInfo, cache: RowCache | None = None) -> None:
        self.dwarf = dwarf
        self.cache = cache
        self._rows: dict[int, Rows] = {}     # per CU offset

    def lookup(self, addr: int) -> SourceLine | None:
        """The source line of the instruction at ``addr``; None without line info."""
        cu = self.dwarf.cu_at(addr)
        if cu is None:
            return None
        return self._cu_rows(cu).at(addr)

    def _cu_rows(self, cu) -> Rows:
        rows = self._rows.get(cu.cu_offset)
        if rows is None:
            rows = self.cache.get(cu.cu_offset) if self.cache is not None else None
            if rows is None:
                rows = _decode(self.dwarf, cu)
                if self.cache is not None:
                    self.cache.put(cu.cu_offset, rows)
            self._rows[cu.cu_offset] = rows
        return rows


def _decode(dwarf: DwarfInfo, cu) -> Rows:
    """All rows of one CU, sorted by address; a sequence end has no line."""
    program = dwarf.info.line_program_for_CU(cu)
    if program is None:
        return Rows(array("Q"), array("i"), array("I"), [])
    names = _file_names(program, cu)
    files: list[str] = []
    ids: dict[str, int] = {}
    rows: list[tuple[int, int, int, int]] = []        # (address, kind, file id, line)
    for entry in program.get_entries():
        state = entry.state
        if state is None:
            continue
        if state.end_sequence:
            rows.append((state.address, 0, -1, 0))
        else:
            name = names.get(state.file, "?")
            fid = ids.get(name)
            if fid is None:
                fid = ids[name] = len(files)
                files.append(name)
            rows.append((state.address, 1, fid, state.line))
    # Several rows can share an address: the last one describes the instruction there.
    # The sort is stable and puts sequence ends first, so a sequence that starts where
    # another ends wins.
    rows.sort(key=lambda r: (r[0], r[1]))
    starts, file_ids, lines = array("Q"), array("i"), array("I")
    for addr, _kind, fid, line in rows:
        if starts and starts[-1] == addr:
            file_ids[-1], lines[-1] = fid, line
            continue
        starts.append(addr)
        file_ids.append(fid)
        lines.append(line)
    return Rows(starts, file_ids, lines, files)


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
