"""KASLR: the slide found through the stub (fake target), and the relocated view of symbols.

The kernel here is a hand-made symbol table over a small file: ``entry`` (the
kernel's x86_64_start_kernel) and ``victim`` in the kernel map, ``phys_base``
data, and a per-CPU symbol at a small offset that must never move.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kswgdb.symbols.elf import Symbol, SymbolTable, _Region
from kswgdb.symbols.program import Program
from kswgdb.symbols.slide import SLIDE_ALIGN, slid_program
from kswgdb.watch.kaslr import (
    candidate_slides,
    find_slide,
    place_kernel,
    placement_ending,
    slide_at,
    slide_fields,
    slide_spec,
)
from kswgdb.watch.spec import ArmSpec, GuardSource
from tests.unit.fake_target import Event, FakeTarget

TEXT = 0xFFFF_FFFF_8100_0000
ENTRY = TEXT + 0x100
VICTIM = TEXT + 0x200
PHYS_BASE = TEXT + 0x1000          # in .data
PERCPU_SYM = 0x1_2340              # a per-CPU offset: never slid
CODE = bytes(i % 251 for i in range(0x400))


@pytest.fixture
def kernel(tmp_path: Path) -> Program:
    path = tmp_path / "vmlinux"
    path.write_bytes(CODE + bytes(0x1000 - len(CODE)) + bytes(8))
    symbols = [
        Symbol("current_task", PERCPU_SYM, 8, "object", "global"),
        Symbol("x86_64_start_kernel", ENTRY, 0x80, "func", "global"),
        Symbol("victim", VICTIM, 0x100, "func", "global"),
        Symbol("phys_base", PHYS_BASE, 8, "object", "global"),
    ]
    regions = [_Region(".text", TEXT, len(CODE), 0), _Region(".data", PHYS_BASE, 8, 0x1000)]
    return Program(SymbolTable(path, "exec", None, symbols, regions))


STORE_AT = TEXT + 0x40        # the kernel's first store at its virtual address ends here
INIT_STACK_TOP = TEXT + 0x8000


def _guest_at(fake: FakeTarget, slide: int, phys_base: int = 0x200_0000) -> None:
    """The kernel's image in guest memory at ``slide``; its first kernel-map write is a
    push on its init stack, from the code at ``STORE_AT``."""
    fake.write(TEXT + slide, CODE)
    fake.write(PHYS_BASE + slide, phys_base.to_bytes(8, "little"))
    fake.script.append(Event("write", addr=INIT_STACK_TOP - 8 + slide, data=b"\x01" * 8,
                             pc=STORE_AT + slide))


def test_relocated_view_moves_kernel_addresses_and_not_per_cpu_ones(kernel: Program) -> None:
    slide = 0x3A00_0000
    view = slid_program(kernel, slide)
    assert view.function("victim").addr == VICTIM + slide
    assert view.global_address("phys_base") == PHYS_BASE + slide
    assert view.global_address("current_task") == PERCPU_SYM          # %gs offset
    assert str(view.symbolize(VICTIM + slide + 0x1C)) == "victim+0x1c/0x100"
    assert view.symbolize(VICTIM + 0x1C) is None                      # the file's address
    assert view.symtab.containing(VICTIM + slide + 4, "func").addr == VICTIM + slide
    assert view.symtab.read_bytes(VICTIM + slide, 4) == kernel.symtab.read_bytes(VICTIM, 4)
    assert [r.addr for r in view.symtab.regions] == [TEXT + slide, PHYS_BASE + slide]
    assert slid_program(kernel, 0) is kernel
    assert slid_program(view, 0x20_0000).function("victim").addr == VICTIM + 0x20_0000


def test_candidate_slides_keep_the_image_in_the_kernel_map(kernel: Program) -> None:
    slides = candidate_slides(kernel)
    assert slides[0] == 0 and slides.step == SLIDE_ALIGN
    assert PHYS_BASE + 8 + slides[-1] <= 0xFFFF_FFFF_C000_0000
    assert len(slides) > 400


@pytest.mark.parametrize("slide", [0, 0x200_0000, 0x31E0_0000])
def test_slide_found_at_the_first_kernel_map_write_and_the_watch_removed(
        kernel: Program, slide: int) -> None:
    fake = FakeTarget()
    _guest_at(fake, slide, phys_base=(0x380_0000 - slide) & (1 << 64) - 1)
    search = find_slide(fake, kernel, "tcg", deadline=float("inf"))
    assert search.slide is not None and search.ending == ""
    assert search.slide.virtual == slide and search.slide.found_by == "first kernel-map write"
    assert search.slide.physical == 0x380_0000        # phys_base + slide, signed
    assert fake.max_watchpoints_seen == 1             # one watch over the kernel map
    assert fake.watchpoints == set() and fake.breakpoints == set()   # nothing stays
    assert fake.resumes == 1


def test_the_stop_code_must_name_one_slot(kernel: Program) -> None:
    slides = candidate_slides(kernel)
    code = kernel.symtab.read_bytes(STORE_AT, 16)
    assert slide_at(kernel, STORE_AT + 0x600_0000, code, slides) == 0x600_0000
    assert slide_at(kernel, STORE_AT + 0x600_0000, b"\xcc" * 16, slides) is None
    assert slide_at(kernel, STORE_AT + 0x600_0000, code, range(0, 0x600_0000, 0x200_0000)) \
        is None                                     # not a slot the kernel map allows


def test_a_kernel_whose_bytes_differ_is_a_mismatch_not_a_slide(kernel: Program) -> None:
    fake = FakeTarget()
    _guest_at(fake, 0x400_0000)
    fake.write(STORE_AT + 0x400_0000, b"\xcc" * 4)
    placement = place_kernel(fake, kernel, "linux", "tcg", deadline=float("inf"))
    assert not placement.found and placement.search.ending == "mismatch"
    assert "do not match the running kernel" in placement.unarmed_reason()
    assert placement.program is kernel
    ending = placement_ending(placement, [])
    assert ending is not None and ending.reason == "mismatch"
    # The stop's code found, but the entry function is another kernel's.
    fake = FakeTarget()
    _guest_at(fake, 0x400_0000)
    fake.write(ENTRY + 0x400_0000, b"\xcc" * 4)
    placement = place_kernel(fake, kernel, "linux", "tcg", deadline=float("inf"))
    assert "x86_64_start_kernel at 0xffffffff85000100 holds cc" in placement.unarmed_reason()


def test_guest_ending_before_the_entry_names_the_symbols(kernel: Program) -> None:
    fake = FakeTarget()               # empty script: the guest exits at once
    placement = place_kernel(fake, kernel, "linux", "tcg", deadline=float("inf"))
    assert placement.search.ending == "exit"
    assert "does the symbol file match" in placement.unarmed_reason()
    assert placement_ending(placement, []).reason == "exit"


def test_kvm_is_refused_in_words(kernel: Program) -> None:
    from kswgdb.errors import InfraError
    with pytest.raises(InfraError, match="only found under TCG"):
        find_slide(FakeTarget(), kernel, "kvm", deadline=float("inf"))


def test_test_kernel_needs_no_search(kernel: Program) -> None:
    fake = FakeTarget()
    placement = place_kernel(fake, kernel, "kswtest", "tcg", deadline=float("inf"))
    assert placement.found and placement.program is kernel and fake.resumes == 0
    assert slide_fields(placement) == {"kaslr_slide": 0, "kaslr_found_by": "no KASLR"}
    assert placement_ending(placement, []) is None


def test_specs_move_with_the_slide() -> None:
    spec = ArmSpec(text="fn=victim fo=0x10", func="victim", func_addr=VICTIM, func_size=0x100,
                   probe_addr=VICTIM + 0x14, cfa_offset=0x30, mode="canary",
                   exits=((VICTIM + 0x80, "rsp", 0x10),), check_ends=(VICTIM + 0x77,),
                   guard=GuardSource("gs", offset=0x28))
    moved = slide_spec(spec, 0x200_0000)
    assert moved.check_ends == (VICTIM + 0x77 + 0x200_0000,)     # the canary check's reads
    assert (moved.func_addr, moved.probe_addr) == (VICTIM + 0x200_0000, VICTIM + 0x14 + 0x200_0000)
    assert moved.exits == ((VICTIM + 0x80 + 0x200_0000, "rsp", 0x10),)
    assert moved.guard == spec.guard              # %gs:0x28 does not move
    glob = slide_spec(ArmSpec(text="", func="f", func_addr=0, func_size=0, probe_addr=0,
                              cfa_offset=0, mode="canary", guard=GuardSource("global", addr=8)),
                      0x20_0000)
    assert glob.guard.addr == 8 + 0x20_0000
    assert slide_spec(spec, 0) is spec


def test_poll_hints_map_the_kernel_image_at_both_slides(kernel: Program) -> None:
    from kswgdb.symbols.slide import KernelSlide
    from kswgdb.watch.kernelmap import kernel_map
    slide = KernelSlide(0x3000_0000, 0x360_0000, "first kernel-map write")
    kmap = kernel_map("linux", slid_program(kernel, slide.virtual), slide)
    assert kmap is not None and "KASLR slide +0x30000000" in kmap.what
    phys = (VICTIM - 0xFFFF_FFFF_8000_0000) + 0x360_0000       # victim's physical byte
    assert kmap.virtual_of(phys + 8) == VICTIM + 0x3000_0000 + 8
    assert kmap.physical_of(PHYS_BASE + 0x3000_0000) == phys - VICTIM + PHYS_BASE
    assert kmap.virtual_of(0x1000) is None and kmap.physical_of(VICTIM) is None
    assert kernel_map("linux", kernel, KernelSlide(0, None, "not found")) is None
    ident = kernel_map("kswtest", None)
    assert ident is not None and ident.virtual_of(0x11_3000) == 0x11_3000


def test_gdb_is_told_the_slide() -> None:
    from kswgdb.symbols.slide import KernelSlide, gdb_symbols
    assert gdb_symbols("vmlinux", None) == "vmlinux"
    assert gdb_symbols("vmlinux", KernelSlide(0, 0, "stopped")) == "vmlinux"
    assert gdb_symbols("vmlinux", KernelSlide(0x200000, 0, "stopped")) == \
        "-ex 'symbol-file -o 0x200000 vmlinux'"

