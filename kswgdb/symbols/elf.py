"""The kernel ELF's symbol table: names <-> addresses, and bytes by address.

Every report kswgdb prints names code the way the kernel does (``name+0x1c/0x80``,
what ``%pS`` prints), and every config names a function, so this table is the
first thing loaded. A distribution vmlinux has ~150k symbols in a 590 MB file:
the table is parsed with `struct` straight from the section bytes (pyelftools'
per-symbol objects are too slow for that) and cached in ``~/.cache/kswgdb/``
keyed by path, size and mtime, so the second run starts at once.

Bytes are served from the file's allocated sections, so a function can be
disassembled without a live guest (and later compared with guest memory).
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
import mmap
import os
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from kswgdb.errors import BadInput

#: "code": an untyped (STT_NOTYPE) label in an executable section, such as the
#: entry stubs of an assembly file (Linux's local ``error_entry``, the test
#: kernel's ``isr_common``): it names code, never data.
Kind = Literal["func", "object", "code"]
Bind = Literal["global", "local", "weak"]

_EM_X86_64 = 62
_SHT_SYMTAB, _SHT_NOBITS, _SHT_NOTE = 2, 8, 7
_SHF_ALLOC = 0x2
_SHF_EXECINSTR = 0x4
_STT_NOTYPE = 0
_STT = {1: "object", 2: "func"}
_STB = {0: "local", 1: "global", 2: "weak"}


class SectionHeader(NamedTuple):
    """One ELF64 section header (``Elf64_Shdr``), fields in file order."""

    name: int          # sh_name: offset in the section-name string table
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


def section_headers(data) -> tuple[list[SectionHeader], int]:
    """Every section header of the ELF64 image ``data``, and the name table's index.

    The one raw section-header parser (`SymbolTable`, `raw_symbol_address` and the
    module loader in `kswgdb.symbols.module` all read them from a mapped file).
    """
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if e_shoff == 0:
        return [], e_shstrndx               # no section header table at all
    return [SectionHeader(*struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize))
            for i in range(e_shnum)], e_shstrndx


def c_string(data, table: SectionHeader, offset: int) -> str:
    """The NUL-terminated string at ``offset`` in string-table section ``table``."""
    start = table.offset + offset
    return data[start:data.find(b"\0", start)].decode("utf-8", "replace")


def symbol_entries(data, symtab: SectionHeader):
    """``(st_name, st_info, st_other, st_shndx, st_value, st_size)`` of each ``Elf64_Sym``."""
    raw = data[symtab.offset:symtab.offset + symtab.size]
    return struct.iter_unpack("<IBBHQQ", raw[:len(raw) - len(raw) % 24])
_BIND_RANK = {"global": 0, "weak": 1, "local": 2}
_CACHE_VERSION = 4
_HEX_RE = re.compile(r"0[xX][0-9a-fA-F]+\Z")
#: Suffixes GCC gives the copies it makes of a function (IPA SRA, constant
#: propagation, partial inlining, cold splitting, local calling convention).
_CLONE_KINDS = frozenset({"isra", "constprop", "part", "cold", "lto_priv", "localalias"})


@dataclass(frozen=True, slots=True)
class Symbol:
    """One function or data object from .symtab."""

    name: str
    addr: int
    size: int
    kind: Kind
    bind: Bind

    @property
    def end(self) -> int:
        return self.addr + self.size

    def __contains__(self, addr: int) -> bool:
        return self.addr <= addr < self.addr + max(self.size, 1)

    def __reduce__(self):
        """Pickled as a constructor call: loading a vmlinux's 77,000 symbols from the
        cache takes half the time of the frozen dataclass' field-by-field state."""
        return Symbol, (self.name, self.addr, self.size, self.kind, self.bind)


@dataclass(frozen=True, slots=True)
class Symbolized:
    """An address as symbol+offset; `str()` is the kernel's ``%pS`` format."""

    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.name}+{self.offset:#x}/{self.size:#x}"


@dataclass(frozen=True, slots=True)
class _Region:
    """An allocated section with file contents: where its bytes sit in the file."""

    name: str
    addr: int
    size: int
    file_offset: int


@dataclass
class SymbolTable:
    """Functions and objects of one ELF64 x86-64 file, searchable both ways."""

    path: Path
    elf_type: str
    build_id: str | None
    symbols: list[Symbol]          # functions and objects, sorted by address
    regions: list[_Region]         # allocated sections with bytes, sorted by address

    def __post_init__(self) -> None:
        self._starts = [s.addr for s in self.symbols]
        self._by_name: dict[str, list[Symbol]] = {}
        for sym in self.symbols:
            self._by_name.setdefault(sym.name, []).append(sym)
        self._region_starts = [r.addr for r in self.regions]
        self._map: mmap.mmap | None = None

    # -- loading -----------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, cache: bool = True) -> SymbolTable:
        """Read the table from ``path``, through the on-disk cache when it is fresh."""
        path = Path(path).resolve()
        try:
            st = path.stat()
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        key = (_CACHE_VERSION, str(path), st.st_size, st.st_mtime_ns)
        cached = _cache_read(path, key) if cache else None
        if cached is not None:
            return cached
        table = _parse(path)
        if cache:
            _cache_write(path, key, table)
        return table

    def __getstate__(self) -> dict:
        return {"path": self.path, "elf_type": self.elf_type, "build_id": self.build_id,
                "symbols": self.symbols, "regions": self.regions}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    # -- by name -----------------------------------------------------------------

    def lookup_all(self, name: str) -> list[Symbol]:
        """Every symbol of that name (local statics may repeat), best first."""
        return sorted(self._by_name.get(name, []), key=lambda s: (_BIND_RANK[s.bind], s.addr))

    def lookup(self, name: str, kind: Kind | None = None) -> Symbol:
        """The one symbol meant by ``name``: the global one if several exist."""
        found = [s for s in self.lookup_all(name) if kind is None or s.kind == kind]
        what = "function" if kind == "func" else "object" if kind == "object" else "symbol"
        if not found:
            hint = self._suggest(name, kind)
            raise BadInput(f"no {what} named {name!r} in {self.path.name}{hint}")
        if len(found) > 1 and found[0].bind == "local":
            where = ", ".join(f"{s.addr:#x}" for s in found)
            raise BadInput(f"{name!r} is ambiguous: {len(found)} local symbols at {where}")
        return found[0]

    def function(self, name: str, file_of: Callable[[int], str | None] | None = None
                 ) -> Symbol:
        """The function ``name`` names: ``NAME``, ``NAME@0xADDR``, ``NAME@FILE`` (with
        ``file_of``, an address's source file) or ``0xADDR`` (its start). A static
        name several files define is refused with the candidates and how to pick one;
        a missing name with its compiler clones (``NAME.isra.0``) if any."""
        if _HEX_RE.match(name):
            return self._function_at(int(name, 16), name)
        base, _, pick = name.partition("@")
        found = [s for s in self.lookup_all(base) if s.kind == "func"]
        if not found:
            clones = self._clones(base)
            if clones:
                raise BadInput(f"no function named {base!r} in {self.path.name}, but the "
                               f"compiler made {', '.join(clones)} from it: use "
                               f"fn={clones[0]}")
            return self.lookup(base, "func")            # the "did you mean" message
        if pick:
            chosen = self._pick(base, found, pick, file_of)
            if len(chosen) == 1:
                return chosen[0]
            found = chosen or found
        elif len(found) == 1 or found[0].bind != "local":
            return found[0]
        raise BadInput(self._ambiguous(base, found, file_of))

    def _function_at(self, addr: int, text: str) -> Symbol:
        sym = self.containing(addr, "func")
        if sym is None:
            raise BadInput(f"no function at {text} in {self.path.name}")
        if sym.addr != addr:
            raise BadInput(f"{text} is inside {sym.name} (+{addr - sym.addr:#x}): give the "
                           f"function's start, {sym.addr:#x}")
        return sym

    def _pick(self, base: str, found: list[Symbol], pick: str,
              file_of: Callable[[int], str | None] | None) -> list[Symbol]:
        if _HEX_RE.match(pick):
            chosen = [s for s in found if s.addr == int(pick, 16)]
            if not chosen:
                raise BadInput(f"no function {base} at {pick}: "
                               + self._ambiguous(base, found, file_of, head=False))
            return chosen
        if file_of is None:
            raise BadInput(f"fn={base}@{pick}: picking by source file needs DWARF; "
                           "pick by address, fn=NAME@0xADDR")
        chosen = [s for s in found if (file_of(s.addr) or "").endswith(pick)]
        if not chosen:
            raise BadInput(f"no function {base} in a file ending {pick!r}: "
                           + self._ambiguous(base, found, file_of, head=False))
        return chosen

    def _ambiguous(self, base: str, found: list[Symbol],
                   file_of: Callable[[int], str | None] | None, head: bool = True) -> str:
        def where(s: Symbol) -> str:
            f = file_of(s.addr) if file_of is not None else None
            return f"{base}@{s.addr:#x}" + (f" ({f})" if f else "")

        listed = ", ".join(where(s) for s in found)
        start = f"{base!r} is ambiguous: {len(found)} static functions: " if head else \
            "candidates: "
        return f"{start}{listed}; pick one with fn=NAME@0xADDR, fn=NAME@FILE or fn=0xADDR"

    def _clones(self, base: str) -> list[str]:
        """GCC's clones of ``base``: ``base.isra.0``, ``base.constprop.0``, ``base.part.0``..."""
        prefix = base + "."
        return sorted(n for n in self._by_name if n.startswith(prefix)
                      and n[len(prefix):].split(".")[0] in _CLONE_KINDS)

    def address_of(self, name: str) -> int:
        """Address of a global variable or function (e.g. ``__stack_chk_guard``)."""
        return self.lookup(name).addr

    def names(self, kind: Kind | None = None) -> list[str]:
        return sorted({s.name for s in self.symbols if kind is None or s.kind == kind})

    def _suggest(self, name: str, kind: Kind | None) -> str:
        close = difflib.get_close_matches(name, self.names(kind), n=3, cutoff=0.6)
        return f" (did you mean {', '.join(close)}?)" if close else ""

    # -- by address --------------------------------------------------------------

    def containing(self, addr: int, kind: Kind | None = None) -> Symbol | None:
        """The sized symbol whose [start, start+size) holds ``addr``, preferring functions."""
        i = bisect.bisect_right(self._starts, addr)
        best: Symbol | None = None
        # Aliases share a start and objects can nest: look back over a few candidates.
        for j in range(i - 1, max(i - 64, 0) - 1, -1):
            sym = self.symbols[j]
            if (kind is None or sym.kind == kind) and sym.addr <= addr < sym.end:
                rank = (sym.kind != "func", _BIND_RANK[sym.bind])
                if best is None or rank < (best.kind != "func", _BIND_RANK[best.bind]):
                    best = sym
            if best is not None and sym.addr < best.addr:
                break
        return best

    def symbolize(self, addr: int) -> Symbolized | None:
        """``addr`` as name+offset/size, like the kernel prints it; None if unknown."""
        sym = self.containing(addr)
        if sym is None:
            sym = self._nearest_unsized(addr)
            if sym is None:
                return None
            i = bisect.bisect_right(self._starts, addr)
            size = (self._starts[i] if i < len(self._starts) else addr + 1) - sym.addr
            return Symbolized(sym.name, addr - sym.addr, size)
        return Symbolized(sym.name, addr - sym.addr, sym.size)

    def code_extent(self, addr: int) -> tuple[Symbol, int] | None:
        """(the function or code label ``addr`` is in, its end): a known start to decode from.

        A sized function or label gives its own end; an unsized assembly label
        (``isr_table``, ``entry_SYSCALL_64``) runs to the next symbol.
        """
        sym = self.containing(addr, "func") or self.containing(addr, "code")
        if sym is not None:
            return sym, sym.end
        sym = self._nearest_unsized(addr)
        if sym is None or sym.kind not in ("func", "code"):
            return None
        i = bisect.bisect_right(self._starts, addr)
        region = self._region_index(addr)
        end = self._starts[i] if i < len(self._starts) else addr + 1
        if region is not None:
            end = min(end, self.regions[region].addr + self.regions[region].size)
        return sym, end

    def _nearest_unsized(self, addr: int) -> Symbol | None:
        """A zero-size label just before ``addr`` (assembly entry points have no size)."""
        i = bisect.bisect_right(self._starts, addr)
        if i == 0:
            return None
        sym = self.symbols[i - 1]
        if sym.size == 0 and self._region_index(addr) == self._region_index(sym.addr) is not None:
            return sym
        return None

    # -- bytes -------------------------------------------------------------------

    def read_bytes(self, addr: int, n: int) -> bytes:
        """``n`` bytes at ``addr`` from the file's loaded image (text, rodata, data)."""
        i = self._region_index(addr)
        if i is None:
            raise BadInput(f"{addr:#x} is not in a loaded section of {self.path.name}")
        region = self.regions[i]
        if addr + n > region.addr + region.size:
            raise BadInput(f"{addr:#x}+{n} runs past the end of {region.name}")
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start = region.file_offset + (addr - region.addr)
        return bytes(self._map[start:start + n])

    def section_name(self, addr: int) -> str | None:
        """The name of the loaded section that holds ``addr`` (None: in none)."""
        i = self._region_index(addr)
        return None if i is None else self.regions[i].name

    def _region_index(self, addr: int) -> int | None:
        i = bisect.bisect_right(self._region_starts, addr) - 1
        if i >= 0 and addr < self.regions[i].addr + self.regions[i].size:
            return i
        return None


# -- parsing -----------------------------------------------------------------------

def _parse(path: Path) -> SymbolTable:
    """Check the header, then pull symbols, sections and the build-id out of the file."""
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError:
        raise BadInput(f"{path} is not an ELF file (it is empty)") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        return _parse_mapped(path, data)
    except (struct.error, IndexError, ValueError):
        raise BadInput(f"{path} is a malformed ELF file (truncated headers)") from None
    finally:
        data.close()


def _parse_mapped(path: Path, data: mmap.mmap) -> SymbolTable:
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise BadInput(f"{path} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise BadInput(f"{path} has the wrong architecture: need ELF64 little-endian x86-64")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != _EM_X86_64:
        raise BadInput(f"{path} has the wrong architecture (e_machine {e_machine}, need x86-64)")
    if e_type == 1:
        raise BadInput(f"{path} is a relocatable object (.o/.ko): link it first")
    sections, e_shstrndx = section_headers(data)
    if not sections:
        raise BadInput(f"{path} has no section headers, so no symbols")
    shstr = sections[e_shstrndx]
    regions = sorted(
        (_Region(c_string(data, shstr, sh[0]), sh[3], sh[5], sh[4]) for sh in sections
         if sh[2] & _SHF_ALLOC and sh[1] != _SHT_NOBITS and sh[5] and sh[3]),
        key=lambda r: r.addr,
    )
    symtab = next((sh for sh in sections if sh[1] == _SHT_SYMTAB), None)
    if symtab is None:
        raise BadInput(f"{path} has no symbols (.symtab missing: stripped?)")
    strtab = sections[symtab[6]]
    code_sections = {i for i, sh in enumerate(sections) if sh[2] & _SHF_EXECINSTR}
    symbols = _read_symbols(data, symtab, strtab, code_sections)
    if not symbols:
        raise BadInput(f"{path} has no function or object symbols")
    build_id = next((bid for sh in sections if sh[1] == _SHT_NOTE
                     for bid in [_build_id(data[sh[4]:sh[4] + sh[5]])] if bid), None)
    elf_type = {2: "exec", 3: "dyn"}.get(e_type, str(e_type))
    return SymbolTable(path, elf_type, build_id, symbols, regions)


def _read_symbols(data: mmap.mmap, symtab: SectionHeader, strtab: SectionHeader,
                  code_sections: frozenset[int] | set[int] = frozenset()) -> list[Symbol]:
    strings = data[strtab.offset:strtab.offset + strtab.size]
    out: list[Symbol] = []
    for st_name, st_info, _other, st_shndx, st_value, st_size in symbol_entries(data, symtab):
        kind = _STT.get(st_info & 0xF)
        if kind is None and st_info & 0xF == _STT_NOTYPE and st_shndx in code_sections:
            kind = "code"
        bind = _STB.get(st_info >> 4)
        if kind is None or bind is None or st_shndx == 0 or not st_name:
            continue
        name = strings[st_name:strings.find(b"\0", st_name)].decode("utf-8", "replace")
        out.append(Symbol(name, st_value, st_size, kind, bind))  # type: ignore[arg-type]
    out.sort(key=lambda s: (s.addr, s.kind != "func", _BIND_RANK[s.bind], s.name))
    return out


def raw_symbol_address(path: str | os.PathLike[str], name: str) -> int:
    """Value of symbol ``name`` of any type, read straight from the ELF's ``.symtab``.

    For the linker-script symbols (``STT_NOTYPE``, such as Linux's
    ``__end_init_task``) that `SymbolTable` leaves out so that they never name
    code or data. Raises `BadInput` if there is no such symbol.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    try:
        sections, _ = section_headers(data)
        symtab = next((sh for sh in sections if sh[1] == _SHT_SYMTAB), None)
        if symtab is not None:
            strtab = sections[symtab[6]]
            strings = data[strtab[4]:strtab[4] + strtab[5]]
            # The linker merges string tails ("foo" may sit inside "barfoo"): every place
            # the name ends with a NUL is a candidate offset; a symbol must use one exactly.
            wanted = name.encode() + b"\0"
            offsets = set()
            at = strings.find(wanted)
            while at >= 0:
                offsets.add(at)
                at = strings.find(wanted, at + 1)
            for st_name, _i, _o, st_shndx, st_value, _s in (
                    symbol_entries(data, symtab) if offsets else ()):
                if st_name in offsets and st_shndx != 0:
                    return st_value
    except (struct.error, IndexError, ValueError):
        raise BadInput(f"{path} is a malformed ELF file") from None
    finally:
        data.close()
    raise BadInput(f"no symbol {name!r} in {path.name}")


def _build_id(note: bytes) -> str | None:
    """The NT_GNU_BUILD_ID descriptor, as hex, from one SHT_NOTE section."""
    pos = 0
    while pos + 12 <= len(note):
        namesz, descsz, ntype = struct.unpack_from("<III", note, pos)
        name_end = pos + 12 + ((namesz + 3) & ~3)
        desc = note[name_end:name_end + descsz]
        if ntype == 3 and note[pos + 12:pos + 12 + namesz].rstrip(b"\0") == b"GNU":
            return desc.hex()
        pos = name_end + ((descsz + 3) & ~3)
    return None


# -- cache -------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$KSWGDB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kswgdb``, else ``~/.cache/kswgdb``."""
    if os.environ.get("KSWGDB_CACHE_DIR"):
        return Path(os.environ["KSWGDB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "kswgdb"


def _cache_file(path: Path) -> Path:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return cache_dir() / f"symtab-{path.name}-{digest}.pickle"


def _cache_read(path: Path, key: tuple) -> SymbolTable | None:
    """The cached table if its key matches; any problem just means 'parse again'."""
    try:
        with open(_cache_file(path), "rb") as f:
            stored_key, table = pickle.load(f)
    except Exception:
        return None
    return table if stored_key == key and isinstance(table, SymbolTable) else None


def _cache_write(path: Path, key: tuple, table: SymbolTable) -> None:
    """Write atomically; a read-only home must not stop the tool."""
    target = _cache_file(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump((key, table), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
    except OSError:
        pass
