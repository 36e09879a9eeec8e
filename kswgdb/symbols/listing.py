"""The annotated listing behind ``kswgdb disasm FUNC``.

It replaces the manual half of KStackWatch's workflow (disassemble the victim,
find where its locals are initialised, pick the instruction after the last
store, work out ``so``): every instruction with its source line, the canary
load and store and the stores that initialise each stack local marked, and a
ready config string at the end. Rendering is `kswgdb.render.disasm`'s job; this
module only decides what to say.
"""

from __future__ import annotations

from dataclasses import dataclass

from kswgdb.symbols.disasm import Instruction
from kswgdb.symbols.elf import Symbol
from kswgdb.symbols.lines import SourceLine
from kswgdb.symbols.locals import FrameVar
from kswgdb.symbols.program import Program
from kswgdb.symbols.prologue import CanarySlot, FrameSlot

WATCHABLE = (1, 2, 4, 8)


@dataclass(frozen=True)
class ListingRow:
    """One instruction; ``source`` only where the source line changes."""

    insn: Instruction
    offset: int
    source: SourceLine | None
    marks: tuple[str, ...]
    suggested: bool = False
    comment: str = ""               # symbol of a call/jump target or rip-relative operand


@dataclass(frozen=True)
class Listing:
    function: Symbol
    rows: tuple[ListingRow, ...]
    canary: CanarySlot | None
    locals: tuple[FrameVar, ...]
    suggested_offset: int | None
    suggested_config: str | None
    note: str = ""
    frame_pointer: bool = False     # CFA == RBP+16 in the body, so rbp offsets are meaningful


def build_listing(program: Program, func: str, var: str | None = None) -> Listing:
    """Decode and annotate ``func``; with ``var``, suggest a watch on that local."""
    analysis = program.analyze(func)
    sym, code, frame, canary = analysis.symbol, analysis.code, analysis.frame, analysis.canary
    marks: dict[int, list[str]] = {}

    def mark(addr: int, text: str) -> None:
        marks.setdefault(addr, []).append(text)

    if canary is not None:
        mark(canary.load_addr, f"canary load ({canary.guard_ref})")
        mark(canary.store_addr, f"canary store {canary.location}")
        for insn in code.instructions:
            if insn.addr > canary.store_addr and any(
                    insn.mnemonic in ("sub", "xor", "cmp") and _same_guard(ref, insn, canary)
                    for ref in insn.mem_reads):
                mark(insn.addr, "canary check")

    body_pc = frame.straight_line()[-1].end if frame.straight_line() else sym.addr
    stack_locals = [v for v in program.locals_at(body_pc) if v.on_stack and not v.inlined]
    for v in stack_locals:
        if v.cfa_offset is None or v.total_size is None:
            continue
        straight = {w.insn.addr for w in analysis.init_stores(
            FrameSlot(v.cfa_offset, v.total_size))}
        for w in analysis.init_stores(FrameSlot(v.cfa_offset, v.total_size), straight_only=False):
            if canary is None or w.insn.addr != canary.store_addr:
                mark(w.insn.addr, f"{'init' if w.insn.addr in straight else 'writes'} {v.name}")

    suggested_offset, config, note = _suggest(program, analysis, stack_locals, var)
    rows = []
    last_line: SourceLine | None = None
    for insn in code.instructions:
        line = program.source_line(insn.addr)
        shown = line if line is not None and line != last_line else None
        last_line = line or last_line
        offset = insn.addr - sym.addr
        is_suggested = offset == suggested_offset
        row_marks = list(marks.get(insn.addr, ()))
        if is_suggested:
            row_marks.append("<- arm here")
        rows.append(ListingRow(insn, offset, shown, tuple(row_marks), is_suggested,
                               _comment(program, insn)))
    body = frame.state_before(body_pc)
    uses_fp = body is not None and body.fp == 16
    return Listing(sym, tuple(rows), canary, tuple(stack_locals), suggested_offset, config, note,
                   uses_fp)


def _comment(program: Program, insn: Instruction) -> str:
    """``<publish>`` for a call, ``<__stack_chk_guard>`` for a rip-relative load.

    In a module (a relocatable file) a relocated field holds 0 until the kernel
    loads it: the relocation says what the instruction really refers to.
    """
    reloc = program.relocation_in(insn.addr, insn.end)
    target = insn.target
    if reloc is not None:
        target = reloc.branch_target(insn.end) if insn.target is not None else None
        if target is None:
            return f"<{reloc.describe(insn.end)}>"
    if target is None:
        for ref in (*insn.mem_reads, *insn.mem_writes):
            if ref.base == "rip":
                target = ref.target(insn.end)
    if target is None:
        return ""
    where = program.symbolize(target)
    if where is None:
        return ""
    return f"<{where.name}>" if where.offset == 0 else f"<{where.name}+{where.offset:#x}>"


def _same_guard(ref, insn: Instruction, canary: CanarySlot) -> bool:
    if canary.guard_kind == "global":
        return ref.target(insn.end) == canary.guard_addr
    return ref.segment == canary.guard_kind


def _suggest(program: Program, analysis, stack_locals: list[FrameVar], var: str | None
             ) -> tuple[int | None, str | None, str]:
    """The arming offset and config: the named local, else the canary, else a local."""
    name = analysis.symbol.name
    if var is not None:
        chosen = [v for v in stack_locals if v.name == var]
        if not chosen:
            return None, None, f"{var} has no stack slot in {name}"
        v = chosen[0]
        elem = v.size or 0
        index = (v.count - 1) if v.count else None
        start = (v.cfa_offset or 0) + (index or 0) * elem
        fo = analysis.suggest_offset(FrameSlot(start, elem))
        ref = f"{var}[{index}]" if index is not None else var
        return fo, f"fn={name} fo={fo:#x} var={ref}", ""
    if analysis.canary is not None:
        fo = analysis.suggest_offset()
        return fo, f"fn={name} fo={fo:#x}", ""
    for v in stack_locals:
        elem = v.size or 0
        if v.cfa_offset is None or elem not in WATCHABLE:
            continue
        fo = analysis.suggest_offset(FrameSlot(v.cfa_offset, elem))
        state = analysis.frame.state_after(analysis.symbol.addr + fo)
        if state is None or state.sp is None:
            continue
        so = v.cfa_offset + state.sp
        return (fo, f"fn={name} fo={fo:#x} so={so:#x} wl={elem}",
                f"no canary in {name}: watching local {v.name} instead")
    return None, None, f"no canary and no watchable stack local in {name}"
