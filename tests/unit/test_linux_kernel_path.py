"""The real-kernel path without a guest: module instructions as the loaded module has
them, gdb's module symbols and its backtrace trimmed at the kernel entry, stack bounds
from ``task->stack``, THREAD_SIZE from the linker symbols, and the image's gdb index step.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kswgdb.gdb.backtrace import GdbUnwinder, add_symbol_file_command
from kswgdb.gdbstub.relay import Frame
from kswgdb.symbols.elf import raw_symbol_address
from kswgdb.symbols.module import load_module, section_of
from kswgdb.symbols.program import Program
from kswgdb.watch.guest import GuestLayout, stack_bounds, task_stack_base
from kswgdb.watch.hits import SourceLine
from kswgdb.watch.layout import _linux_thread_size
from kswgdb.watch.modules import LoadedModule, ModuleSymbolizer, _module_text
from kswgdb.watch.target import Registers, Stop
from tests.unit.fake_target import FakeTarget
from tests.unit.test_linux_modules import _load_build_script

ROOT = Path(__file__).resolve().parents[2]
GUEST_TEXT = 0xffffffffc0201000


# -- module code as loaded ------------------------------------------------------------

@pytest.fixture(scope="module")
def module_ko(tmp_path_factory) -> Path:
    """A relocatable object built like a module: calls out, jumps out, loads a string."""
    d = tmp_path_factory.mktemp("ko")
    (d / "m.c").write_text(
        "extern void ext_hook(void);\nextern int ext_print(const char *s);\n"
        "__attribute__((noinline)) int helper(int x)\n{\n\treturn x * 5;\n}\n"
        "int entry(int x)\n{\n\text_hook();\n\tx = helper(x) + ext_print(\"hello\");\n"
        "\treturn x;\n}\n")
    subprocess.run(["gcc", "-O2", "-g", "-c", "-fno-pic", "-mcmodel=kernel",
                    "-fno-optimize-sibling-calls", "-o", str(d / "m.ko"), str(d / "m.c")],
                   check=True)
    return d / "m.ko"


def _placed(ko: Path) -> tuple[ModuleSymbolizer, LoadedModule]:
    program = load_module(ko)
    entry = program.function("entry")
    delta = GUEST_TEXT - (entry.addr & ~0xFFFFFF)
    mod = LoadedModule("m", program, {section_of(entry.addr): delta})
    sym = ModuleSymbolizer(Program.load(ROOT / "images" / "kswtest.elf"))
    sym.modules.append(mod)
    return sym, mod


def test_module_instructions_name_their_relocated_targets(module_ko: Path) -> None:
    """The .ko holds 0 in every relocated field; the panel shows what the loader puts there."""
    sym, mod = _placed(module_ko)
    code = mod.program.disasm.function("entry").instructions
    texts = [_module_text(mod.program, i.addr, i.text, lambda a: mod.to_guest(a) or a)
             for i in code]
    assert "call ext_hook" in texts, texts
    assert "call ext_print" in texts, texts
    helper_at = mod.to_guest(mod.program.function("helper").addr)
    assert f"call {helper_at:#x} <helper>" in texts, texts      # named, at its guest address
    # The string load names the string it loads instead of showing 0.
    assert any("; .rodata" in t for t in texts), texts
    # No branch reads as going to the instruction right after it (the unrelocated 0).
    for insn, text in zip(code, texts, strict=True):
        assert not text.endswith(hex(mod.to_guest(insn.end))), text
    # The writer's context (what the hit panel shows) goes through the same path.
    store_end = mod.to_guest(code[2].end)
    assert "call ext_hook" in [t for _a, t in sym.writer(store_end, Registers({}))[2]]


def test_module_listing_notes_name_relocated_targets(module_ko: Path) -> None:
    """`kswgdb disasm` on a module function: the note says where a relocated call goes."""
    from kswgdb.symbols.listing import build_listing

    rows = build_listing(load_module(module_ko), "entry").rows
    notes = [(r.insn.mnemonic, r.comment) for r in rows]
    assert ("call", "<ext_hook>") in notes and ("call", "<ext_print>") in notes, notes
    assert ("call", "<helper>") in notes, notes


def test_section_addresses_are_what_add_symbol_file_needs(module_ko: Path) -> None:
    _sym, mod = _placed(module_ko)
    sections = mod.section_addresses()
    assert sections[".text"] == GUEST_TEXT
    assert add_symbol_file_command(mod.program.path, sections) == \
        f"add-symbol-file {mod.program.path} -s .text {GUEST_TEXT:#x}"
    assert add_symbol_file_command("/a b/m.ko", {".text": 1}) == \
        'add-symbol-file "/a b/m.ko" -s .text 0x1'


# -- gdb's backtrace -----------------------------------------------------------------

@dataclass
class _FakeMI:
    sent: list[str]
    pid: int = 4242

    def console(self, text: str) -> str:
        self.sent.append(text)
        return ""


class _FakeTracer:
    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self.mi = _FakeMI([])

    def backtrace(self, client, thread, stop, *, max_frames: int, timeout: float) -> list[Frame]:
        return self.frames


class _Target:
    client = None

    def flush(self) -> None:
        pass


class _Symbols:
    """Kernel functions at 0xffffffff81xxxxxx; entry assembly has no sized symbol."""

    known = {0xffffffff81001000: "vfs_write", 0xffffffff81002000: "do_syscall_64"}

    def __init__(self, modules=()) -> None:
        self.modules = list(modules)

    def function(self, addr: int) -> str | None:
        return next((n for a, n in self.known.items() if a <= addr < a + 0x100), None)

    def symbol(self, addr: int) -> str:
        name = self.function(addr)
        return f"{name}+0x10/0x100" if name else f"{addr:#x}"

    def source(self, addr: int) -> SourceLine | None:
        return None

    def writer(self, pc: int, regs: Registers):
        return pc - 2, "rep stosb byte ptr [rdi], al", ()


def test_gdb_backtrace_ends_at_the_kernel_entry_and_names_inlined_frames() -> None:
    frames = [
        Frame(0, 0xffffffff81001012, "vfs_write", "fs/read_write.c", 582),
        Frame(1, 0xffffffff81002010, "do_syscall_x64", "arch/x86/entry/common.c", 46),
        Frame(2, 0xffffffff81002010, "do_syscall_64", "arch/x86/entry/common.c", 76),
        Frame(3, 0xffffffff81c00126, "entry_SYSCALL_64", "arch/x86/entry/entry_64.S", 121),
        Frame(4, 0x7ffedb8d16b0, None, None, None),           # user registers from here on
        Frame(5, 0x1, "fixed_percpu_data", None, None),
        Frame(6, 0xffffffff81001020, "vfs_write", None, None),
    ]
    unwinder = GdbUnwinder(_Target(), "vmlinux", _Symbols())
    unwinder.tracer = _FakeTracer(frames)
    out = unwinder(Stop("break", pc=0xffffffff81001012, thread=2), Registers({}))
    assert [f.symbol for f in out] == [
        "vfs_write+0x10/0x100", "do_syscall_x64 (inlined)", "do_syscall_64+0x10/0x100",
        "entry_SYSCALL_64 (0xffffffff81c00126)"]
    assert out[0].pc == 0xffffffff81001010          # the store, not the stop after it
    assert out[3].source == SourceLine("arch/x86/entry/entry_64.S", 121)


def test_gdb_is_given_each_placed_module_once(module_ko: Path) -> None:
    _sym, mod = _placed(module_ko)
    tracer = _FakeTracer([Frame(0, GUEST_TEXT + 4, "entry", None, None)])
    unwinder = GdbUnwinder(_Target(), "vmlinux", _Symbols([mod]))
    unwinder.tracer = tracer
    unwinder(Stop("break", pc=GUEST_TEXT + 4, thread=1), Registers({}))
    unwinder(Stop("break", pc=GUEST_TEXT + 4, thread=1), Registers({}))
    assert tracer.mi.sent == [f"add-symbol-file {mod.program.path} -s .text {GUEST_TEXT:#x}"]


# -- task stacks -----------------------------------------------------------------------

LAYOUT = GuestLayout(flavour="linux", current_gs_offset=0x100, task_stack_offset=0x20)
TASK = 0xffff888003a10000


def test_stack_bounds_come_from_task_stack() -> None:
    fake = FakeTarget()
    base = 0xffffc90000400000
    fake.write(TASK + 0x20, struct.pack("<Q", base))
    assert task_stack_base(LAYOUT, TASK, fake.read) == base
    assert stack_bounds(LAYOUT, base + 0x3b70, TASK, fake.read) == (base, base + 0x4000)
    # Not on the task's stack (an IRQ stack): the size-aligned stack around the address.
    irq = 0xffffc90000005f00
    assert stack_bounds(LAYOUT, irq, TASK, fake.read) == (0xffffc90000004000, 0xffffc90000008000)
    # A task whose stack member cannot be read, or no layout: the aligned stack.
    assert task_stack_base(LAYOUT, 0xffff888000000000, fake.read) is None
    assert stack_bounds(GuestLayout(), base + 8) == (base, base + 0x4000)


def test_thread_size_from_the_linker_symbols() -> None:
    class P:
        def __init__(self, syms: dict[str, int]) -> None:
            self.syms = syms

        def linker_symbol(self, name: str) -> int:
            return self.syms[name]

    assert _linux_thread_size(P({"__start_init_task": 0x1000, "__end_init_task": 0x9000})) \
        == 0x8000
    assert _linux_thread_size(P({})) == 16 * 1024
    assert _linux_thread_size(P({"__start_init_task": 0, "__end_init_task": 0x3000})) \
        == 16 * 1024


def test_raw_symbol_address_finds_linker_symbols() -> None:
    """The test kernel's task_stacks is a NOTYPE linker symbol too."""
    elf = ROOT / "images" / "kswtest.elf"
    out = subprocess.run(["readelf", "-sW", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    want = next(int(line.split()[1], 16) for line in out.splitlines()
                if line.split()[-1:] == ["task_stacks"])
    assert raw_symbol_address(elf, "task_stacks") == want


# -- the image's gdb index ---------------------------------------------------------

def test_gdb_index_is_added_once(tmp_path: Path) -> None:
    build = _load_build_script()
    (tmp_path / "k.c").write_text("int kmain(int x) { return x + 1; }\nint main(void) "
                                  "{ return kmain(1); }\n")
    elf = tmp_path / "k"
    subprocess.run(["gcc", "-g", "-O1", "-o", str(elf), str(tmp_path / "k.c")], check=True)
    assert not build.has_section(elf, ".gdb_index")
    build.add_gdb_index(elf)
    assert build.has_section(elf, ".gdb_index")
    stamp = elf.stat().st_mtime_ns
    build.add_gdb_index(elf)
    assert elf.stat().st_mtime_ns == stamp            # already indexed: left alone


def test_module_finder_places_unwatched_modules_for_gdb(module_ko: Path, tmp_path: Path) -> None:
    """A hit in vmlinux with a module frame on its stack: the module is found and given."""
    from kswgdb.watch.modules import ModuleFinder, ModuleLayout, module_files
    from tests.unit.test_linux_modules import LAYOUT, _module, _q

    modules_dir = tmp_path / "mods"
    modules_dir.mkdir()
    shutil.copy(module_ko, modules_dir / "m.ko")
    fake = FakeTarget()
    mod_at = 0x10000
    fake.write(LAYOUT.modules_head, _q(mod_at + LAYOUT.list))
    entry_at = GUEST_TEXT + 0x40
    program = load_module(module_ko)
    entry = program.function("entry")
    _module(fake, mod_at, "m", LAYOUT.modules_head, {"entry": entry_at})
    sym = ModuleSymbolizer(Program.load(ROOT / "images" / "kswtest.elf"))
    finder = ModuleFinder.__new__(ModuleFinder)        # the layout without a vmlinux
    finder.layout, finder.modules, finder.symbolizer, finder.read = (
        LAYOUT, module_files(modules_dir), sym, fake.read)
    assert isinstance(finder.layout, ModuleLayout)
    tracer = _FakeTracer([Frame(0, entry_at + 2, "entry", None, None)])
    unwinder = GdbUnwinder(_Target(), "vmlinux", sym, find_modules=finder)
    unwinder.tracer = tracer
    unwinder(Stop("break", pc=entry_at + 2, thread=1), Registers({}))
    assert [m.name for m in sym.modules] == ["m"]
    text_at = entry_at - (entry.addr - (entry.addr & ~0xFFFFFF))
    assert tracer.mi.sent == [f"add-symbol-file {modules_dir / 'm.ko'} -s .text {text_at:#x}"]
    assert sym.symbol(entry_at).startswith("entry+0x0/") and sym.symbol(entry_at).endswith("[m]")
    unwinder(Stop("break", pc=entry_at + 2, thread=1), Registers({}))
    assert len(sym.modules) == 1 and len(tracer.mi.sent) == 1     # found and given once
