"""Where a watch may be armed: after every write the function itself makes to it.

A watch armed before the function's own store into the watched bytes reports
that store as a corruption: a certain false positive on every call. KStackWatch
leaves the choice of ``fo`` to the user ("the instruction after the last
initialising store"); this module makes it from the code, the same way for every
mode (canary, ``so``/``wl``, ``var=NAME``, ``var=NAME[i]``), so that ``disasm``'s
marks and "arm here", ``run``'s refusals and the TUI all say the same thing.

The watched bytes are a CFA-relative range. Its writers are every instruction
of the function that may store into it, found from the frame dataflow of
`kswgdb.symbols.frame`:

- direct stores (``mov [rbp-0x18], rax``) and pushes;
- indexed and pointer stores (``mov [rsp+rcx*8], rdx``, ``mov [rax], rdx`` with
  rax walking a local array in a loop): they may write anywhere in the stack
  object (a DWARF local) their base points into, or up to the CFA when no local
  is known there;
- ``rep stos``/``rep movs``: from rdi for rcx elements (the whole object when
  rcx is not a constant);
- calls that are given a frame address in an argument register (memset,
  memcpy, an init helper): they may write that whole object.

A point ``fo`` is *safe* when, once the instruction there has run (arming
happens after it, like KStackWatch's kprobe post-handler), no writer can run
again on any path, loops included, while the watched bytes are still part of
the frame; and the slot is placeable there (inside the frame, with RSP or RBP
known). The suggestion is the first safe point that every path from the entry
to a return goes through; else the first safe point at all (it then arms only on
some paths); else no point is safe and the best candidate is the point after
which the fewest writers remain, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from kswgdb.symbols.disasm import FunctionCode, Instruction
from kswgdb.symbols.frame import (
    FRAME_POINTERS,
    FrameAnalysis,
    FrameState,
    is_aligned,
    pointer_offset,
)

WriterKind = Literal["store", "push", "indexed", "string", "call"]

#: Registers that carry the first six integer arguments (System V x86-64).
ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


@dataclass(frozen=True)
class Writer:
    """An instruction that may write ``[cfa_offset, cfa_offset + length)`` of the frame.

    ``length`` None: from ``cfa_offset`` up to the CFA (extent unknown).
    """

    insn: Instruction
    cfa_offset: int
    length: int | None
    kind: WriterKind

    @property
    def end(self) -> int:
        return 0 if self.length is None else self.cfa_offset + self.length

    def overlaps(self, cfa_offset: int, length: int) -> bool:
        return self.cfa_offset < cfa_offset + length and cfa_offset < self.end


@dataclass(frozen=True)
class ArmPlan:
    """The analysis' answer for one watched range of one function.

    ``fo`` is the suggested offset (safe, or the best candidate when ``safe`` is
    False); ``reason`` is one line saying why no point is safe, or that the point
    arms only on some paths; ``writers`` are the function's own writers of the range.
    """

    function: str
    start: int                      # the function's address
    cfa_offset: int
    length: int
    fo: int | None
    safe: bool
    every_path: bool
    reason: str
    writers: tuple[Writer, ...]
    safe_offsets: frozenset[int] = frozenset()
    late: tuple[tuple[int, Writer], ...] = ()      # (unsafe fo, a writer that runs after it)

    @property
    def placeable(self) -> bool:
        return self.fo is not None and self.safe

    def suggestion(self) -> str:
        """``fo=0x23``, or ``fo=0x23 (best candidate: REASON)``; "" if there is none."""
        if self.fo is None:
            return ""
        return f"fo={self.fo:#x}" if self.safe else f"fo={self.fo:#x} (not safe: {self.reason})"

    def check(self, fo: int, what: str) -> str | None:
        """None when arming at ``fo`` is safe (or not judged here); else one line saying
        which of the function's own writes it would report, and the fo to use."""
        if fo in self.safe_offsets:
            return None
        late = dict(self.late).get(fo)
        if late is None:
            return None
        where = f"+{late.insn.addr - self.start:#x} ({late.insn.text})"
        head = (f"fo={fo:#x} arms before {self.function} itself writes {what} at {where}: "
                "expect a hit from it")
        if self.safe:
            return f"{head}; fo={self.fo:#x} arms after every such write"
        return f"{head}; {self.reason}"


class Objects:
    """The frame's stack objects (DWARF locals) as CFA ranges, to bound pointer writes."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self.ranges = sorted((start, size) for start, size in ranges if size and size > 0)

    def containing(self, cfa_offset: int) -> tuple[int, int] | None:
        for start, size in self.ranges:
            if start <= cfa_offset < start + size:
                return start, size
        return None

    def extent(self, *candidates: int) -> tuple[int, int | None]:
        """(start, length) a pointer may write, given where it points (the first
        candidate) or the frame address it derives from (the others): the object
        containing one of them, else the object it is one past the end of (C's
        "one past" pointer), else from the lowest candidate up to the CFA."""
        for c in candidates:
            obj = self.containing(c)
            if obj is not None:
                return obj
        for c in candidates:
            for start, size in self.ranges:
                if c == start + size:
                    return start, size
        low = min(candidates)
        return low, (-low if low < 0 else None)


def frame_writers(frame: FrameAnalysis, objects: Objects | None = None) -> list[Writer]:
    """Every instruction of the function that may write its own frame, in address order."""
    objects = objects or Objects()
    out: list[Writer] = []
    for insn in frame.code.instructions:
        state = frame.state_before(insn.addr)
        if state is not None:
            out.extend(_writes(insn, state, objects))
    return out


def _writes(insn: Instruction, state: FrameState, objects: Objects) -> list[Writer]:
    out: list[Writer] = []
    if insn.is_push and state.sp is not None:
        size = 2 if insn.mnemonic.endswith("w") else 8
        out.append(Writer(insn, -(state.sp + size), size, "push"))
    if insn.is_rep_string_store:
        dst = state.reg("rdi")
        count = state.reg("rcx")
        if dst is not None and dst[0] in FRAME_POINTERS:
            elem = {"b": 1, "w": 2, "d": 4, "q": 8}.get(insn.mnemonic[-1], 1)
            if dst[0] == "cfa" and count is not None and count[0] == "const":
                out.append(Writer(insn, dst[1], count[1] * elem, "string"))
            else:
                start, length = objects.extent(dst[1])
                out.append(Writer(insn, start, length, "string"))
        return out
    if insn.flow == "call":
        for reg in ARG_REGS:
            off = pointer_offset(state, reg) if reg not in ("rsp", "rbp") else None
            if off is not None and off < 0:
                start, length = objects.extent(off)
                out.append(Writer(insn, start, length, "call"))
        return out
    for ref in insn.mem_writes:
        if ref.segment is not None or ref.base in (None, "rip"):
            continue
        exact = state.cfa_offset(ref.base, ref.disp) if ref.index is None else None
        if exact is not None:
            out.append(Writer(insn, exact, ref.size, "store"))
            continue
        base = pointer_offset(state, ref.base)
        if base is None and ref.index is not None and ref.scale == 1:
            base = pointer_offset(state, ref.index)
        if base is not None:
            start, length = objects.extent(base + ref.disp, base)
            out.append(Writer(insn, start, length, "indexed"))
    return out


# -- control flow -------------------------------------------------------------------


class Blocks:
    """Basic blocks of one function, their edges and dominators."""

    def __init__(self, code: FunctionCode, frame: FrameAnalysis | None = None) -> None:
        insns = code.instructions
        self.code = code
        leaders = {insns[0].addr} if insns else set()
        for i, insn in enumerate(insns):
            if i + 1 < len(insns) and (insn.flow in ("jump", "cjump", "ret", "trap")
                                       or insns[i + 1].addr != insn.end):    # a cold part
                leaders.add(insns[i + 1].addr)
            if insn.flow in ("jump", "cjump") and insn.target is not None \
                    and code.is_boundary(insn.target):
                leaders.add(insn.target)
            leaders.update(t for t in code.detours.get(insn.addr, ()) if code.is_boundary(t))
        # In instruction order: the entry's block is block 0, a cold part's come last.
        self.starts = [i.addr for i in insns if i.addr in leaders]
        self.block_of: dict[int, int] = {}
        self.members: list[list[Instruction]] = [[] for _ in self.starts]
        b = -1
        for insn in insns:
            if insn.addr in leaders:
                b += 1
            self.block_of[insn.addr] = b
            self.members[b].append(insn)
        n = len(self.starts)
        self.succs: list[list[int]] = [[] for _ in range(n)]
        self.exits: list[int] = []
        for b, members in enumerate(self.members):
            last = members[-1]
            inside = self._inside(last.target)
            if last.flow not in ("jump", "ret", "trap") and last.end in self.block_of:
                self.succs[b].append(self.block_of[last.end])
            back = [t for t in code.detours.get(last.addr, ()) if t in self.block_of]
            if back:            # out to a test and straight back (static_cpu_has)
                self.succs[b].extend(self.block_of[t] for t in back)
                continue
            if last.flow in ("jump", "cjump") and inside:
                self.succs[b].append(self.block_of[last.target])     # type: ignore[index]
            elif last.flow in ("jump", "cjump") and last.target is None:
                # Through a register or a table. With the frame gone (the return
                # address on top) it is a tail call; else it may go anywhere in here.
                state = frame.state_before(last.addr) if frame is not None else None
                if state is None or state.sp != 8:
                    self.succs[b].extend(range(n))
                self.exits.append(b)
            elif last.flow == "ret" or (last.flow == "jump" and not inside):
                self.exits.append(b)
        self.preds: list[list[int]] = [[] for _ in range(n)]
        for b, ss in enumerate(self.succs):
            for s in ss:
                self.preds[s].append(b)
        self.reachable = self._forward({0}) if n else set()
        self.idom = self._dominators()

    def _inside(self, target: int | None) -> bool:
        return target is not None and target in self.block_of

    def _forward(self, start: set[int]) -> set[int]:
        seen, work = set(start), list(start)
        while work:
            for s in self.succs[work.pop()]:
                if s not in seen:
                    seen.add(s)
                    work.append(s)
        return seen

    def backward(self, start: set[int]) -> set[int]:
        """Blocks from whose start one of ``start`` can be reached."""
        seen, work = set(start), list(start)
        while work:
            for p in self.preds[work.pop()]:
                if p not in seen:
                    seen.add(p)
                    work.append(p)
        return seen

    def _dominators(self) -> dict[int, int]:
        """Immediate dominators (Cooper, Harvey and Kennedy's iterative algorithm)."""
        order: list[int] = []
        seen: set[int] = set()
        if not self.starts:
            return {}
        stack = [(0, iter(self.succs[0]))]
        seen.add(0)
        while stack:
            node, it = stack[-1]
            nxt = next((s for s in it if s not in seen), None)
            if nxt is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(self.succs[nxt])))
        rpo = order[::-1]
        index = {b: i for i, b in enumerate(rpo)}
        idom = {0: 0}
        changed = True
        while changed:
            changed = False
            for b in rpo[1:]:
                preds = [p for p in self.preds[b] if p in idom]
                if not preds:
                    continue
                new = preds[0]
                for p in preds[1:]:
                    a, c = p, new
                    while a != c:
                        while index[a] > index[c]:
                            a = idom[a]
                        while index[c] > index[a]:
                            c = idom[c]
                    new = a
                if idom.get(b) != new:
                    idom[b] = new
                    changed = True
        return idom

    def dominates(self, a: int, b: int) -> bool:
        while True:
            if a == b:
                return True
            up = self.idom.get(b)
            if up is None or up == b:
                return False
            b = up

    def on_every_path(self, b: int) -> bool:
        """Every path from the entry to a return passes through block ``b``."""
        exits = [e for e in self.exits if e in self.reachable]
        return bool(exits) and all(self.dominates(b, e) for e in exits)


# -- the plan -----------------------------------------------------------------------


@dataclass
class FunctionWriters:
    """What one function writes into its own frame, and its blocks: computed once,
    then asked about any number of watched ranges."""

    frame: FrameAnalysis
    writers: list[Writer]
    blocks: Blocks

    @classmethod
    def of(cls, frame: FrameAnalysis, objects: Objects | None = None) -> FunctionWriters:
        return cls(frame, frame_writers(frame, objects), Blocks(frame.code, frame))

    def of_range(self, cfa_offset: int, length: int) -> list[Writer]:
        """The writers of any byte of the range that run while it is part of the frame."""
        out = []
        for w in self.writers:
            if not w.overlaps(cfa_offset, length):
                continue
            out.append(w)
        return out

    def releases(self, cfa_offset: int, length: int) -> tuple[tuple[int, str, int], ...]:
        """Instructions after which SP lies above the range, each with the CFA rule
        (register, offset) holding before it: where a watch on it must be removed."""
        end = cfa_offset + length
        frame = self.frame
        points = []
        for insn in frame.code.instructions:
            before = frame.state_before(insn.addr)
            after = frame.state_after(insn.addr)
            if before is None or before.sp is None or -before.sp >= end:
                continue                  # unknown, or SP already above the range
            released = insn.flow == "ret" or (after is not None and after.sp is not None
                                              and -after.sp >= end)
            rule = frame.frame_rule(before) if released else None
            if rule is not None:
                points.append((insn.addr, rule[0], rule[1]))
        return tuple(points)

    def _no_release(self, cfa_offset: int) -> str:
        """Why no instruction releases the range, in one line."""
        name = self.frame.code.name
        if cfa_offset >= 0:
            return (f"the watched bytes are at or above {name}'s CFA (an argument passed on "
                    "the stack, in the caller's frame): watch them in the caller")
        states = [s for s in self.frame.before.values()]
        if any(s.fp is not None and is_aligned(s.fp) for s in states):
            return (f"{name} realigns its stack through a copy of the entry SP (DRAP): its "
                    "CFA is known from neither RBP nor RSP, so no release point can be "
                    "matched to a frame; a watch would stay armed")
        if not any(i.flow == "ret" or i.flow == "jump" for i in self.frame.code.instructions
                   if self.frame.state_before(i.addr) is not None):
            return f"{name} never returns (no return reachable): a watch would stay armed"
        return (f"{name} never releases the watched bytes (SP is not followed to a return "
                "on some path): a watch would stay armed")

    def plan(self, cfa_offset: int, length: int, extra: Sequence[Writer] = ()) -> ArmPlan:
        """Where to arm a watch on ``[cfa_offset, +length)`` of the frame."""
        code, blocks = self.frame.code, self.blocks
        name = code.name
        if not self.releases(cfa_offset, length):
            return ArmPlan(name, code.start, cfa_offset, length, None, False, False,
                           self._no_release(cfa_offset), ())
        writers = sorted({*self.of_range(cfa_offset, length), *extra},
                         key=lambda w: w.insn.addr)
        writer_addrs = {w.insn.addr for w in writers}
        tainted = blocks.backward({blocks.block_of[a] for a in writer_addrs})
        safe: list[tuple[int, bool]] = []          # (fo, on every path)
        late: list[tuple[int, Writer]] = []
        safe_set: set[int] = set()
        for b in sorted(blocks.reachable):
            members = blocks.members[b]
            tail_tainted = any(s in tainted for s in blocks.succs[b])
            every = blocks.on_every_path(b)
            for i, insn in enumerate(members):
                if insn.flow is not None or not code.in_main(insn.addr) \
                        or not self._placeable(insn, cfa_offset, length):
                    continue            # fo is an offset into the function itself
                later = [x for x in members[i + 1:] if x.addr in writer_addrs]
                fo = insn.addr - code.start
                if later or tail_tainted:
                    first = later[0] if later else self._next_writer(b, writers)
                    if first is not None:
                        late.append((fo, next(w for w in writers if w.insn.addr == first.addr)))
                    continue
                safe.append((fo, every))
                safe_set.add(fo)
        chosen = _first_after_writer(code, safe, writer_addrs)
        if chosen is not None:
            fo, every = chosen
            reason = "" if every else (f"fo={fo:#x} is not on every path through {name}: "
                                       "calls that take another path are not watched")
            return ArmPlan(name, code.start, cfa_offset, length, fo, True, every, reason,
                           tuple(writers), frozenset(safe_set), tuple(late))
        return self._best_candidate(cfa_offset, length, writers, late)

    def _next_writer(self, block: int, writers: list[Writer]) -> Instruction | None:
        """The writer reachable first from the end of ``block`` (by address)."""
        reach = self.blocks._forward(set(self.blocks.succs[block]))
        cands = [w.insn for w in writers if self.blocks.block_of[w.insn.addr] in reach]
        return min(cands, key=lambda i: i.addr) if cands else None

    def _placeable(self, insn: Instruction, cfa_offset: int, length: int) -> bool:
        """After ``insn`` the range is inside the frame and RSP or RBP places it."""
        after = self.frame.state_after(insn.addr)
        if after is None or after.from_cfa(cfa_offset) is None \
                or self.frame.frame_rule(after) is None:
            return False
        if after.sp is not None and is_aligned(after.sp) == is_aligned(cfa_offset):
            return -after.sp <= cfa_offset
        return True

    def _best_candidate(self, cfa_offset: int, length: int, writers: list[Writer],
                        late: list[tuple[int, Writer]]) -> ArmPlan:
        name, start = self.frame.code.name, self.frame.code.start
        if not late:
            return ArmPlan(name, start, cfa_offset, length, None, False, False,
                           f"no instruction of {name} has the watched bytes in its frame "
                           "with RSP or RBP known", tuple(writers))
        # The fewest of the function's own writes still to come; then the earliest.
        reach_count: dict[int, int] = {}
        for fo, _w in late:
            b = self.blocks.block_of[start + fo]
            insn = self.frame.code.at(start + fo)
            reach = self.blocks._forward(set(self.blocks.succs[b]))
            n = sum(1 for w in writers if self.blocks.block_of[w.insn.addr] in reach
                    or (self.blocks.block_of[w.insn.addr] == b and w.insn.addr > insn.addr))
            reach_count[fo] = n
        fo, w = min(late, key=lambda fw: (not self.blocks.on_every_path(
            self.blocks.block_of[start + fw[0]]), reach_count[fw[0]], fw[0]))
        reason = (f"no point in {name} is after every write of the watched bytes: "
                  f"fo={fo:#x} is the best candidate, but {name} itself writes them at "
                  f"+{w.insn.addr - start:#x} ({w.insn.text}) after it")
        return ArmPlan(name, start, cfa_offset, length, fo, False,
                       self.blocks.on_every_path(self.blocks.block_of[start + fo]), reason,
                       tuple(writers), frozenset(), tuple(late))


def _first_after_writer(code: FunctionCode, safe: list[tuple[int, bool]],
                        writer_addrs: set[int]) -> tuple[int, bool] | None:
    """The first safe point on every path (else the first at all), written as KStackWatch's
    "instruction after the last store": a safe writer is replaced by its successor
    when that one is safe too."""
    for pool in ([s for s in safe if s[1]], safe):
        if not pool:
            continue
        fo, every = min(pool)
        ok = dict(safe)
        if code.start + fo in writer_addrs:
            nxt = code.after(code.start + fo)
            following = nxt.addr - code.start if nxt is not None else None
            if following in ok and ok[following] == every:
                fo = following
        return fo, every
    return None
