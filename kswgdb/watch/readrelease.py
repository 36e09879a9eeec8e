"""Where a read watchpoint can stand in for a release-point breakpoint.

QEMU 7.2's gdbstub flushes the whole TCG translation cache at every breakpoint
stop (``gdb_vm_state_change``: a RUN_STATE_DEBUG stop without a watchpoint hit
calls ``tb_flush``) and at no watchpoint stop. A release-point breakpoint thus
costs a flush and the re-translation of everything the guest runs next. The
epilogue, though, reads its own saved registers right after it releases the
watched slot (``add rsp, N; pop rbx`` or ``leave``): a read watchpoint on that
saved-register slot stops the guest right after the read, at no flush.

It is safe only if no interrupt can be taken between the release and the read,
since an interrupt frame pushed onto a still-watched, already-released slot is
KStackWatch's false positive and, under QEMU 7.2 TCG, a lost interrupt. TCG
takes interrupts only between translation blocks, and a non-stop-before
watchpoint re-executes the reading instruction alone with ``CF_NOIRQ`` and
raises the debug exception before any hardware interrupt. So the stretch from
the release instruction to the read must lie inside one translation block:
straight-line, on one page, no instruction in it the target of a jump or a
return from a call, and nothing in between that touches memory (a fault or
another watchpoint would end the block there).
"""

from __future__ import annotations

from kswgdb.symbols.disasm import FunctionCode, Instruction
from kswgdb.symbols.frame import FrameAnalysis

PAGE = 4096
#: Far more than any epilogue needs; keeps the stretch well under TCG's block limits.
MAX_STRETCH = 1
#: (read CFA offset, read length, SP - CFA once the read has run): one per release point.
ReadExit = tuple[int, int, int]


def read_exits(code: FunctionCode, frame: FrameAnalysis, release_points: tuple[int, ...],
               slot_cfa: int, slot_len: int) -> tuple[ReadExit, ...]:
    """One read-watch plan per release point, or ``()`` when any of them has none."""
    if not release_points or _has_indirect_jump(code):
        return ()
    targets = {i.target for i in code.instructions if i.target is not None}
    after_call = {i.end for i in code.instructions if i.flow == "call"}
    plans = []
    for addr in release_points:
        plan = _plan_one(code, frame, addr, targets | after_call, slot_cfa, slot_len)
        if plan is None:
            return ()
        plans.append(plan)
    return tuple(dict.fromkeys(plans))


def _plan_one(code: FunctionCode, frame: FrameAnalysis, release: int, block_starts: set[int],
              slot_cfa: int, slot_len: int) -> ReadExit | None:
    insn = code.at(release)
    index = code.index_of(release) if insn is not None else -1
    for step in range(MAX_STRETCH):
        if insn is None:
            return None
        if step and (insn.addr in block_starts or insn.addr // PAGE != release // PAGE):
            return None
        state = frame.state_before(insn.addr)
        if state is None:
            return None
        read = _implicit_or_explicit_read(insn, frame)
        if read is not None:
            offset, length = read
            if offset < slot_cfa + slot_len and slot_cfa < offset + length:
                return None     # QEMU 7.2 aborts on read and write watches over one slot
            after = 0 if insn.flow == "ret" else _sp_after(frame, insn)
            if after is None:
                return None
            return offset, length, after
        if insn.flow is not None or insn.mem_reads or insn.mem_writes or insn.is_push \
                or insn.mnemonic.startswith(("div", "idiv", "pop", "leave")):
            return None
        index += 1
        insn = code.instructions[index] if index < len(code.instructions) else None
    return None


def _implicit_or_explicit_read(insn: Instruction, frame: FrameAnalysis) -> tuple[int, int] | None:
    """The frame bytes ``insn`` reads as (CFA offset, length), for the forms we trust."""
    state = frame.state_before(insn.addr)
    assert state is not None
    m = insn.mnemonic
    if m in ("pop", "popq") or insn.flow == "ret":
        return (-state.sp, 8) if state.sp is not None and not insn.mem_writes else None
    if m in ("leave", "leaveq"):
        return (-state.fp, 8) if state.fp is not None else None
    if len(insn.mem_reads) == 1 and not insn.mem_writes and insn.flow is None:
        ref = insn.mem_reads[0]
        if ref.index is None and ref.segment is None and ref.base in ("rsp", "rbp"):
            offset = state.cfa_offset(ref.base, ref.disp)
            if offset is not None and ref.size:
                return offset, ref.size
    return None


def _sp_after(frame: FrameAnalysis, insn: Instruction) -> int | None:
    after = frame.state_after(insn.addr)
    return None if after is None or after.sp is None else -after.sp


def _has_indirect_jump(code: FunctionCode) -> bool:
    """A jump table may land anywhere: no instruction can be proven a non-target."""
    return any(i.flow in ("jump", "cjump") and i.target is None for i in code.instructions)
