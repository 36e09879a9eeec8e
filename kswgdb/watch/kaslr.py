"""Find a Linux guest's KASLR slide from outside, before any probe is armed.

kswgdb starts QEMU paused at reset, where the kernel is not even decompressed:
its slide does not exist yet. The decompressor picks it, moves the image by a
multiple of 2 MiB, fixes its absolute references and jumps to ``startup_64`` at
the *physical* address; everything up to the switch to the kernel's own page
tables runs identity-mapped, where no virtual probe of kswgdb could fire anyway,
KASLR or not. Then ``secondary_startup_64`` jumps to its virtual address, loads
the init stack and pushes on it, before any C code (``early_setup_idt``,
``x86_64_start_kernel``) runs there.

So the search is one write watchpoint over the whole kernel map (1 GiB at
``__START_KERNEL_map``), inserted at reset: nothing touches those addresses
until the kernel's first write at its virtual addresses stops the guest. The
code at that stop names the slide: exactly one 2 MiB slot of the file has the
same bytes at ``pc - slide`` (`slide_at`). The watchpoint goes before the
engine arms its probes at the guest's addresses. No help from the guest, no
``nokaslr``, and ``nokaslr`` is simply slide 0. The entry function's bytes at
the slid address are compared with the file's too: another kernel than the
symbol file gives "symbols do not match", not a wrong slide. The physical slide
is read from the kernel's ``phys_base`` (set by ``__startup_64`` before this).

Why one watchpoint and not a breakpoint at every slot (the first design): about
the same QEMU CPU time on Debian's kernel (bench/kaslr_search.py), but 2 packets
instead of ~970, a cost that does not grow with the slots (TCG compares every
breakpoint at every translation-block lookup; a watchpoint costs only on the
pages it covers, which nothing touches before the stop), and no dependence on
which function the kernel enters first.

KVM's debug registers cannot watch 1 GiB, and a software breakpoint is written
as ``int3`` through page tables that do not map these addresses at reset: the
search is TCG-only and `find_slide` says so (no KVM on this project's machines
boots a Debian kernel).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from kswgdb.errors import InfraError, KswError
from kswgdb.symbols.program import Program
from kswgdb.symbols.slide import (
    KERNEL_MAP_END,
    KERNEL_MAP_START,
    SLIDE_ALIGN,
    KernelSlide,
    slid_program,
)
from kswgdb.watch.engine import EngineResult
from kswgdb.watch.spec import ArmSpec, GuardSource
from kswgdb.watch.target import Target

#: The first C function Linux runs at its virtual address, then a fallback.
ENTRY_FUNCTIONS = ("x86_64_start_kernel", "start_kernel")
#: Bytes compared with the file at the stop (its PC) and at the entry function.
CHECK_BYTES = 16
#: The search's one write watchpoint covers the whole kernel map.
MAP_LENGTH = KERNEL_MAP_END - KERNEL_MAP_START


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


def slide_at(program: Program, pc: int, code: bytes, slides: range) -> int | None:
    """The one slide under which the file has the guest's ``code`` at ``pc`` (None: no
    slide or several do): the kernel's own bytes name where it runs."""
    found = []
    for slide in slides:
        try:
            if program.symtab.read_bytes(pc - slide, len(code)) == code:
                found.append(slide)
        except KswError:
            continue
    return found[0] if len(found) == 1 else None


def find_slide(target: Target, program: Program, accel: str, deadline: float,
               should_stop: Callable[[], bool] | None = None,
               poll: float = 0.25) -> SlideSearch:
    """Run the paused guest until the kernel first writes at a kernel-map address and
    return the slide (see module doc). ``program`` is the file's view. Leaves the guest
    stopped there with the search's watchpoint removed (queued on the target)."""
    started = time.monotonic()
    if accel != "tcg":
        raise InfraError(f"a Linux guest under {accel}: the KASLR slide is only found "
                         "under TCG (use --accel tcg)")
    slides = candidate_slides(program)
    target.set_watchpoint(KERNEL_MAP_START, MAP_LENGTH)
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
        if stop.watch_addr is not None:
            break
        target.resume()     # not ours (cannot happen at boot): carry on
    target.clear_watchpoint(KERNEL_MAP_START, MAP_LENGTH)
    seconds = time.monotonic() - started
    read_through = getattr(target, "read_through", None)
    if read_through is not None:
        read_through(stop.thread)   # the booting vCPU's page tables map the kernel
    code = target.read(stop.pc, CHECK_BYTES)
    slide = slide_at(program, stop.pc, code, slides)
    name, entry = entry_function(program)
    if slide is None:
        return SlideSearch(None, "mismatch", seconds=seconds, detail=(
            f"the kernel's first write at its virtual addresses came from {stop.pc:#x} "
            f"({code.hex()}), code found at no single KASLR slot of {program.path.name}: "
            "the symbols do not match the running kernel"))
    want = program.symtab.read_bytes(entry, CHECK_BYTES)
    got = target.read(entry + slide, CHECK_BYTES)
    if got != want:
        return SlideSearch(None, "mismatch", seconds=seconds, detail=(
            f"the guest's {name} at {entry + slide:#x} holds {got.hex()}, "
            f"{program.path.name} has {want.hex()}: the symbols do not match the running "
            "kernel"))
    return SlideSearch(KernelSlide(slide, _physical_slide(target, program, slide),
                                   "first kernel-map write"), seconds=seconds)


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
                   check_ends=tuple(addr + slide for addr in spec.check_ends), guard=guard)




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
