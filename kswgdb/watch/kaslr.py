"""Find a Linux guest's KASLR slide from outside, before any probe is armed.

kswgdb starts QEMU paused at reset, where the kernel is not even decompressed:
its slide does not exist yet. The decompressor picks it, moves the image by a
multiple of 2 MiB and jumps to ``startup_64`` at the *physical* address, which
switches to the kernel's own page tables and enters C at ``x86_64_start_kernel``
at its final *virtual* address. That function is the first C code that runs at
a virtual address (everything before it runs identity-mapped, where no virtual
probe of kswgdb could fire anyway, KASLR or not).

So a breakpoint is put on ``x86_64_start_kernel + k * 2 MiB`` for every slide
the kernel image range allows (about 480 for Debian's kernel): under TCG a
gdbstub breakpoint is a virtual PC compare that needs no mapping, so these can
be inserted at reset. The one that stops gives the slide; the others go before
the engine arms its probes at the guest's addresses. No help from the guest, no
``nokaslr``, and ``nokaslr`` is simply slide 0. The bytes at the stop are
compared with the file's: another kernel than the symbol file gives "symbols
do not match", not a wrong slide. The physical slide is read from the
kernel's ``phys_base`` (set by ``__startup_64`` before this point).

KVM inserts a software breakpoint by writing ``int3`` through the guest's page
tables, which do not map these addresses at reset: the search is TCG-only and
`find_slide` says so (no KVM on this project's machines boots a Debian kernel).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from kswgdb.errors import InfraError, KswError
from kswgdb.symbols.program import Program
from kswgdb.symbols.slide import KERNEL_MAP_END, SLIDE_ALIGN, KernelSlide, slid_program
from kswgdb.watch.engine import EngineResult
from kswgdb.watch.spec import ArmSpec, GuardSource
from kswgdb.watch.target import Target

#: The first C function Linux runs at its virtual address, then a fallback.
ENTRY_FUNCTIONS = ("x86_64_start_kernel", "start_kernel")
#: Bytes of the entry function compared with the file at the stop.
CHECK_BYTES = 16


@dataclass
class SlideSearch:
    """What the search found: a slide, or why not (``ending``: exit, deadline, mismatch)."""

    slide: KernelSlide | None
    ending: str = ""                # "" when found; else "exit" | "deadline" | "stopped"
    detail: str = ""                # the exit stop's detail, or the mismatch in words
    exit_status: int | None = None
    seconds: float = 0.0


def entry_function(program: Program) -> tuple[str, int]:
    """The entry function's name and file address; InfraError if the kernel has none."""
    for name in ENTRY_FUNCTIONS:
        try:
            return name, program.function(name).addr
        except KswError:
            continue
    raise InfraError(f"cannot find the KASLR slide: {program.path.name} has none of "
                     f"{', '.join(ENTRY_FUNCTIONS)}")


def candidate_slides(program: Program) -> range:
    """Every slide that keeps the image (up to ``_end``) inside the kernel map."""
    try:
        end = program.linker_symbol("_end")
    except KswError:
        end = max(r.addr + r.size for r in program.symtab.regions)
    return range(0, max(KERNEL_MAP_END - end, 0) + 1, SLIDE_ALIGN)


def find_slide(target: Target, program: Program, accel: str, deadline: float,
               should_stop: Callable[[], bool] | None = None,
               poll: float = 0.25) -> SlideSearch:
    """Run the paused guest to its entry function and return the slide (see module doc).

    ``program`` is the file's view. Leaves the guest stopped at the entry
    function with every search breakpoint removed (queued on the target).
    """
    started = time.monotonic()
    if accel != "tcg":
        raise InfraError(f"a Linux guest under {accel}: the KASLR slide is only found "
                         "under TCG (use --accel tcg)")
    name, entry = entry_function(program)
    points = {entry + slide: slide for slide in candidate_slides(program)}
    for addr in points:
        target.set_breakpoint(addr)
    target.resume()
    while True:
        now = time.monotonic()
        if now >= deadline:
            return SlideSearch(None, "deadline", seconds=now - started)
        if should_stop is not None and should_stop():
            return SlideSearch(None, "stopped", seconds=now - started)
        stop = target.wait_stop(min(poll, max(0.0, deadline - now)))
        if stop is None:
            continue
        if stop.kind == "exit":
            return SlideSearch(None, "exit", detail=stop.detail,
                               exit_status=stop.exit_status,
                               seconds=time.monotonic() - started)
        if stop.pc in points:
            break
        target.resume()     # not ours (cannot happen at boot): carry on
    for addr in points:
        target.clear_breakpoint(addr)
    slide = points[stop.pc]
    seconds = time.monotonic() - started
    want = program.symtab.read_bytes(entry, CHECK_BYTES)
    got = target.read(stop.pc, CHECK_BYTES)
    if got != want:
        return SlideSearch(None, "mismatch", seconds=seconds, detail=(
            f"the guest's {name} at {stop.pc:#x} holds {got.hex()}, {program.path.name} "
            f"has {want.hex()}: the symbols do not match the running kernel"))
    return SlideSearch(KernelSlide(slide, _physical_slide(target, program, slide),
                                   f"stopped at {name}"), seconds=seconds)


def _physical_slide(target: Target, program: Program, slide: int) -> int | None:
    """``phys_base + slide``: how far ``_text`` is from its link-time physical address.

    ``__startup_64`` sets ``phys_base`` to (physical ``_text``) - (virtual ``_text``
    - ``__START_KERNEL_map``), so the physical load address is moved by
    ``phys_base`` plus the virtual slide.
    """
    try:
        at = program.global_address("phys_base") + slide
        moved = (int.from_bytes(target.read(at, 8), "little") + slide) & (1 << 64) - 1
        return moved - (1 << 64) if moved >> 63 else moved
    except KswError:
        return None


def slide_spec(spec: ArmSpec, slide: int) -> ArmSpec:
    """``spec`` (resolved against the file) at the guest's addresses."""
    if slide == 0:
        return spec
    guard = spec.guard
    if guard is not None and guard.kind == "global":
        guard = GuardSource("global", addr=guard.addr + slide, offset=guard.offset)
    return replace(spec, func_addr=spec.func_addr + slide, probe_addr=spec.probe_addr + slide,
                   exits=tuple((addr + slide, base, off) for addr, base, off in spec.exits),
                   guard=guard)




@dataclass
class KernelPlacement:
    """The kernel as this run found it: its slide and the program at guest addresses."""

    slide: KernelSlide
    program: Program
    search: SlideSearch | None = None

    @property
    def found(self) -> bool:
        return self.search is None or self.search.slide is not None

    def specs(self, specs: list[ArmSpec]) -> list[ArmSpec]:
        return [slide_spec(s, self.slide.virtual) for s in specs]

    def unarmed_reason(self, entry: str = ENTRY_FUNCTIONS[0]) -> str | None:
        """Why nothing could be armed, when the kernel was never located."""
        search = self.search
        if search is None or search.slide is not None:
            return None
        if search.ending == "mismatch":
            return search.detail
        if search.ending == "exit":
            return (f"the guest ended before the kernel reached {entry} at any KASLR slot "
                    "(does the symbol file match the kernel?)")
        return f"the run ended before the kernel reached {entry} (KASLR slide unknown)"


def place_kernel(target: Target, program: Program, guest: str, accel: str, deadline: float,
                 should_stop: Callable[[], bool] | None = None) -> KernelPlacement:
    """Where a ``guest`` kernel runs: searched for Linux, the file's own addresses else."""
    if guest != "linux":
        return KernelPlacement(KernelSlide(0, None, "no KASLR"), program)
    search = find_slide(target, program, accel, deadline, should_stop)
    if search.slide is None:
        return KernelPlacement(KernelSlide(0, None, "not found"), program, search)
    return KernelPlacement(search.slide, slid_program(program, search.slide.virtual), search)


def placement_ending(placement: KernelPlacement, hits: list) -> EngineResult | None:
    """How the run ended when the kernel was never located (None: it was, run on)."""
    search = placement.search
    if search is None or search.slide is not None:
        return None
    return EngineResult(search.ending, exit_status=search.exit_status, hits=hits,
                        detail=search.detail)


def slide_fields(placement: KernelPlacement) -> dict:
    """The ``start`` event's words about KASLR."""
    slide = placement.slide
    fields: dict = {"kaslr_slide": slide.virtual, "kaslr_found_by": slide.found_by}
    if slide.physical is not None:
        fields["kaslr_physical_slide"] = slide.physical
    if placement.search is not None:
        fields["kaslr_search_seconds"] = round(placement.search.seconds, 3)
    return fields


__all__ = ["KernelPlacement", "SlideSearch", "candidate_slides", "entry_function",
           "find_slide", "place_kernel", "placement_ending", "slide_fields", "slide_spec"]
