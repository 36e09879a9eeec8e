"""Reading guest physical memory without the gdbstub: the sources a poll samples.

Two kinds, chosen from QEMU's memory map (`kswgdb.poll.memmap`), never by the user:

* DRAM: guest RAM is a shared memory backend (a ``share=on`` file on tmpfs in a
  private 0700 directory) that kswgdb maps into its own address space. A sample
  is a memcpy: the guest never stops, and polling can begin before the guest's
  first instruction.
* Everything else (device registers, ROM, not-yet-mapped BARs): read through
  QEMU's monitor (``xp``), which runs in QEMU's main thread under its global
  lock. A vCPU that touches a device or takes an interrupt meanwhile waits for
  it, and each read is a monitor round trip: MMIO polls briefly pause the guest
  and cannot poll as fast as DRAM polls.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kswgdb.errors import BadInput
from kswgdb.poll.memmap import MapRegion, MemoryMap

#: Largest span read through QEMU per sample (each read holds QEMU's global lock).
MAX_QEMU_READ = 4096


class Source(Protocol):
    """Something that yields the current bytes of one physical range."""

    kind: str            # "dram" | "mmio"
    pauses_guest: bool
    label: str           # what the memory map calls it ("ram0", "edu-mmio", "unmapped")

    def read(self) -> bytes: ...


class PhysMemory(Protocol):
    """Hands out a `Source` for [addr, addr+length)."""

    def source(self, addr: int, length: int) -> Source: ...


@dataclass
class BufferSource:
    """A slice of a mapped buffer (the shared RAM file, or a bytearray in tests)."""

    view: memoryview
    offset: int
    length: int
    label: str = "ram"
    kind: str = "dram"
    pauses_guest: bool = False

    def read(self) -> bytes:
        return bytes(self.view[self.offset:self.offset + self.length])


@dataclass
class QemuSource:
    """A range read through QEMU: device registers have side effects QEMU must run."""

    reader: Callable[[int, int], bytes]
    addr: int
    length: int
    label: str = "i/o"
    kind: str = "mmio"
    pauses_guest: bool = True

    def read(self) -> bytes:
        return self.reader(self.addr, self.length)


class BufferMemory:
    """Physical memory backed by one buffer at ``base`` (tests, and the fake in unit tests)."""

    def __init__(self, buffer: bytearray | mmap.mmap, base: int = 0,
                 mmio: dict[int, Callable[[int, int], bytes]] | None = None) -> None:
        self.buffer = buffer
        self.base = base
        self.view = memoryview(buffer)
        self.mmio = mmio or {}

    def source(self, addr: int, length: int) -> Source:
        if addr in self.mmio:
            return QemuSource(self.mmio[addr], addr, length)
        off = addr - self.base
        if off < 0 or off + length > len(self.view):
            raise BadInput(f"physical range [{addr:#x}, {addr + length:#x}) is outside memory")
        return BufferSource(self.view, off, length)


class GuestPhysMemory:
    """A running guest's physical memory: its RAM file mapped, the rest through QEMU."""

    def __init__(self, memory_map: MemoryMap, ram_file: Path, backend: str,
                 qemu_reader: Callable[[int, int], bytes]) -> None:
        self.memory_map = memory_map
        self.backend = backend
        self._reader = qemu_reader
        with open(ram_file, "rb") as fh:
            self._mmap = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
        self.view = memoryview(self._mmap)

    def source(self, addr: int, length: int) -> Source:
        region = self.memory_map.find(addr, length)
        if region is not None and region.name == self.backend and region.kind == "ram":
            off = region.offset + (addr - region.start)
            if off + length > len(self.view):
                raise BadInput(f"pa {addr:#x}: beyond the RAM file ({len(self.view)} bytes)")
            return BufferSource(self.view, off, length, label=region.name)
        spanning = [r for r in self.memory_map.overlapping(addr, length)
                    if r.name == self.backend and r.kind == "ram"]
        if spanning:
            raise BadInput(f"physical range [{addr:#x}, {addr + length:#x}) straddles the "
                           "edge of guest RAM; split it")
        if length > MAX_QEMU_READ:
            raise BadInput(f"physical range [{addr:#x}, {addr + length:#x}) is not RAM; "
                           f"ranges read through QEMU are limited to {MAX_QEMU_READ} bytes")
        label = _label(region, self.memory_map.overlapping(addr, length))
        return QemuSource(self._reader, addr, length, label=label)

    def read_ram(self, addr: int, length: int) -> bytes | None:
        """Bytes of guest RAM at a physical address, or None when it is not RAM."""
        region = self.memory_map.find(addr, length)
        if region is None or region.name != self.backend:
            return None
        off = region.offset + (addr - region.start)
        return bytes(self.view[off:off + length])

    def close(self) -> None:
        self.view.release()
        self._mmap.close()


def _label(region: MapRegion | None, overlapping: list[MapRegion]) -> str:
    if region is not None:
        return f"{region.name} ({region.kind})"
    if overlapping:
        return " + ".join(r.name for r in overlapping)
    return "unmapped at start (e.g. a PCI BAR the guest has not programmed yet)"


_XP_WIDTH = {1: "b", 2: "h", 4: "w", 8: "g"}
_XP_VALUE_RE = re.compile(r"0x([0-9a-fA-F]+)")


def xp_command(addr: int, length: int) -> tuple[str, int]:
    """The HMP ``xp`` command reading [addr, addr+length) with the widest aligned unit."""
    unit = next(u for u in (8, 4, 2, 1) if length % u == 0 and addr % u == 0)
    return f"xp /{length // unit}{_XP_WIDTH[unit]}x {addr:#x}", unit


def parse_xp(output: str, unit: int) -> bytes:
    """Bytes (guest order) from ``xp`` output lines ``ADDR: 0x.. 0x..``."""
    out = bytearray()
    for line in output.splitlines():
        _, colon, rest = line.partition(":")
        if not colon:
            continue
        for m in _XP_VALUE_RE.finditer(rest):
            out += int(m.group(1), 16).to_bytes(unit, "little")
    return bytes(out)
