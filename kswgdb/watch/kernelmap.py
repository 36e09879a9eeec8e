"""Physical <-> virtual for the guest bytes whose mapping kswgdb knows without a page walk.

A poll watches *physical* memory; its hit suggests the *virtual* address a CPU
store would use, so that a write watchpoint can catch the writer next time. Two
mappings are fixed for the whole run: the test kernel identity-maps its first
4 GiB (docs/contracts.md), and Linux maps its own image linearly at
``_text`` (virtual, moved by the KASLR slide) <-> the physical address the
decompressor chose (moved by the physical slide, `kswgdb.watch.kaslr`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kswgdb.symbols.program import Program
from kswgdb.symbols.slide import KERNEL_MAP_END, KERNEL_MAP_START, KernelSlide

#: The test kernel: physical == virtual below this.
KSWTEST_IDENTITY_LIMIT = 1 << 32


@dataclass(frozen=True)
class KernelMap:
    """One linear range ``[virtual, virtual + size) <-> [physical, physical + size)``."""

    virtual: int
    physical: int
    size: int
    what: str           # how to say it: "identity map", "kernel image, KASLR slide +0x..."

    def virtual_of(self, phys: int) -> int | None:
        off = phys - self.physical
        return self.virtual + off if 0 <= off < self.size else None

    def physical_of(self, virt: int) -> int | None:
        off = virt - self.virtual
        return self.physical + off if 0 <= off < self.size else None


def kernel_map(guest: str, program: Program | None,
               slide: KernelSlide | None = None) -> KernelMap | None:
    """The fixed mapping of ``guest``; ``program`` at the guest's addresses (slid)."""
    if guest == "kswtest":
        return KernelMap(0, 0, KSWTEST_IDENTITY_LIMIT, "identity map")
    if guest != "linux" or program is None or slide is None or slide.physical is None:
        return None
    image = [r for r in program.symtab.regions if KERNEL_MAP_START <= r.addr < KERNEL_MAP_END]
    if not image:
        return None
    start = min(r.addr for r in image)
    end = max(r.addr + r.size for r in image)
    physical = start - slide.virtual - KERNEL_MAP_START + slide.physical
    return KernelMap(start, physical, end - start,
                     f"kernel image, KASLR slide {slide.virtual:+#x}")


__all__ = ["KSWTEST_IDENTITY_LIMIT", "KernelMap", "kernel_map"]
