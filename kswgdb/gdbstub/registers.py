"""The register layout the stub describes in its target.xml, and `g` decoding.

QEMU 7.2 x86-64 sends a two-line ``target.xml`` that includes ``i386-64bit.xml``
(feature ``org.gnu.gdb.i386.core`` plus sse and the system registers QEMU adds:
fs_base, gs_base, k_gs_base, cr0, cr2, cr3, cr4, cr8, efer). Register numbers are
implicit (each register is the previous one plus one unless it carries
``regnum``) and the ``g`` reply is every register, in register-number order, at its
``bitsize``, in target byte order; so the layout is computed, never typed in.

QEMU's target.xml uses the ``xi:`` prefix without declaring its namespace, which
``xml.etree`` rejects, so the include element is renamed before parsing.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_XI = re.compile(r"<(/?)xi:include\b")


@dataclass(frozen=True, slots=True)
class Register:
    """One register: `offset` is its byte offset in the ``g`` reply."""

    name: str
    regnum: int
    bitsize: int
    offset: int
    type: str
    group: str
    feature: str

    @property
    def size(self) -> int:
        """Size in bytes (x87 registers are 80 bits = 10 bytes)."""
        return (self.bitsize + 7) // 8


class RegisterLayout:
    """Registers by name and number, with their place in the ``g`` reply."""

    def __init__(self, registers: Iterable[Register], architecture: str = "") -> None:
        self.registers: tuple[Register, ...] = tuple(sorted(registers, key=lambda r: r.regnum))
        self.architecture = architecture
        self.by_name: dict[str, Register] = {r.name: r for r in self.registers}
        self.by_num: dict[int, Register] = {r.regnum: r for r in self.registers}
        # Registers past the end of a (shorter) g reply are absent from decode_g.
        self.g_size = sum(r.size for r in self.registers)
        self._spans = [(r.name, r.offset, r.offset + r.size) for r in self.registers]
        self._span = {span[0]: span for span in self._spans}

    def __getitem__(self, name: str) -> Register:
        return self.by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __len__(self) -> int:
        return len(self.registers)

    @classmethod
    def from_xml(cls, fetch: Callable[[str], str], annex: str = "target.xml") -> RegisterLayout:
        """Build the layout from `annex`, fetching included files through `fetch`.

        `fetch(name)` returns the text of one target-description file (the
        client reads it with ``qXfer:features:read``; tests read recorded files).
        """
        registers: list[Register] = []
        architecture = ""
        state = {"regnum": 0, "offset": 0}

        def walk(name: str, seen: frozenset[str]) -> None:
            nonlocal architecture
            if name in seen:
                raise ValueError(f"target description includes itself: {name}")
            root = ET.fromstring(_XI.sub(r"<\1include", fetch(name)))
            elements = [root] if root.tag == "feature" else list(root)
            for el in elements:
                if el.tag == "architecture" and el.text:
                    architecture = el.text.strip()
                elif el.tag == "include":
                    walk(el.attrib["href"], seen | {name})
                elif el.tag == "feature":
                    _feature(el, registers, state)

        walk(annex, frozenset())
        return cls(registers, architecture)

    def decode_g(self, reply: str, names: Iterable[str] | None = None) -> dict[str, int]:
        """Decode a ``g`` reply into ``{name: value}``.

        `names` restricts the result to the registers wanted (the hot path wants
        four of ~66). Registers the stub marks unavailable (``xx``) or that lie
        past the end of the reply are left out.
        """
        spans = self._spans if names is None else [self._span[n] for n in names]
        if "x" in reply:
            return self._decode_partial(reply, spans)
        raw = bytes.fromhex(reply)
        limit = len(raw)
        from_bytes = int.from_bytes
        return {
            name: from_bytes(raw[start:end], "little") for name, start, end in spans if end <= limit
        }

    def _decode_partial(self, reply: str, spans: list[tuple[str, int, int]]) -> dict[str, int]:
        """Slow path for replies with unavailable (``xx``) registers."""
        out: dict[str, int] = {}
        for name, start, end in spans:
            chunk = reply[2 * start : 2 * end]
            if len(chunk) == 2 * (end - start) and "x" not in chunk:
                out[name] = int.from_bytes(bytes.fromhex(chunk), "little")
        return out

    def encode(self, name: str, value: int) -> str:
        """A value as the hex a ``P``/``G`` packet carries for register `name`."""
        size = self.by_name[name].size
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex()


def _feature(el: ET.Element, registers: list[Register], state: dict[str, int]) -> None:
    """Append the registers of one ``<feature>``, continuing the numbering."""
    feature = el.attrib.get("name", "")
    for reg in el.iter("reg"):
        a = reg.attrib
        regnum = int(a["regnum"]) if "regnum" in a else state["regnum"]
        bitsize = int(a["bitsize"])
        registers.append(
            Register(
                name=a["name"],
                regnum=regnum,
                bitsize=bitsize,
                offset=state["offset"],
                type=a.get("type", "int"),
                group=a.get("group", ""),
                feature=feature,
            )
        )
        state["regnum"] = regnum + 1
        state["offset"] += (bitsize + 7) // 8
