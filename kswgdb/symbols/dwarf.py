"""Opening a file's DWARF and the few DIE questions every other module asks.

pyelftools parses DWARF lazily per compile unit, and a distribution vmlinux has
thousands of them: everything here finds the one CU that matters (through
``.debug_aranges`` when present, else the CUs' own ranges) and never walks the
whole tree unless asked for a type by name. Callers get plain answers: a
name, a size, a location expression valid at a given pc.
"""

from __future__ import annotations

import bisect
import io
import mmap
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarf_expr import DWARFExprOp, DWARFExprParser
from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DWARFInfo
from elftools.dwarf.locationlists import BaseAddressEntry as LocBaseAddressEntry
from elftools.dwarf.locationlists import LocationExpr, LocationParser
from elftools.dwarf.ranges import BaseAddressEntry
from elftools.elf.elffile import ELFFile

from kswgdb.errors import BadInput

#: Tags that only qualify another type; sizes and members are those of the target.
_QUALIFIERS = {"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
               "DW_TAG_restrict_type", "DW_TAG_atomic_type"}


@dataclass(frozen=True)
class PcRange:
    """A half-open address range [low, high)."""

    low: int
    high: int

    def __contains__(self, pc: int) -> bool:
        return self.low <= pc < self.high


_UNREAD = object()


class _SectionView(io.RawIOBase):
    """A read-only stream over one section of a mapped file.

    pyelftools copies every debug section into memory when it opens the DWARF
    (about 220 MB of a Debian vmlinux, twice: 0.7 s and 400 MB before the first
    question); reading through a view of the mapped file touches only the pages
    of the compile units a question needs.
    """

    def __init__(self, view: memoryview, start: int, size: int) -> None:
        super().__init__()
        self._view = view
        self._start = start
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        pos = self._pos
        end = self._size if n is None or n < 0 else min(self._size, pos + n)
        if end <= pos:
            return b""
        self._pos = end
        return bytes(self._view[self._start + pos:self._start + end])

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _MappedELFFile(ELFFile):
    """An ELFFile whose plain (uncompressed, unrelocated) debug sections are views of
    the mapped file instead of in-memory copies (`_SectionView`)."""

    def __init__(self, stream, view: memoryview) -> None:
        super().__init__(stream)
        self._view = view

    def _read_dwarf_section(self, section, relocate_dwarf_sections: bool):
        if relocate_dwarf_sections or section.compressed or self.has_phantom_bytes() \
                or section["sh_type"] == "SHT_NOBITS":
            return super()._read_dwarf_section(section, relocate_dwarf_sections)
        return DebugSectionDescriptor(
            stream=_SectionView(self._view, section["sh_offset"], section.data_size),
            name=section.name, global_offset=section["sh_offset"], size=section.data_size,
            address=section["sh_addr"])


class DwarfInfo:
    """The DWARF of one ELF file, opened once and queried by address or name."""

    def __init__(self, path: Path, elf: ELFFile, info: DWARFInfo) -> None:
        self.path = path
        self.elf = elf
        self.info = info
        self.expr = DWARFExprParser(info.structs)
        self._loc_parser: LocationParser | None = None
        self._cu_ranges: list[tuple[int, int, int]] | None = None   # (low, high, cu_offset)
        self._cus: dict[int, CompileUnit] = {}
        self._subprograms: dict[int, list[tuple[PcRange, DIE]]] = {}
        self._aranges: object = _UNREAD     # pyelftools re-parses .debug_aranges per call
        #: Where the parsed ``.debug_aranges`` are kept between processes (None: nowhere).
        self.aranges_store: Path | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> DwarfInfo:
        """Open ``path``; `BadInput` if it has no DWARF (built without -g)."""
        path = Path(path)
        try:
            stream = open(path, "rb")  # noqa: SIM115 -- pyelftools reads lazily from it
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        try:
            try:
                view = memoryview(mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ))
            except (OSError, ValueError):        # not mappable (empty, a pipe)
                view = memoryview(b"")
            elf = _MappedELFFile(stream, view)
            if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
                raise BadInput(f"{path} has no DWARF debug info (build it with -g)")
            # A linked kernel (ET_EXEC) built with --emit-relocs keeps .rela.debug_*
            # sections whose relocations the linker already applied; pyelftools would
            # re-apply millions of them in Python (minutes on a Debian vmlinux).
            relocate = elf["e_type"] == "ET_REL"
            return cls(path, elf, elf.get_dwarf_info(relocate_dwarf_sections=relocate))
        except ELFError as exc:
            stream.close()
            raise BadInput(f"{path}: cannot read DWARF ({exc})") from None
        except BadInput:
            stream.close()
            raise

    def close(self) -> None:
        self.elf.stream.close()

    # -- compile units -----------------------------------------------------------

    def cu_at(self, pc: int) -> CompileUnit | None:
        """The compile unit whose code contains ``pc``."""
        if self._aranges is _UNREAD:
            self._aranges = self._read_aranges()
        aranges = self._aranges
        if aranges is not None:
            begins, ends, offsets = aranges          # type: ignore[misc]
            i = bisect.bisect_right(begins, pc) - 1
            if i >= 0 and pc < ends[i]:
                return self._cu(offsets[i])
        ranges = self._all_cu_ranges()
        i = bisect.bisect_right(ranges, (pc, float("inf"), 0)) - 1
        while i >= 0 and ranges[i][0] <= pc:
            low, high, offset = ranges[i]
            if pc < high:
                return self._cu(offset)
            i -= 1
        return None

    def _read_aranges(self) -> tuple[list[int], list[int], list[int]] | None:
        """``.debug_aranges`` as sorted (begins, ends, CU offsets): from `aranges_store`
        when it holds them (parsing the section costs a Debian vmlinux 0.1 s per
        process), else parsed and stored there."""
        store = self.aranges_store
        if store is not None:
            try:
                return pickle.loads(store.read_bytes())
            except Exception:  # noqa: BLE001 - missing or unreadable: parse again
                pass
        parsed = self.info.get_aranges()
        if parsed is None:
            return None
        entries = sorted((e.begin_addr, e.begin_addr + e.length, e.info_offset)
                         for e in parsed.entries)
        table = ([e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries])
        if store is not None:
            try:
                store.parent.mkdir(parents=True, exist_ok=True)
                tmp = store.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
                os.replace(tmp, store)
            except OSError:
                pass
        return table

    def iter_cus(self):
        """Every compile unit, in file order (slow on a big vmlinux: use sparingly)."""
        for cu in self.info.iter_CUs():
            self._cus.setdefault(cu.cu_offset, cu)
            yield self._cus[cu.cu_offset]

    def _cu(self, offset: int) -> CompileUnit:
        if offset not in self._cus:
            self._cus[offset] = self.info.get_CU_at(offset)
        return self._cus[offset]

    def _all_cu_ranges(self) -> list[tuple[int, int, int]]:
        """Each CU's code ranges from its top DIE, for files without .debug_aranges."""
        if self._cu_ranges is None:
            out = []
            for cu in self.iter_cus():
                for r in self.die_ranges(cu.get_top_DIE()):
                    out.append((r.low, r.high, cu.cu_offset))
            self._cu_ranges = sorted(out)
        return self._cu_ranges

    # -- DIE helpers -------------------------------------------------------------

    def die_ranges(self, die: DIE) -> list[PcRange]:
        """The code ranges of a CU, subprogram or lexical block (low/high_pc or ranges)."""
        attrs = die.attributes
        if "DW_AT_low_pc" in attrs and "DW_AT_high_pc" in attrs:
            low = attrs["DW_AT_low_pc"].value
            high = attrs["DW_AT_high_pc"]
            end = high.value if high.form == "DW_FORM_addr" else low + high.value
            return [PcRange(low, end)]
        if "DW_AT_ranges" in attrs and attrs["DW_AT_ranges"].form != "DW_FORM_rnglistx":
            rl = self.info.range_lists()
            if rl is None:
                return []
            base = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
            base_addr = base.value if base is not None else 0
            out = []
            for entry in rl.get_range_list_at_offset(attrs["DW_AT_ranges"].value, die.cu):
                if isinstance(entry, BaseAddressEntry):
                    base_addr = entry.base_address
                    continue
                absolute = getattr(entry, "is_absolute", False)
                low = entry.begin_offset if absolute else base_addr + entry.begin_offset
                high = entry.end_offset if absolute else base_addr + entry.end_offset
                if high > low:
                    out.append(PcRange(low, high))
            return out
        if "DW_AT_low_pc" in attrs:
            low = attrs["DW_AT_low_pc"].value
            return [PcRange(low, low + 1)]
        return []

    def subprogram_at(self, pc: int) -> DIE | None:
        """The out-of-line function DIE whose code holds ``pc`` (not inlined copies)."""
        cu = self.cu_at(pc)
        if cu is None:
            return None
        if cu.cu_offset not in self._subprograms:
            found = []
            # Out-of-line C functions are children of the CU: walking only those
            # (pyelftools skips each child's subtree by DW_AT_sibling) reads a
            # fraction of a big CU's DIEs.
            for die in cu.get_top_DIE().iter_children():
                if die.tag == "DW_TAG_subprogram":
                    for r in self.die_ranges(die):
                        found.append((r, die))
            self._subprograms[cu.cu_offset] = found
        for r, die in self._subprograms[cu.cu_offset]:
            if pc in r:
                return die
        return None

    def origin(self, die: DIE) -> DIE:
        """The DIE that carries name and type: follow abstract_origin / specification."""
        seen = 0
        while seen < 8:
            for attr in ("DW_AT_abstract_origin", "DW_AT_specification"):
                if attr in die.attributes:
                    die = die.get_DIE_from_attribute(attr)
                    break
            else:
                return die
            seen += 1
        return die

    def name(self, die: DIE) -> str | None:
        attr = self.origin(die).attributes.get("DW_AT_name")
        if attr is None:
            return None
        value = attr.value
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def type_of(self, die: DIE) -> DIE | None:
        """The DIE's DW_AT_type, looking through abstract origins."""
        die = self.origin(die)
        if "DW_AT_type" not in die.attributes:
            return None
        return die.get_DIE_from_attribute("DW_AT_type")

    def strip(self, type_die: DIE | None) -> DIE | None:
        """Remove typedefs and qualifiers (const, volatile, ...)."""
        for _ in range(32):
            if type_die is None or type_die.tag not in _QUALIFIERS:
                return type_die
            type_die = self.type_of(type_die)
        return type_die

    def type_size(self, type_die: DIE | None) -> int | None:
        """Byte size of a type; arrays multiply out their dimensions."""
        t = self.strip(type_die)
        if t is None:
            return None
        if "DW_AT_byte_size" in t.attributes:
            return int(t.attributes["DW_AT_byte_size"].value)
        if t.tag == "DW_TAG_array_type":
            elem = self.type_size(self.type_of(t))
            count = self.array_count(t)
            return None if elem is None or count is None else elem * count
        if t.tag == "DW_TAG_pointer_type":
            return self.info.config.default_address_size
        return None

    def array_count(self, array_die: DIE) -> int | None:
        """Number of elements of an array type (all dimensions multiplied)."""
        total = 1
        dims = [c for c in array_die.iter_children() if c.tag == "DW_TAG_subrange_type"]
        if not dims:
            return None
        for dim in dims:
            attrs = dim.attributes
            if "DW_AT_count" in attrs:
                count = attrs["DW_AT_count"].value
            elif "DW_AT_upper_bound" in attrs:
                lower = attrs["DW_AT_lower_bound"].value if "DW_AT_lower_bound" in attrs else 0
                count = attrs["DW_AT_upper_bound"].value - lower + 1
            else:
                return None
            if not isinstance(count, int):
                return None
            total *= count
        return total

    def type_name(self, type_die: DIE | None) -> str:
        """A C-like spelling of a type, for listings and messages."""
        if type_die is None:
            return "void"
        tag = type_die.tag
        if tag == "DW_TAG_pointer_type":
            return self.type_name(self.type_of(type_die)) + " *"
        if tag == "DW_TAG_array_type":
            count = self.array_count(type_die)
            return f"{self.type_name(self.type_of(type_die))}[{'' if count is None else count}]"
        if tag in ("DW_TAG_const_type", "DW_TAG_volatile_type"):
            qualifier = tag[7:-5]
            inner = self.type_name(self.type_of(type_die))
            return inner if inner.startswith(qualifier + " ") else f"{qualifier} {inner}"
        prefix = {"DW_TAG_structure_type": "struct ", "DW_TAG_union_type": "union ",
                  "DW_TAG_enumeration_type": "enum "}.get(tag, "")
        return prefix + (self.name(type_die) or "?")

    # -- locations ---------------------------------------------------------------

    def location_at(self, die: DIE, pc: int, attr: str = "DW_AT_location"
                    ) -> tuple[list[DWARFExprOp] | None, list[PcRange]]:
        """The location expression of ``die`` valid at ``pc``, and where any is valid.

        A plain expression is valid everywhere (ranges empty). For a location
        list, returns the entry covering pc (or None) and the ranges of the
        entries, so a message can say where the variable does live.
        """
        if attr not in die.attributes:
            return None, []
        if self._loc_parser is None:
            self._loc_parser = LocationParser(self.info.location_lists())
        loc = self._loc_parser.parse_from_attribute(die.attributes[attr], die.cu.header.version,
                                                    die)
        if isinstance(loc, LocationExpr):
            return self.expr.parse_expr(loc.loc_expr), []
        top = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
        base = top.value if top is not None else 0
        hit, ranges = None, []
        for entry in loc:
            if isinstance(entry, LocBaseAddressEntry):
                base = entry.base_address
                continue
            absolute = getattr(entry, "is_absolute", False)
            r = PcRange(entry.begin_offset if absolute else base + entry.begin_offset,
                        entry.end_offset if absolute else base + entry.end_offset)
            ranges.append(r)
            if hit is None and pc in r:
                hit = self.expr.parse_expr(entry.loc_expr)
        return hit, ranges
