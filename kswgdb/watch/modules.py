"""Watches in Linux kernel modules: found in guest memory, armed when the module loads.

A module's code lands wherever the kernel puts it, so a watch in ``lkdtm.ko``
is resolved twice: once before boot against the ``.ko`` (placeholder addresses,
see `kswgdb.symbols.module`), and again when the module shows up in the
kernel's ``modules`` list. That list is walked in guest memory with
``struct module`` offsets from the vmlinux DWARF; the module's own kallsyms
table (``mod->kallsyms``: relocated ``Elf64_Sym`` entries and their names)
says where each function really is, which gives one delta per code section.
The engine is told about the shifted watch with `Engine.add_spec`.

The hook is a breakpoint on ``do_init_module``: the module is linked into
``modules`` and relocated, and its init function has not run yet, so even a
watch on code the init runs is armed in time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kswgdb.errors import BadInput
from kswgdb.symbols.module import load_module, section_of
from kswgdb.symbols.program import Program
from kswgdb.watch.config import WatchConfig
from kswgdb.watch.resolve import ResolvedWatch, resolve_watch
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.symbolize import ProgramSymbolizer
from kswgdb.watch.target import Registers

ReadFn = Callable[[int, int], bytes]
#: The function the kernel calls once a module is linked in and before its init runs.
LOAD_HOOK = "do_init_module"
MODULE_NAME_LEN = 56
MAX_MODULES = 512
_HEX = re.compile(r"\b0x[0-9a-f]+\b")


@dataclass(frozen=True)
class ModuleLayout:
    """Offsets of the fields walked in guest memory, from the kernel's DWARF."""

    modules_head: int          # &modules (a struct list_head)
    list: int                  # offsetof(struct module, list)
    name: int                  # offsetof(struct module, name)
    kallsyms: int              # offsetof(struct module, kallsyms)
    ks_symtab: int             # offsetof(struct mod_kallsyms, symtab)
    ks_num: int                # offsetof(struct mod_kallsyms, num_symtab)
    ks_strtab: int             # offsetof(struct mod_kallsyms, strtab)

    @classmethod
    def from_program(cls, kernel: Program) -> ModuleLayout:
        return cls(
            modules_head=kernel.global_address("modules"),
            list=kernel.member_offset("struct module", "list"),
            name=kernel.member_offset("struct module", "name"),
            kallsyms=kernel.member_offset("struct module", "kallsyms"),
            ks_symtab=kernel.member_offset("struct mod_kallsyms", "symtab"),
            ks_num=kernel.member_offset("struct mod_kallsyms", "num_symtab"),
            ks_strtab=kernel.member_offset("struct mod_kallsyms", "strtab"),
        )


def loaded_modules(layout: ModuleLayout, read: ReadFn) -> dict[str, int]:
    """Name -> ``struct module *`` of every module on the kernel's ``modules`` list."""
    out: dict[str, int] = {}
    head = layout.modules_head
    node = struct.unpack("<Q", read(head, 8))[0]
    while node != head and len(out) < MAX_MODULES:
        mod = node - layout.list
        raw = read(mod + layout.name, MODULE_NAME_LEN)
        out[raw.split(b"\0", 1)[0].decode("ascii", "replace")] = mod
        node = struct.unpack("<Q", read(node, 8))[0]
    return out


def module_symbols(layout: ModuleLayout, mod: int, read: ReadFn) -> dict[str, int]:
    """Function name -> guest address, from the module's own kallsyms table."""
    ks = struct.unpack("<Q", read(mod + layout.kallsyms, 8))[0]
    symtab, = struct.unpack("<Q", read(ks + layout.ks_symtab, 8))
    num, = struct.unpack("<Q", read(ks + layout.ks_num, 8))
    strtab, = struct.unpack("<Q", read(ks + layout.ks_strtab, 8))
    if not symtab or not strtab or not 0 < num < 1 << 16:
        return {}
    raw = read(symtab, num * 24)
    entries = list(struct.iter_unpack("<IBBHQQ", raw))
    end = max(e[0] for e in entries) + 256
    strings = read(strtab, end)
    out: dict[str, int] = {}
    for st_name, st_info, _other, _shndx, st_value, _size in entries:
        if st_info & 0xF == 2 and st_name:
            name = strings[st_name:strings.find(b"\0", st_name)].decode("ascii", "replace")
            out.setdefault(name, st_value)
    return out


@dataclass
class ModuleWatch:
    """A watch config whose function lives in a module that may not be loaded yet."""

    module: str                     # "lkdtm"
    program: Program                # the .ko at placeholder addresses
    resolved: ResolvedWatch
    armed_index: int | None = None  # the engine's index once armed


@dataclass
class LoadedModule:
    """One module's placement: placeholder section -> delta to the guest address."""

    name: str
    program: Program
    deltas: dict[int, int] = field(default_factory=dict)

    def to_guest(self, addr: int) -> int | None:
        delta = self.deltas.get(section_of(addr))
        return addr + delta if delta is not None else None

    def section_addresses(self) -> dict[str, int]:
        """Code section name -> guest address, for sections whose placement is known.

        What gdb's ``add-symbol-file FILE -s .text ADDR -s .text.unlikely ADDR``
        needs to relocate the module's DWARF (lines and call-frame information).
        """
        out: dict[str, int] = {}
        for region in self.program.symtab.regions:
            delta = self.deltas.get(section_of(region.addr))
            if delta is not None:
                out.setdefault(region.name, region.addr + delta)
        return out

    def from_guest(self, addr: int) -> int | None:
        for section, delta in self.deltas.items():
            placeholder = addr - delta
            if section_of(placeholder) == section and any(
                    r.addr <= placeholder < r.addr + r.size for r in self.program.symtab.regions
                    if section_of(r.addr) == section):
                return placeholder
        return None


#: Where a module's symbols are: module name (as the kernel names it) -> its ``.ko``.
ModuleFiles = Mapping[str, Path]


def module_files(modules_dir: Path | None,
                 extra: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """Every ``.ko`` a watch may name: the image's ``modules_dir`` (named after the file),
    then ``extra`` (the user's ``--module`` files, by their ``.modinfo`` name), which win."""
    out: dict[str, Path] = {}
    if modules_dir is not None and modules_dir.is_dir():
        for ko in sorted(modules_dir.glob("*.ko")):
            out[ko.stem.replace("-", "_")] = ko
    out.update(extra or {})
    return out


def _files(modules: Path | None | ModuleFiles) -> ModuleFiles:
    return modules if isinstance(modules, Mapping) else module_files(modules)


def find_module_function(modules: Path | None | ModuleFiles, func: str
                         ) -> tuple[str, Program] | None:
    """The module (name, program) that defines function ``func``: among `module_files`,
    or in the directory ``modules``."""
    for name, ko in _files(modules).items():
        program = load_module(ko)
        if program.symtab.lookup_all(func):
            return name, program
    return None


def resolve_in_module(cfg: WatchConfig, modules: Path | None | ModuleFiles
                      ) -> ModuleWatch | None:
    found = find_module_function(modules, cfg.func)
    if found is None:
        return None
    name, program = found
    return ModuleWatch(name, program, resolve_watch(cfg, program))


def shift_spec(spec: ArmSpec, delta: int) -> ArmSpec:
    """The same watch with every code address moved by ``delta``."""
    return dataclasses.replace(
        spec, func_addr=spec.func_addr + delta, probe_addr=spec.probe_addr + delta,
        exits=tuple((a + delta, base, off) for a, base, off in spec.exits),
        check_ends=tuple(a + delta for a in spec.check_ends))


class ModuleArmer:
    """Arms `ModuleWatch`es when their module appears (engine hook on `LOAD_HOOK`)."""

    def __init__(self, kernel: Program, watches: list[ModuleWatch],
                 symbolizer: ModuleSymbolizer, on_status: Callable[[str], None] | None = None,
                 unreadable: tuple[type[Exception], ...] = ()) -> None:
        """``unreadable``: the target's "that memory cannot be read" errors (the stub's
        error reply), expected while the guest has no module list yet."""
        self.kernel = kernel
        self.unreadable = unreadable
        self.watches = watches
        self.symbolizer = symbolizer
        self.layout = ModuleLayout.from_program(kernel)
        self.hook_addr = kernel.function(LOAD_HOOK).addr
        self.on_status = on_status or (lambda _msg: None)
        self.loaded: dict[str, LoadedModule] = {}

    def install(self, engine) -> None:  # engine: kswgdb.watch.engine.Engine
        """Arm what is already loaded, and hook the load path for the rest.

        The hook stays only while some watch waits for its module: each of its
        stops costs the guest a translation-cache flush, for nothing once
        every module watch is armed.
        """
        self.engine = engine
        engine.add_hook(self.hook_addr, self._on_load)
        # A guest stopped before paging is on (at reset) has no module list to read yet.
        with contextlib.suppress(*self.unreadable):
            self._scan(engine.target.read)
        self._unhook_when_done()

    def _on_load(self, _stop) -> None:
        self._scan(self.engine.target.read)
        self._unhook_when_done()

    def pending(self) -> list[ModuleWatch]:
        """The watches whose module has not been found loaded yet."""
        return [w for w in self.watches if w.armed_index is None]

    def _unhook_when_done(self) -> None:
        if not self.pending():
            self.engine.remove_hook(self.hook_addr)

    def _scan(self, read: ReadFn) -> None:
        pending = {w.module for w in self.pending()}
        if not pending:
            return
        present = loaded_modules(self.layout, read)
        for name in pending & present.keys():
            placed = self._place(name, present[name], read)
            if placed is None:
                continue
            for watch in self.watches:
                if watch.module != name or watch.armed_index is not None:
                    continue
                spec = watch.resolved.to_arm_spec()
                delta = placed.deltas.get(section_of(spec.func_addr))
                if delta is None:
                    continue
                watch.armed_index = self.engine.add_spec(shift_spec(spec, delta))
                self.on_status(f"module {name} loaded: {spec.func} at "
                               f"{spec.func_addr + delta:#x}, watch armed")

    def _place(self, name: str, mod: int, read: ReadFn) -> LoadedModule | None:
        program = next(w.program for w in self.watches if w.module == name)
        placed = place_module(self.layout, name, mod, program, read)
        if placed is None:
            return None
        self.loaded[name] = placed
        self.symbolizer.modules.append(placed)
        return placed


def place_module(layout: ModuleLayout, name: str, mod: int, program: Program,
                 read: ReadFn) -> LoadedModule | None:
    """Where module ``name`` (``struct module *`` ``mod``) put each code section of
    ``program``: one delta per section, from the module's own kallsyms in the guest."""
    guest = module_symbols(layout, mod, read)
    placed = LoadedModule(name, program)
    for sym in program.symtab.symbols:
        at = guest.get(sym.name)
        if at is not None:
            placed.deltas.setdefault(section_of(sym.addr), at - sym.addr)
    return placed if placed.deltas else None


class ModuleFinder:
    """Places every loaded module that has a ``.ko`` (`module_files`), watched or not.

    Called before a gdb backtrace, so a module frame on the stack of a hit in
    vmlinux code is named too (gdb gets the module with ``add-symbol-file``).
    """

    def __init__(self, kernel: Program, modules: Path | ModuleFiles,
                 symbolizer: ModuleSymbolizer, read: ReadFn) -> None:
        self.layout = ModuleLayout.from_program(kernel)
        self.modules = _files(modules)
        self.symbolizer = symbolizer
        self.read = read

    def __call__(self) -> None:
        known = {m.name for m in self.symbolizer.modules}
        for name, mod in loaded_modules(self.layout, self.read).items():
            if name in known:
                continue
            ko = self.modules.get(name)
            if ko is None:
                continue
            placed = place_module(self.layout, name, mod, load_module(ko), self.read)
            if placed is not None:
                self.symbolizer.modules.append(placed)


class ModuleSymbolizer(ProgramSymbolizer):
    """The kernel's symbolizer, plus every loaded module's code at its guest address."""

    def __init__(self, kernel: Program) -> None:
        super().__init__(kernel)
        self.modules: list[LoadedModule] = []
        self._per_module: dict[str, ProgramSymbolizer] = {}

    def _find(self, addr: int) -> tuple[LoadedModule, ProgramSymbolizer, int] | None:
        for mod in self.modules:
            placeholder = mod.from_guest(addr)
            if placeholder is not None:
                sym = self._per_module.setdefault(mod.name, ProgramSymbolizer(mod.program))
                return mod, sym, placeholder
        return None

    def symbol(self, addr: int) -> str:
        hit = self._find(addr)
        if hit is None:
            return super().symbol(addr)
        return f"{hit[1].symbol(hit[2])} [{hit[0].name}]"

    def function(self, addr: int) -> str | None:
        hit = self._find(addr)
        return super().function(addr) if hit is None else hit[1].function(hit[2])

    def source(self, addr: int):
        hit = self._find(addr)
        return super().source(addr) if hit is None else hit[1].source(hit[2])

    def writer(self, pc: int, regs: Registers) -> tuple[int, str, tuple[tuple[int, str], ...]]:
        hit = self._find(pc)
        if hit is None:
            return super().writer(pc, regs)
        mod, sym, placeholder = hit
        addr, text, context = sym.writer(placeholder, regs)

        def back(a: int) -> int:
            return mod.to_guest(a) or a

        def texts(a: int, t: str) -> str:
            return _module_text(mod.program, a, t, back)

        return back(addr), texts(addr, text), tuple((back(a), texts(a, t)) for a, t in context)

    def stack_push(self, pc: int) -> bool:
        hit = self._find(pc)
        return super().stack_push(pc) if hit is None else hit[1].stack_push(hit[2])

    def is_store(self, pc: int) -> bool:
        hit = self._find(pc)
        return super().is_store(pc) if hit is None else hit[1].is_store(hit[2])

    def store_misses(self, pc: int, regs: Registers, addr: int, length: int) -> bool:
        # Module code is decoded at placeholder addresses: only the kernel's own proves it.
        return self._find(pc) is None and super().store_misses(pc, regs, addr, length)


def _module_text(program: Program, addr: int, text: str, to_guest: Callable[[int], int]) -> str:
    """An instruction of a module as the loaded module has it, not as the file does.

    In the ``.ko`` a relocated field holds 0 until the kernel's loader fills it:
    decoded from the file, ``call __fentry__`` and ``jmp __x86_return_thunk``
    would "go" to the next instruction, ``mov rdi, <string>`` would load 0. A
    branch through a relocation names its target (its guest address when it is
    in this module, else the symbol); any other relocated operand gets the
    symbol it refers to appended. Direct branches inside the module are moved
    from placeholder to guest addresses.
    """
    func = program.disasm.function_at(addr)
    insn = func.at(addr) if func is not None else None
    reloc = None if insn is None else program.relocation_in(insn.addr, insn.end)
    if insn is None or reloc is None:
        moved = _HEX.sub(lambda m: hex(to_guest(int(m.group(0), 16))), text)
        if insn is not None and insn.flow in ("call", "jump", "cjump") and insn.target:
            return f"{moved} <{_name(program, insn.target)}>"
        return moved
    if insn.flow in ("call", "jump", "cjump"):
        target = reloc.branch_target(insn.end)
        if target is None:
            return f"{insn.mnemonic} {reloc.describe(insn.end)}"
        return f"{insn.mnemonic} {hex(to_guest(target))} <{_name(program, target)}>"
    return f"{text}  ; {reloc.describe(insn.end)}"


def _name(program: Program, addr: int) -> str:
    """A module address (placeholder) as name+offset, or its hex if no symbol holds it."""
    where = program.symbolize(addr)
    if where is None:
        return hex(addr)
    return where.name if where.offset == 0 else f"{where.name}+{where.offset:#x}"


__all__ = ["BadInput", "LOAD_HOOK", "ModuleArmer", "ModuleFinder", "ModuleLayout",
           "ModuleFiles", "ModuleSymbolizer", "ModuleWatch", "loaded_modules", "module_files",
           "module_symbols",
           "place_module", "resolve_in_module", "shift_spec"]
