"""Struct layouts and global variables by name, drgn-style.

The engine reads guest structures itself (``percpu_area[cpu].current->stack``,
``__stack_chk_guard``) instead of hard-coding offsets, so the same code works
when the guest's structures change. Type names are looked up CU by CU, top
level only, and every name seen on the way is remembered: on a big vmlinux
the first lookup pays, the rest are dictionary hits.
"""

from __future__ import annotations

import difflib
import re

from elftools.dwarf.die import DIE

from kswgdb.errors import BadInput
from kswgdb.symbols.dwarf import DwarfInfo
from kswgdb.symbols.elf import SymbolTable

_TYPE_TAGS = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union",
              "DW_TAG_enumeration_type": "enum", "DW_TAG_typedef": "",
              "DW_TAG_base_type": ""}
_PATH_RE = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|0x[0-9a-fA-F]+)\]")


class TypeIndex:
    """Named types and global variables of one program's DWARF."""

    def __init__(self, dwarf: DwarfInfo, symtab: SymbolTable | None = None) -> None:
        self.dwarf = dwarf
        self.symtab = symtab
        self._types: dict[str, DIE] = {}        # "struct task", "task", "u64", ...
        self._vars: dict[str, DIE] = {}
        self._cus = dwarf.iter_cus()
        self._exhausted = False

    # -- lookup ------------------------------------------------------------------

    def find_type(self, name: str) -> DIE:
        """A type by C name: ``task``, ``struct task``, a typedef or a base type."""
        key = " ".join(name.split())
        while key not in self._types and self._scan_next_cu():
            pass
        die = self._types.get(key)
        if die is None:
            close = difflib.get_close_matches(key, list(self._types), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise BadInput(f"no type {key!r} in the DWARF of {self.dwarf.path.name}{hint}")
        return die

    def type_size(self, name: str) -> int:
        size = self.dwarf.type_size(self.find_type(name))
        if size is None:
            raise BadInput(f"type {name!r} has no known size")
        return size

    def member_offset(self, type_name: str, path: str) -> int:
        """Byte offset of ``path`` (``stack``, ``a.b``, ``comm[3]``) inside the type."""
        return self._member(type_name, path)[0]

    def member_size(self, type_name: str, path: str) -> int:
        size = self.dwarf.type_size(self._member(type_name, path)[1])
        if size is None:
            raise BadInput(f"{type_name}.{path} has no known size")
        return size

    def global_address(self, name: str) -> int:
        """Address of a global variable: from the symbol table, else its DWARF DW_OP_addr."""
        if self.symtab is not None and self.symtab.lookup_all(name):
            return self.symtab.lookup(name).addr
        while name not in self._vars and self._scan_next_cu():
            pass
        die = self._vars.get(name)
        if die is not None:
            ops, _ = self.dwarf.location_at(die, 0)
            if ops and ops[0].op_name == "DW_OP_addr":
                return int(ops[0].args[0])
        raise BadInput(f"no global variable {name!r} in {self.dwarf.path.name}")

    # -- internals ---------------------------------------------------------------

    def _member(self, type_name: str, path: str) -> tuple[int, DIE | None]:
        t: DIE | None = self.find_type(type_name)
        offset = 0
        where = type_name
        pos = 0
        path = path.strip()
        while pos < len(path):
            m = _PATH_RE.match(path, pos)
            if m is None or m.end() == pos:
                raise BadInput(f"cannot parse member path {path!r}")
            pos = m.end()
            t = self.dwarf.strip(t)
            if m.group(1):
                member = self._find_member(t, m.group(1), where)
                offset += member[0]
                t = member[1]
                where = f"{where}.{m.group(1)}"
            else:
                if t is None or t.tag != "DW_TAG_array_type":
                    raise BadInput(f"{where} is not an array")
                elem = self.dwarf.type_of(t)
                size = self.dwarf.type_size(elem)
                if size is None:
                    raise BadInput(f"{where} has elements of unknown size")
                offset += int(m.group(2), 0) * size
                t = elem
                where = f"{where}[{m.group(2)}]"
        return offset, t

    def _find_member(self, t: DIE | None, name: str, where: str) -> tuple[int, DIE | None]:
        """A member, looking into anonymous structs/unions as C does."""
        if t is None or t.tag not in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            raise BadInput(f"{where} is not a struct or union")
        if t.attributes.get("DW_AT_declaration"):
            t = self.find_type(f"{_TYPE_TAGS[t.tag]} {self.dwarf.name(t)}")
        names = []
        for child in t.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            child_name = self.dwarf.name(child)
            base = _member_location(child)
            if child_name == name:
                return base, self.dwarf.type_of(child)
            if child_name is None:
                inner = self.dwarf.strip(self.dwarf.type_of(child))
                try:
                    off, typ = self._find_member(inner, name, where)
                except BadInput:
                    continue
                return base + off, typ
            names.append(child_name)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BadInput(f"{where} has no member {name!r}{hint}")

    def _scan_next_cu(self) -> bool:
        """Index the top-level types and variables of one more CU; False when done."""
        if self._exhausted:
            return False
        cu = next(self._cus, None)
        if cu is None:
            self._exhausted = True
            return False
        for die in cu.get_top_DIE().iter_children():
            name = self.dwarf.name(die) if "DW_AT_name" in die.attributes else None
            if name is None:
                continue
            if die.tag in _TYPE_TAGS:
                if die.attributes.get("DW_AT_declaration"):
                    continue
                prefix = _TYPE_TAGS[die.tag]
                self._types.setdefault(f"{prefix} {name}".strip(), die)
                self._types.setdefault(name, die)
            elif die.tag == "DW_TAG_variable" and "DW_AT_location" in die.attributes:
                self._vars.setdefault(name, die)
        return True


def _member_location(member: DIE) -> int:
    attr = member.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return 0
    if isinstance(attr.value, int):
        return attr.value
    # DWARF 2 style: an expression, normally DW_OP_plus_uconst N.
    value = attr.value
    if len(value) >= 2 and value[0] == 0x23:            # DW_OP_plus_uconst, ULEB128 operand
        result, shift = 0, 0
        for byte in value[1:]:
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return result
    raise BadInput(f"member {member.attributes.get('DW_AT_name')} has a computed offset")
