"""Where a read watchpoint can stand in for a release-point breakpoint.

QEMU 7.2's gdbstub flushes the whole TCG translation cache at every breakpoint
stop (``gdb_vm_state_change``: a RUN_STATE_DEBUG stop without a watchpoint hit
calls ``tb_flush``) and at no watchpoint stop. A release-point breakpoint thus
costs a flush and the re-translation of everything the guest runs next.

When the instruction that releases the watched slot itself reads the frame
(``leave`` reads the saved RBP, a ``pop`` the slot at SP), a read watchpoint on
what it reads stops the guest right after it, at no flush. No interrupt can
come in between: a watchpoint that does not stop before the access
(``cpu_check_watchpoint``) re-executes the one instruction with ``CF_NOIRQ``,
``cpu_handle_interrupt`` skips hardware interrupts for such a block, and the
debug interrupt it raises is taken first.

Only that one instruction: a read *after* the release (``add rsp, N`` then
``pop rbx``) leaves a window. TCG takes interrupts only between translation
blocks, but since QEMU 6.1 every block on a page holding a gdb breakpoint (the
probe, usually in the same function) is one instruction long, so an interrupt
can land between the release and the read and push its frame onto the still
watched slot: a lost interrupt and a wedged guest, measured (bench mode
``readrel-x``, which raises `MAX_STRETCH` to try it). The stretch checks below
(no jump target, no call return, one page, no memory access in between) are
what that experiment needs; they do not make it safe.
"""

from __future__ import annotations

from kswgdb.symbols.disasm import FunctionCode, Instruction
from kswgdb.symbols.frame import FrameAnalysis

PAGE = 4096
#: Instructions from the release to the read, both included: 1 = the release reads.
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
