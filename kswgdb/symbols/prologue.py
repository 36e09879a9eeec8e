"""What a function's prologue does to its frame: the canary, and where to arm.

KStackWatch's canary mode scans up from SP for the canary value at run time;
it misses when the frame is larger than its window or a stray word matches.
Here the canary slot is read off the code instead: the load of the guard
(``mov rax, [rip+__stack_chk_guard]`` for a global guard, ``mov rax, gs:[0x28]``
for Linux's per-CPU one) and the store of that register into the frame. (At
-O2 the slot is not always rbp-8: rbp-0x18 is common.)

Where to arm (``fo``) is `kswgdb.symbols.armpoint`'s decision, for every mode:
`FunctionAnalysis.plan` asks it, with the frame's DWARF locals (given by
`kswgdb.symbols.program.Program`) bounding where pointer writes can land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

from kswgdb.errors import BadInput
from kswgdb.symbols.armpoint import ArmPlan, FunctionWriters, Objects
from kswgdb.symbols.disasm import Disassembler, FunctionCode, Instruction, MemRef, full_reg
from kswgdb.symbols.elf import Symbol, SymbolTable
from kswgdb.symbols.frame import FrameAnalysis, FrameWrite

GuardKind = Literal["global", "gs", "fs"]

#: Symbols that hold the stack-protector guard (global guard, or Linux >= 6.15's
#: per-CPU symbol addressed through %gs).
GUARD_SYMBOLS = ("__stack_chk_guard", "__ref_stack_chk_guard")
#: The fixed per-CPU/TLS offset of the canary on x86-64 (fixed_percpu_data / TCB).
CANARY_TLS_OFFSET = 0x28


class Slot(Protocol):
    """Anything placed in the frame: a CFA offset and a length in bytes."""

    @property
    def cfa_offset(self) -> int | None: ...

    @property
    def length(self) -> int: ...


@dataclass(frozen=True)
class FrameSlot:
    """A frame slot by CFA offset (a DWARF local, or a computed SP+so)."""

    cfa_offset: int
    length: int
    label: str = ""


@dataclass(frozen=True)
class CanarySlot:
    """Where the prologue stores the stack-protector canary.

    ``base``/``offset`` are as written in the store (``[rbp-0x18]``);
    ``cfa_offset`` places it independently of the pc (None if the store's base
    could not be followed from the entry).
    """

    base: str
    offset: int
    store_addr: int
    load_addr: int
    guard_kind: GuardKind
    guard_ref: str            # "__stack_chk_guard", "gs:0x28", ...
    guard_addr: int | None    # the guard variable's address (global, or per-CPU symbol)
    cfa_offset: int | None
    length: int = 8

    @property
    def location(self) -> str:
        """The slot as written in the store: ``[rbp-0x18]``."""
        sign = "-" if self.offset < 0 else "+"
        return f"[{self.base}{sign}{abs(self.offset):#x}]"

    def __str__(self) -> str:
        return f"{self.location} (from {self.guard_ref})"


@dataclass(eq=False)
class FunctionAnalysis:
    """One function's code, frame states and canary, computed once."""

    code: FunctionCode
    frame: FrameAnalysis
    canary: CanarySlot | None
    #: The frame's stack objects (DWARF locals) as (CFA offset, size); none without DWARF.
    find_objects: Callable[[], list[tuple[int, int]]] = field(default=lambda: [], repr=False)

    @property
    def symbol(self) -> Symbol:
        return self.code.symbol

    def slot(self, base: str, offset: int, length: int, pc: int | None = None) -> FrameSlot:
        """A register-relative slot (``[rbp-0x1c]`` at ``pc``) as a CFA-relative one.

        Without ``pc``, the state at the end of the straight-line prologue is used.
        """
        if pc is None:
            region = self.frame.straight_line()
            state = self.frame.state_after(region[-1].addr) if region else None
        else:
            state = self.frame.state_before(pc)
        cfa = state.cfa_offset(base, offset) if state is not None else None
        if cfa is None:
            raise BadInput(f"[{base}{offset:+#x}] cannot be placed in {self.symbol.name}'s frame"
                           + (f" at {pc:#x}" if pc is not None else ""))
        return FrameSlot(cfa, length, f"[{base}{offset:+#x}]")

    def init_stores(self, slot: Slot, *, straight_only: bool = True) -> list[FrameWrite]:
        return init_stores(self.frame, slot, straight_only=straight_only)

    @cached_property
    def writers(self) -> FunctionWriters:
        """Every write of the function into its own frame (`kswgdb.symbols.armpoint`)."""
        return FunctionWriters.of(self.frame, Objects(self.find_objects()))

    def plan(self, slot: Slot | None = None) -> ArmPlan:
        """Where a watch on ``slot`` (default: the canary) may be armed, and why."""
        slot = slot if slot is not None else self.canary
        if slot is None or slot.cfa_offset is None:
            raise BadInput(f"{self.symbol.name}: the watched bytes cannot be placed in its frame")
        return self.writers.plan(slot.cfa_offset, slot.length)

    def suggest_offset(self, slot: Slot | None = None) -> int:
        """The ``fo`` `plan` suggests (safe, or its best candidate); BadInput if none."""
        plan = self.plan(slot)
        if plan.fo is None:
            raise BadInput(plan.reason)
        return plan.fo

    def after_init_offset(self, slot: Slot | None = None) -> int:
        """The first point after the straight-line prologue's stores into ``slot``: for a
        watch that is *meant* to catch the function's own later write (KStackWatch's
        recursion test), which `plan` would rightly call unsafe."""
        return suggest_offset(self.frame, slot if slot is not None else self.canary, self.canary)


def analyze(disasm: Disassembler, func: str | Symbol) -> FunctionAnalysis:
    """Decode ``func`` and work out its frame and canary."""
    code = disasm.function(func)
    frame = FrameAnalysis(code)
    return FunctionAnalysis(code, frame, find_canary(code, disasm.symtab, frame))


def find_canary(code: FunctionCode, symtab: SymbolTable,
                frame: FrameAnalysis | None = None) -> CanarySlot | None:
    """The first guard load whose register is then stored into the frame."""
    frame = frame or FrameAnalysis(code)
    insns = code.instructions
    for i, insn in enumerate(insns):
        guard = _guard_load(insn, code, symtab)
        if guard is None:
            continue
        reg, kind, ref, addr = guard
        for later in insns[i + 1:]:
            store = _store_of(later, reg)
            if store is not None:
                state = frame.state_before(later.addr)
                cfa = state.cfa_offset(store.base, store.disp) if state is not None else None
                return CanarySlot(store.base or "?", store.disp, later.addr, insn.addr,
                                  kind, ref, addr, cfa)
            if reg in later.regs_written or later.flow is not None:
                break
    return None


def _guard_load(insn: Instruction, code: FunctionCode, symtab: SymbolTable
                ) -> tuple[str, GuardKind, str, int | None] | None:
    """(register, kind, description, guard address) if ``insn`` loads the guard."""
    if insn.mnemonic != "mov" or len(insn.mem_reads) != 1 or not insn.reg_ops:
        return None
    ref = insn.mem_reads[0]
    reg = full_reg(insn.reg_ops[0][0])
    if ref.size != 8 or reg is None:
        return None
    target = ref.target(insn.end)
    sym = symtab.containing(target) if target is not None else None
    named = sym is not None and sym.name in GUARD_SYMBOLS and sym.addr == target
    if ref.segment in ("gs", "fs"):
        if named:
            return reg, ref.segment, f"{ref.segment}:{sym.name}", target  # type: ignore[union-attr]
        if ref.base is None and ref.index is None and (
                ref.disp == CANARY_TLS_OFFSET or _checked_again(code, insn, ref)):
            return reg, ref.segment, f"{ref.segment}:{ref.disp:#x}", None  # type: ignore[return-value]
        return None
    if named:
        return reg, "global", sym.name, target  # type: ignore[union-attr]
    return None


def _checked_again(code: FunctionCode, load: Instruction, ref: MemRef) -> bool:
    """The epilogue compares against the same guard (``sub rdx, gs:[off]``)."""
    for insn in code.instructions:
        if insn.addr > load.addr and insn.mnemonic in ("sub", "xor", "cmp") \
                and ref in insn.mem_reads:
            return True
    return False


def _store_of(insn: Instruction, reg: str) -> MemRef | None:
    """The 8-byte stack store of ``reg`` done by ``insn``, if it is one."""
    if insn.mnemonic != "mov" or len(insn.mem_writes) != 1:
        return None
    ref = insn.mem_writes[0]
    if ref.size != 8 or ref.base not in ("rbp", "rsp") or ref.index is not None:
        return None
    if not any(full_reg(r) == reg and not written for r, _size, written in insn.reg_ops):
        return None
    return ref


def init_stores(frame: FrameAnalysis, slot: Slot, *, straight_only: bool = True
                ) -> list[FrameWrite]:
    """The stores that write any byte of ``slot``, in address order.

    With ``straight_only`` only the region before the first call/branch counts
    (the initialisation a watch must not catch); otherwise the whole function.
    """
    if slot.cfa_offset is None:
        return []
    insns = frame.straight_line() if straight_only else frame.code.instructions
    out = []
    for insn in insns:
        for w in frame.writes(insn):
            if w.overlaps(slot.cfa_offset, slot.length):
                out.append(w)
    return out


def suggest_offset(frame: FrameAnalysis, slot: Slot | None,
                   canary: CanarySlot | None = None) -> int:
    """The ``fo`` to arm at for ``slot``: see the module docstring for the rule.

    The frame set-up (stack growth, ``mov rbp, rsp``, the canary store) counts
    as initialisation too: a watch armed in the middle of it would be placed
    relative to registers that are about to change.
    """
    code = frame.code
    pivot: Instruction | None = None
    for insn in frame.straight_line():
        before, after = frame.state_before(insn.addr), frame.state_after(insn.addr)
        if before is None or after is None:
            continue
        grows = before.sp is not None and after.sp is not None and after.sp > before.sp
        if grows or (after.fp is not None and before.fp != after.fp):
            pivot = insn
    stores = init_stores(frame, slot) if slot is not None else []
    for extra in (canary, slot):
        if isinstance(extra, CanarySlot):
            store = code.at(extra.store_addr)
            if store is not None:
                stores.append(FrameWrite(store, extra.cfa_offset or 0, 8))
    for w in stores:
        if pivot is None or w.insn.addr > pivot.addr:
            pivot = w.insn
    if pivot is None:
        return 0
    nxt = code.after(pivot.addr)
    if nxt is None or nxt.flow is not None:
        return pivot.addr - code.start
    return nxt.addr - code.start
