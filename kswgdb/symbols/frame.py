"""Where RSP and RBP point, relative to the frame's CFA, at each instruction.

Everything kswgdb watches in a frame is first placed relative to the CFA (the
caller's RSP before the call, = entry RSP + 8): DWARF's ``DW_OP_call_frame_cfa``
frame base, the canary store ``mov [rbp-0x18], rax``, a ``rep stos`` from ``lea
rdi, [rsp+0x10]``. The engine, though, reads a register at the arming point, so
the same slot has to be re-expressed as RBP+x or RSP+y *there*. This module
follows the function's direct control flow from its entry and records, before
each instruction, ``sp = CFA - RSP`` and ``fp = CFA - RBP`` when they are known
(pushes, ``sub rsp``, ``mov rbp, rsp``, ``leave``, ...), plus which registers hold
constants or frame addresses (enough for ``rep stos`` ranges). With
-fno-omit-frame-pointer, ``fp`` is 16 from ``mov rbp, rsp`` on: CFA = RBP + 16.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kswgdb.symbols.disasm import FunctionCode, Instruction, MemRef, full_reg

_CALLER_SAVED = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"})

#: A tracked register value: ("cfa", offset) = CFA + offset, ("cfa+", offset) = an
#: address at or above CFA + offset derived from a frame address (a pointer walking
#: a local array in a loop), or ("const", value).
Value = tuple[str, int]
#: A function that realigns its stack (``and rsp, -16``) puts RSP at an address the
#: code cannot place relative to the CFA: from there on ``sp`` is ALIGNED + (A - RSP),
#: A being RSP just after the ``and``, and slots reached through RSP get offsets
#: -ALIGNED + (slot - A). The two spaces never overlap, RBP (still CFA-relative)
#: keeps placing the CFA itself, and a slot of the aligned space is placed from RSP.
#: A function that realigns through a DRAP register (``lea r10, [rsp+8]; and rsp,
#: -16; push [r10-8]; push rbp; mov rbp, rsp``) has RBP in the aligned space too:
#: its CFA is in no register the engine reads, but A is (RBP + 16), and A - 8
#: holds the copied return address, A - 16 the caller's RBP, exactly as CFA - 8
#: and CFA - 16 do in an ordinary frame. Such a frame is keyed by A instead.
ALIGNED = 1 << 40


def is_aligned(offset: int | None) -> bool:
    """True for an offset of the aligned space (see `ALIGNED`), as sp or as a slot."""
    return offset is not None and abs(offset) >= ALIGNED // 2


#: Kinds of values that point into the frame.
FRAME_POINTERS = ("cfa", "cfa+")
#: Visits of one instruction after which the dataflow stops widening pointers.
_WIDEN_AFTER = 4


@dataclass(frozen=True, slots=True)
class FrameState:
    """Stack-pointer knowledge at one point: CFA = RSP + sp = RBP + fp."""

    sp: int | None
    fp: int | None
    regs: tuple[tuple[str, Value], ...] = ()

    def reg(self, name: str) -> Value | None:
        for r, v in self.regs:
            if r == name:
                return v
        return None

    def cfa_offset(self, base: str | None, disp: int) -> int | None:
        """``[base + disp]`` as an offset from the CFA, if the base is known here."""
        if base == "rsp" and self.sp is not None:
            return disp - self.sp
        if base == "rbp" and self.fp is not None:
            return disp - self.fp
        if base is not None:
            v = self.reg(base)
            if v is not None and v[0] == "cfa":
                return v[1] + disp
        return None

    def from_cfa(self, cfa_offset: int, prefer: str = "rbp") -> tuple[str, int] | None:
        """A CFA offset as (register, offset) using RBP if known here (or RSP); a slot
        of the aligned space only from RSP in the same space."""
        order = ("rbp", "rsp") if prefer == "rbp" else ("rsp", "rbp")
        for base in order:
            known = self.fp if base == "rbp" else self.sp
            if known is not None and is_aligned(known) == is_aligned(cfa_offset):
                return base, cfa_offset + known
        return None

    @property
    def cfa_sp(self) -> int | None:
        """CFA - RSP when it is a real distance (not in the aligned space)."""
        return None if is_aligned(self.sp) else self.sp


ENTRY = FrameState(sp=8, fp=None)


@dataclass(frozen=True, slots=True)
class FrameWrite:
    """Bytes an instruction writes into the frame, as CFA offsets.

    ``length`` None means "from ``cfa_offset`` upward, length unknown" (a
    ``rep stos`` whose count is not a constant).
    """

    insn: Instruction
    cfa_offset: int
    length: int | None

    def overlaps(self, cfa_offset: int, length: int) -> bool:
        if self.length is None:
            return cfa_offset + length > self.cfa_offset
        return self.cfa_offset < cfa_offset + length and cfa_offset < self.cfa_offset + self.length


class FrameAnalysis:
    """Frame states before every reachable instruction of one function."""

    def __init__(self, code: FunctionCode) -> None:
        self.code = code
        self.before: dict[int, FrameState] = _dataflow(code)
        #: Realigned through a DRAP register with the frame laid out at A (see
        #: `ALIGNED`): the frame is keyed by A, from the aligned RBP or RSP.
        self.drap_anchored = _drap_anchored(code, self.before)

    def frame_rule(self, state: FrameState) -> tuple[str, int] | None:
        """The frame's key address as (register, offset) in ``state``, or None.

        The key is the CFA (RBP preferred, RSP outside the aligned space); in a
        DRAP-anchored function it is A instead, from RBP or RSP in the aligned
        space only: a probe and a release point must agree on one key, and only
        A can be read from RBP or RSP once the stack is realigned.
        """
        if self.drap_anchored:
            if is_aligned(state.fp):
                return "rbp", state.fp - ALIGNED          # type: ignore[operator]
            if is_aligned(state.sp):
                return "rsp", state.sp - ALIGNED          # type: ignore[operator]
            return None
        if state.fp is not None and not is_aligned(state.fp):
            return "rbp", state.fp
        if state.cfa_sp is not None:
            return "rsp", state.cfa_sp
        return None

    def state_before(self, addr: int) -> FrameState | None:
        return self.before.get(addr)

    def state_after(self, addr: int) -> FrameState | None:
        """The state once the instruction at ``addr`` has executed (fall-through)."""
        insn = self.code.at(addr)
        state = self.before.get(addr)
        if insn is None or state is None:
            return None
        return step(state, insn)

    def writes(self, insn: Instruction) -> list[FrameWrite]:
        """The frame bytes ``insn`` stores to, where they can be placed."""
        state = self.before.get(insn.addr)
        return frame_writes(insn, state) if state is not None else []

    def straight_line(self) -> list[Instruction]:
        """Instructions from the entry up to (not including) the first call, jump,
        return or trap: the region where the function initialises its frame."""
        out = []
        for i, insn in enumerate(self.code.instructions):
            if i == 0 and insn.flow == "call":
                continue        # the ftrace hook (call __fentry__): returns with all as it was
            if insn.flow is not None:
                break
            out.append(insn)
        return out


def _drap_anchored(code: FunctionCode, before: dict[int, FrameState]) -> bool:
    """One ``and rsp, -N``, then the DRAP prologue: the return address (read through
    the register that holds the CFA) pushed first, RBP pushed next, and RBP set to
    A - 16 wherever it is in the aligned space (A: RSP just after the ``and``)."""
    ands = [i for i in code.instructions if i.addr in before and _realigns(i)]
    if len(ands) != 1:
        return False
    pushes = []
    for insn in code.instructions[code.index_of(ands[0].addr) + 1:]:
        if insn.flow is not None:
            break
        if insn.is_push:
            pushes.append(insn)
            if len(pushes) == 2:
                break
        elif "rsp" in insn.regs_written or insn.mem_writes:
            break
    if len(pushes) != 2 or pushes[1].op_str != "rbp" or len(pushes[0].mem_reads) != 1:
        return False
    ref, state = pushes[0].mem_reads[0], before.get(pushes[0].addr)
    if state is None or ref.index is not None or ref.segment is not None \
            or ref.base in (None, "rsp", "rbp") or state.cfa_offset(ref.base, ref.disp) != -8:
        return False
    fps = {s.fp for s in before.values() if is_aligned(s.fp)}
    return fps == {ALIGNED + 16}


def _realigns(insn: Instruction) -> bool:
    return (insn.mnemonic == "and" and insn.imm is not None and insn.imm < 0
            and bool(insn.reg_ops) and full_reg(insn.reg_ops[0][0]) == "rsp"
            and not insn.mem_reads and not insn.mem_writes)


def frame_writes(insn: Instruction, state: FrameState) -> list[FrameWrite]:
    """What ``insn`` writes into the frame, given the state before it."""
    out: list[FrameWrite] = []
    if insn.is_push and state.sp is not None:
        size = 2 if insn.mnemonic.endswith("w") else 8
        out.append(FrameWrite(insn, -(state.sp + size), size))
    if insn.is_rep_string_store:
        start = state.reg("rdi")
        count = state.reg("rcx")
        elem = _string_elem(insn)
        if start is not None and start[0] == "cfa":
            length = count[1] * elem if count is not None and count[0] == "const" else None
            out.append(FrameWrite(insn, start[1], length))
        return out
    for ref in insn.mem_writes:
        off = _mem_cfa(ref, state)
        if off is not None:
            out.append(FrameWrite(insn, off, ref.size))
    return out


def _mem_cfa(ref: MemRef, state: FrameState) -> int | None:
    if ref.index is not None or ref.segment is not None:
        return None
    return state.cfa_offset(ref.base, ref.disp)


def _string_elem(insn: Instruction) -> int:
    m = insn.mnemonic
    return {"b": 1, "w": 2, "d": 4, "q": 8}.get(m[-1], 1)


def _dataflow(code: FunctionCode) -> dict[int, FrameState]:
    """Propagate states along fall-through and direct jumps until nothing changes."""
    if not code.instructions:
        return {}
    before: dict[int, FrameState] = {code.instructions[0].addr: ENTRY}
    work = [code.instructions[0].addr]
    budget = 50 * len(code.instructions) + 100
    visits: dict[int, int] = {}
    while work and budget:
        budget -= 1
        addr = work.pop()
        insn = code.at(addr)
        if insn is None:
            continue
        after = step(before[addr], insn)
        succs = []
        if insn.flow not in ("jump", "ret", "trap"):
            succs.append(insn.end)
        if insn.flow in ("jump", "cjump") and insn.target is not None:
            succs.append(insn.target)
        succs += code.detours.get(addr, ())      # out and straight back (static_cpu_has)
        for succ in succs:
            if not code.is_boundary(succ):
                continue
            old = before.get(succ)
            visits[succ] = visits.get(succ, 0) + 1
            new = after if old is None else _merge(old, after, visits[succ] <= _WIDEN_AFTER)
            if new != old:
                before[succ] = new
                work.append(succ)
    return before


def _merge(a: FrameState, b: FrameState, widen: bool = True) -> FrameState:
    """Keep what both paths agree on; two frame addresses in one register become
    "a pointer at or above the lower one" (a loop walking an array), while ``widen``."""
    theirs = dict(b.regs)
    regs = []
    for r, v in a.regs:
        w = theirs.get(r)
        if w == v:
            regs.append((r, v))
        elif widen and w is not None and v[0] in FRAME_POINTERS and w[0] in FRAME_POINTERS:
            regs.append((r, ("cfa+", min(v[1], w[1]))))
    return FrameState(a.sp if a.sp == b.sp else None, a.fp if a.fp == b.fp else None,
                      tuple(regs))


def step(state: FrameState, insn: Instruction) -> FrameState:
    """The state after ``insn`` executes and falls through."""
    m = insn.mnemonic
    sp, fp = state.sp, state.fp
    regs = dict(state.regs)
    dst = full_reg(insn.reg_ops[0][0]) if insn.reg_ops else None
    src = full_reg(insn.reg_ops[1][0]) if len(insn.reg_ops) > 1 else None
    only_regs = not insn.mem_reads and not insn.mem_writes

    if m.startswith("push"):
        sp = None if sp is None else sp + (2 if m.endswith("w") else 8)
    elif m.startswith("pop"):
        sp = None if sp is None else sp - (2 if m.endswith("w") else 8)
        if dst == "rbp":
            fp = None
    elif m == "leave":
        sp = None if fp is None else fp - 8
        fp = None
    elif m in ("sub", "add") and dst in ("rsp", "rbp") and insn.imm is not None and only_regs:
        delta = insn.imm if m == "sub" else -insn.imm
        if dst == "rsp":
            sp = None if sp is None else sp + delta
        else:
            fp = None if fp is None else fp + delta
    elif m == "mov" and only_regs and dst in ("rsp", "rbp") and src in ("rsp", "rbp"):
        value = sp if src == "rsp" else fp
        sp, fp = (value, fp) if dst == "rsp" else (sp, value)
    elif m == "and" and dst == "rsp" and only_regs and insn.imm is not None and insn.imm < 0:
        sp = ALIGNED                # realigned: RSP is A from here (see ALIGNED)
    elif m == "lea" and dst in ("rsp", "rbp"):
        ref = insn.address_ref
        off = state.cfa_offset(ref.base, ref.disp) if ref and ref.index is None else None
        value = None if off is None else -off
        sp, fp = (value, fp) if dst == "rsp" else (sp, value)
    else:
        if "rsp" in insn.regs_written and insn.flow not in ("call", "ret"):
            sp = None
        if "rbp" in insn.regs_written:
            fp = None

    _track_regs(state, insn, regs, dst, src, only_regs)
    if insn.flow == "call":
        for r in _CALLER_SAVED:
            regs.pop(r, None)
    return replace(state, sp=sp, fp=fp, regs=tuple(sorted(regs.items())))


def _track_regs(state: FrameState, insn: Instruction, regs: dict[str, Value],
                dst: str | None, src: str | None, only_regs: bool) -> None:
    """Constants and frame addresses in registers, for ``rep stos`` ranges."""
    m = insn.mnemonic
    value: Value | None = None
    if dst is not None and dst not in ("rsp", "rbp"):
        if m in ("mov", "movabs") and only_regs and insn.imm is not None and len(insn.reg_ops) == 1:
            value = ("const", insn.imm & 0xFFFF_FFFF_FFFF_FFFF)
        elif m == "xor" and src == dst and only_regs:
            value = ("const", 0)
        elif m == "mov" and only_regs and src in ("rsp", "rbp"):
            off = state.cfa_offset(src, 0)
            value = None if off is None else ("cfa", off)
        elif m == "mov" and only_regs and src is not None and src in regs:
            value = regs[src]
        elif m == "lea":
            value = _lea_value(state, insn.address_ref)
        elif m in ("add", "sub") and only_regs and insn.imm is not None and dst in regs:
            kind, v = regs[dst]
            value = (kind, v + (insn.imm if m == "add" else -insn.imm))
        elif m == "add" and only_regs and (_frame_reg(state, dst) or _frame_reg(state, src)):
            # pointer + index (either way round): still inside the same object
            value = ("cfa+", _frame_reg(state, dst) or _frame_reg(state, src))  # type: ignore[arg-type]
    for r in insn.regs_written:
        regs.pop(r, None)
    if value is not None and dst is not None:
        regs[dst] = value


def _lea_value(state: FrameState, ref: MemRef | None) -> Value | None:
    """A frame address computed by ``lea``: exact, or derived from one (with an index)."""
    if ref is None:
        return None
    exact = state.cfa_offset(ref.base, ref.disp) if ref.index is None else None
    if exact is not None:
        return ("cfa", exact)
    anchor = pointer_offset(state, ref.base)
    if anchor is None and ref.scale == 1:
        anchor = pointer_offset(state, ref.index)
    return None if anchor is None else ("cfa+", anchor)


def _frame_reg(state: FrameState, reg: str | None) -> int | None:
    """``reg``'s frame address (exact or the one it derives from); not RSP/RBP themselves."""
    return None if reg in (None, "rsp", "rbp") else pointer_offset(state, reg)


def pointer_offset(state: FrameState, reg: str | None) -> int | None:
    """The (lowest) CFA offset ``reg`` points at, if it holds a frame address."""
    if reg == "rsp":
        return None if state.sp is None else -state.sp
    if reg == "rbp":
        return None if state.fp is None else -state.fp
    v = state.reg(reg) if reg is not None else None
    return v[1] if v is not None and v[0] in FRAME_POINTERS else None
