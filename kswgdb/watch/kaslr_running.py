"""The KASLR slide of a Linux kernel that booted long ago (`kswgdb attach`).

`kswgdb.watch.kaslr` finds the slide by running a guest from reset to the
kernel's first write at its virtual addresses. A guest someone else started is
past that point. Its code still names the slide, the same way: kernel code at a
guest PC is found at exactly one 2 MiB slot of the file (`slide_at`). So:

0. when the symbol file has a GNU build-id in an allocated note (Linux's ``.notes``),
   that note is looked for at every KASLR slot (one 20-byte read per slot, about
   500 reads, tens of milliseconds): a build-id is a hash of the whole image, so
   finding it at exactly one slot proves the slide and the symbols at once, with
   no instruction run and no patched code to trip on; else, or if it is nowhere,
1. the PC of every vCPU where the stub stopped it (an idle kernel sits in its
   idle loop, a busy one anywhere in kernel text), then, if none of those is
   kernel code the file has unchanged (a user-space PC, a patched instruction),
2. the PCs of the kernel's next writes into the kernel map, caught with the same
   one write watchpoint over ``[__START_KERNEL_map, +1 GiB)`` the boot-time
   search uses (a booted kernel writes its data there every tick), until one
   names a single slot.

The ``x86_64_start_kernel`` comparison of the boot-time search is no proof here
(init code is freed after boot): the caller checks the build-id in the guest's
memory instead (`kswgdb.symbols.running`). The physical slide comes from
``phys_base`` as at boot.
"""

from __future__ import annotations

import time
from pathlib import Path

from kswgdb.errors import KswError
from kswgdb.symbols.program import Program
from kswgdb.symbols.running import build_id_note
from kswgdb.symbols.slide import KERNEL_MAP_END, KERNEL_MAP_START, KernelSlide, slid_program
from kswgdb.watch.kaslr import (
    CHECK_BYTES,
    MAP_LENGTH,
    KernelPlacement,
    SlideSearch,
    _physical_slide,
    candidate_slides,
    slide_at,
)
from kswgdb.watch.target import Target

#: Kernel-map writes looked at before giving up (each is one stop).
MAX_WRITE_STOPS = 64


def _slide_from(target: Target, program: Program, pc: int, slides: range) -> int | None:
    if not KERNEL_MAP_START <= pc < KERNEL_MAP_END:
        return None
    try:
        code = target.read(pc, CHECK_BYTES)
    except KswError:
        return None
    return slide_at(program, pc, code, slides)


def find_running_slide(target: Target, program: Program, threads: list[int],
                       deadline: float, max_stops: int = MAX_WRITE_STOPS) -> SlideSearch:
    """The slide of a running (stopped-by-the-stub) Linux kernel; see the module doc.

    Leaves the guest stopped with the search's watchpoint removed (queued).
    """
    started = time.monotonic()
    slides = candidate_slides(program)
    note = build_id_note(Path(program.symtab.path))
    if note is not None:
        slide = slide_by_note(target, note, slides, threads)
        if slide is not None:
            return _found(target, program, slide, "build-id", started)
    for thread in threads:
        slide = _slide_from(target, program, target.registers(thread).pc, slides)
        if slide is not None:
            return _found(target, program, slide, "a stopped vCPU's code", started)
    target.set_watchpoint(KERNEL_MAP_START, MAP_LENGTH)
    try:
        for _ in range(max_stops):
            stop = None
            target.resume()
            while stop is None:
                if time.monotonic() >= deadline:
                    target.interrupt()
                    stop = target.wait_stop(5.0)
                    return SlideSearch(None, "deadline", seconds=time.monotonic() - started)
                stop = target.wait_stop(0.25)
            if stop.kind == "exit":
                return SlideSearch(None, "exit", detail=stop.detail,
                                   exit_status=stop.exit_status,
                                   seconds=time.monotonic() - started)
            slide = _slide_from(target, program, stop.pc or 0, slides)
            if slide is not None:
                return _found(target, program, slide, "code of a kernel-map write", started)
    finally:
        target.clear_watchpoint(KERNEL_MAP_START, MAP_LENGTH)
    return SlideSearch(None, "mismatch", seconds=time.monotonic() - started, detail=(
        f"no code the kernel ran in {max_stops} stops is found at a single KASLR slot of "
        f"{program.path.name}: the symbols do not match the running kernel"))


def slide_by_note(target: Target, note: tuple[int, bytes], slides: range,
                  threads: list[int]) -> int | None:
    """The one slot where the guest holds the file's build-id note (None: none or several).

    Read through each vCPU in turn until one maps the kernel image (a vCPU stopped in
    user space under page-table isolation maps almost none of it).
    """
    addr, want = note
    read_through = getattr(target, "read_through", None)
    for thread in threads or [1]:
        if read_through is not None:
            read_through(thread)
        found, readable = [], 0
        for slide in slides:
            try:
                got = target.read(addr + slide, len(want))
            except KswError:
                continue
            readable += 1
            if got == want:
                found.append(slide)
        if readable:
            return found[0] if len(found) == 1 else None
    return None


def _found(target: Target, program: Program, slide: int, how: str,
           started: float) -> SlideSearch:
    return SlideSearch(KernelSlide(slide, _physical_slide(target, program, slide), how),
                       seconds=time.monotonic() - started)


def place_running_kernel(target: Target, program: Program, guest: str, threads: list[int],
                         deadline: float) -> KernelPlacement:
    """Where a booted ``guest`` kernel runs: searched for Linux, the file's own else."""
    if guest != "linux":
        return KernelPlacement(KernelSlide(0, None, "no KASLR"), program)
    search = find_running_slide(target, program, threads, deadline)
    if search.slide is None:
        return KernelPlacement(KernelSlide(0, None, "not found"), program, search)
    return KernelPlacement(search.slide, slid_program(program, search.slide.virtual), search)


__all__ = ["MAX_WRITE_STOPS", "find_running_slide", "place_running_kernel", "slide_by_note"]
