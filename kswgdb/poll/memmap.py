"""The guest's physical address map, from QEMU's own flat view (``info mtree -f``).

Whether an address is DRAM or a device register decides how it can be polled:
DRAM lives in the shared RAM file kswgdb maps, so reading it costs nothing to the
guest; a device register has side effects and exists only inside QEMU, so it
must be read through QEMU. The user should not have to know which is which: QEMU
knows, and says so in the flattened view of its "memory" address space, e.g.::

    0000000000100000-0000000003ffffff (prio 0, ram): ram0 @0000000000100000
    00000000fea00000-00000000feafffff (prio 1, i/o): edu-mmio
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_RE = re.compile(
    r"^\s*(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) \(prio -?\d+, (?P<kind>[a-z/ -]+)\): "
    r"(?P<name>\S+)(?: @(?P<off>[0-9a-f]+))?", re.IGNORECASE)


@dataclass(frozen=True)
class MapRegion:
    """One flat range: [start, end] inclusive, as QEMU prints it."""

    start: int
    end: int
    kind: str           # "ram", "rom", "i/o", "romd", ...
    name: str           # the memory region, e.g. "ram0", "edu-mmio"
    offset: int = 0     # offset of `start` inside that region

    def contains(self, addr: int, length: int) -> bool:
        return self.start <= addr and addr + length - 1 <= self.end


@dataclass(frozen=True)
class MemoryMap:
    """The flat view of the system address space as seen by the CPUs."""

    regions: tuple[MapRegion, ...]

    def find(self, addr: int, length: int) -> MapRegion | None:
        """The one region holding all of [addr, addr+length), or None."""
        for region in self.regions:
            if region.contains(addr, length):
                return region
        return None

    def overlapping(self, addr: int, length: int) -> list[MapRegion]:
        return [r for r in self.regions if r.start < addr + length and addr <= r.end]


def parse_mtree(text: str, address_space: str = "memory") -> MemoryMap:
    """Parse ``info mtree -f``; keep the flat view serving ``address_space``."""
    regions: list[MapRegion] = []
    in_view = False
    for line in text.splitlines():
        if line.startswith("FlatView"):
            if in_view and regions:
                break
            in_view = False
            continue
        if line.strip().startswith("AS ") and f'AS "{address_space}"' in line:
            in_view = True
            continue
        if not in_view:
            continue
        m = _LINE_RE.match(line)
        if m:
            regions.append(MapRegion(
                start=int(m.group("start"), 16), end=int(m.group("end"), 16),
                kind=m.group("kind").strip(), name=m.group("name"),
                offset=int(m.group("off"), 16) if m.group("off") else 0))
    return MemoryMap(tuple(regions))
