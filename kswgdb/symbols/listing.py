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

from kswgdb.errors import BadInput
from kswgdb.symbols.armpoint import ArmPlan
from kswgdb.symbols.disasm import Instruction
from kswgdb.symbols.elf import Symbol
from kswgdb.symbols.lines import SourceLine
from kswgdb.symbols.locals import FrameVar
from kswgdb.symbols.program import Program
from kswgdb.symbols.prologue import CanarySlot, FrameSlot, FunctionAnalysis
from kswgdb.symbols.watched import WATCH_LENGTHS, body_state, sp_range, watched_var

WATCHABLE = WATCH_LENGTHS


@dataclass(frozen=True)
class WatchRequest:
    """What ``disasm`` is asked to place: a local (``var``, optionally one element),
    or ``so``/``wl`` relative to SP in the function's body; nothing: the canary."""

    var: str | None = None
    index: int | None = None
    so: int | None = None
    wl: int | None = None


@dataclass(frozen=True)
class ListingRow:
    """One instruction; ``source`` only where the source line changes."""

    insn: Instruction
    offset: int
    source: SourceLine | None
    marks: tuple[str, ...]
    suggested: bool = False
    comment: str = ""               # symbol of a call/jump target or rip-relative operand
    part: Symbol | None = None      # a cold part (NAME.cold) the row is in; offset is into it


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


def build_listing(program: Program, func: str, var: str | WatchRequest | None = None
                  ) -> Listing:
    """Decode and annotate ``func``; with ``var`` (a name or a `WatchRequest`), suggest
    a watch on that instead of the canary."""
    request = var if isinstance(var, WatchRequest) else WatchRequest(var=var)
    analysis = program.analyze(func)
    sym, code, frame, canary = analysis.symbol, analysis.code, analysis.frame, analysis.canary
    marks: dict[int, list[str]] = {}

    def mark(addr: int, text: str) -> None:
        marks.setdefault(addr, []).append(text)

    if canary is not None:
        mark(canary.load_addr, f"canary load ({canary.guard_ref})")
        mark(canary.store_addr, f"canary store {canary.location}")
        for insn in code.instructions:
            if (insn.addr > canary.store_addr or not code.in_main(insn.addr)) and any(
                    insn.mnemonic in ("sub", "xor", "cmp") and _same_guard(ref, insn, canary)
                    for ref in insn.mem_reads):
                mark(insn.addr, "canary check")

    body_pc = frame.straight_line()[-1].end if frame.straight_line() else sym.addr
    stack_locals = [v for v in program.locals_at(body_pc) if v.on_stack and not v.inlined]
    straight = {i.addr for i in frame.straight_line()}
    for v in stack_locals:
        if v.cfa_offset is None or v.total_size is None:
            continue
        for w in analysis.writers.of_range(v.cfa_offset, v.total_size):
            if canary is None or w.insn.addr != canary.store_addr:
                mark(w.insn.addr, f"{'init' if w.insn.addr in straight else 'writes'} {v.name}")

    suggested_offset, config, note = _suggest(program, analysis, stack_locals, request)
    rows = []
    last_line: SourceLine | None = None
    for insn in code.instructions:
        line = program.source_line(insn.addr)
        shown = line if line is not None and line != last_line else None
        last_line = line or last_line
        part = code.part_of(insn.addr)
        offset = insn.addr - part.addr
        is_suggested = part is sym and offset == suggested_offset
        row_marks = list(marks.get(insn.addr, ()))
        if is_suggested:
            row_marks.append("<- arm here")
        rows.append(ListingRow(insn, offset, shown, tuple(row_marks), is_suggested,
                               _comment(program, insn), None if part is sym else part))
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


def _suggest(program: Program, analysis: FunctionAnalysis, stack_locals: list[FrameVar],
             request: WatchRequest) -> tuple[int | None, str | None, str]:
    """The arming offset, the config and a note: the asked-for local or SP range, else
    the canary, else the first watchable local. Every offset is `armpoint`'s plan."""
    name = program.config_name(analysis.symbol)
    state = body_state(analysis)
    try:
        if request.var is not None:
            return _suggest_var(program, analysis, stack_locals, request)
        if request.so is not None:
            slot = sp_range(state, request.so, request.wl or 8)
            if slot is None:
                return None, None, f"SP is not known relative to {name}'s frame after its prologue"
            return _sp_config(analysis, analysis.plan(slot), slot, "", name)
        if analysis.canary is not None:
            if analysis.canary.cfa_offset is None:
                return None, None, f"{name}'s canary store cannot be placed in its frame"
            plan = analysis.plan()
            if plan.fo is None:
                return None, None, plan.reason
            return plan.fo, _config(name, plan, ""), _note(plan)
    except BadInput as e:
        return None, None, str(e)
    for v in stack_locals:
        elem = v.size or 0
        if v.cfa_offset is None or elem not in WATCHABLE:
            continue
        slot = FrameSlot(v.cfa_offset, elem, v.name)
        plan = analysis.plan(slot)
        fo, config, note = _sp_config(analysis, plan, slot,
                                      f"no canary in {name}: watching local {v.name} instead",
                                      name)
        if config is not None:
            return fo, config, note
    return None, None, f"no canary and no watchable stack local in {name}"


def _suggest_var(program: Program, analysis: FunctionAnalysis, stack_locals: list[FrameVar],
                 request: WatchRequest) -> tuple[int | None, str | None, str]:
    name, var, index = program.config_name(analysis.symbol), request.var, request.index
    assert var is not None
    chosen = [v for v in stack_locals if v.name == var]
    if index is None and chosen and chosen[0].count:
        index = chosen[0].count - 1     # an array: its last element, next to the canary
    state = body_state(analysis)
    pc = analysis.frame.straight_line()[-1].end if analysis.frame.straight_line() else \
        analysis.symbol.addr
    watched = watched_var(program, analysis, var, index, pc, state)
    if watched.slot is None:
        return None, None, f"{watched.ref} cannot be placed in {name}'s frame"
    plan = analysis.plan(watched.slot)
    if plan.fo is None:
        return None, None, plan.reason
    arm_pc = analysis.code.after(analysis.symbol.addr + plan.fo)
    again = watched_var(program, analysis, var, index,
                        arm_pc.addr if arm_pc is not None else pc,
                        analysis.frame.state_after(analysis.symbol.addr + plan.fo))
    if again.cfa_offset != watched.cfa_offset:
        return None, None, f"{watched.ref} moves in {name}'s frame: no single slot to watch"
    return plan.fo, _config(name, plan, f" var={watched.ref}"), _note(plan)


def _sp_config(analysis: FunctionAnalysis, plan: ArmPlan, slot: FrameSlot, note: str,
               name: str) -> tuple[int | None, str | None, str]:
    """so=/wl= for ``slot`` relative to SP where ``plan`` arms."""
    if plan.fo is None:
        return None, None, plan.reason
    after = analysis.frame.state_after(analysis.symbol.addr + plan.fo)
    if after is None or after.sp is None:
        return None, None, f"SP is not known at fo={plan.fo:#x} in {analysis.symbol.name}"
    so = slot.cfa_offset + after.sp
    sign = "-" if so < 0 else ""
    extra = f" so={sign}{abs(so):#x} wl={slot.length}"
    notes = "; ".join(n for n in (note, _note(plan)) if n)
    return plan.fo, _config(name, plan, extra), notes


def _config(name: str, plan: ArmPlan, extra: str) -> str:
    return f"fn={name} fo={plan.fo:#x}{extra}"


def _note(plan: ArmPlan) -> str:
    return plan.reason
