"""Where a canary watch can see its own release by the stack-protector check.

QEMU 7.2's gdbstub flushes the whole TCG translation cache at every breakpoint
stop and at no watchpoint stop; on Linux the re-translation after each flush is
most of what an armed call costs, and the release-point breakpoint is one of
the two flushes. But every return path of a function with a canary runs the
stack-protector check, which *reads the watched slot itself* before the frame
is released::

    mov rax, [rsp+0x10]      ; the check reads the canary slot
    sub rax, gs:0x28
    jne .fail                ; -> call __stack_chk_fail (never returns)
    add rsp, 0x18            ; the release point
    ...

So the engine inserts the watch as an *access* watchpoint (``Z4``) instead of a
write watchpoint: the check's read stops the guest right after it, a watchpoint
stop with no flush, and the stop reply names the slot (``awatch:ADDR``), which
identifies the frame. At such a stop whose PC is the end of one of the
function's slot-reading instructions (`check_ends`), the watch is removed and
the guest resumed in one write; no release-point breakpoint is inserted.

This holds only when analysis proves it: every path from the probe to a release
point passes a read of the slot, and from each such read every path reaches a
release point within `MAX_WINDOW` instructions with no call on the way, except
a call that never returns (``__stack_chk_fail``) or a trap. Otherwise the
function keeps its release-point breakpoints.

The window it leaves: between the check and the release (``sub``, ``jne``,
sometimes a ``pop`` or two: 2-5 instructions) the slot is no longer watched, so
a write into it *from another CPU* in that window is missed. The owner itself
cannot write there unnoticed (the slot is above its SP until the release, so no
interrupt frame lands on it), and a corruption that happened before the check
is still caught as a hit. A write in the window lands on a value nothing reads
any more (the check has run): the function is unharmed, only the stray writer
goes unseen.
"""

from __future__ import annotations

from kswgdb.symbols.disasm import FunctionCode, Instruction
from kswgdb.symbols.frame import FrameAnalysis

#: The most instructions from a check's read to the release point, on any path.
MAX_WINDOW = 16


def check_ends(code: FunctionCode, frame: FrameAnalysis, probe: int,
               release_points: tuple[int, ...], slot_cfa: int, slot_len: int,
               noreturn: frozenset[int] = frozenset()) -> tuple[int, ...]:
    """The PCs just after each instruction that reads the slot, or ``()`` if not proven.

    ``probe`` is where the watch is armed (the instruction after ``fo``),
    ``release_points`` where SP moves above the slot, ``noreturn`` the
    addresses of functions that never return (``__stack_chk_fail``).
    """
    if not release_points or _has_indirect_jump(code):
        return ()
    reads = {i.addr for i in code.instructions
             if _reads_slot(i, frame, slot_cfa, slot_len)}
    if not reads or _release_reachable_unread(code, probe, set(release_points), reads, noreturn):
        return ()
    for addr in reads:
        if not _window_closes(code, code.at(addr), set(release_points), noreturn):
            return ()
    return tuple(sorted(code.at(a).end for a in reads))      # type: ignore[union-attr]


def _reads_slot(insn: Instruction, frame: FrameAnalysis, slot_cfa: int, slot_len: int) -> bool:
    """``insn`` reads a byte of the slot through a frame register, and writes no memory."""
    if insn.mem_writes or insn.flow is not None or insn.is_push:
        return False
    state = frame.state_before(insn.addr)
    if state is None:
        return False
    for ref in insn.mem_reads:
        if ref.segment is not None or ref.index is not None:
            continue
        offset = state.cfa_offset(ref.base, ref.disp)
        if offset is not None and ref.size and \
                offset < slot_cfa + slot_len and slot_cfa < offset + ref.size:
            return True
    return False


def _successors(code: FunctionCode, insn: Instruction, noreturn: frozenset[int]) -> list[int]:
    """Where control goes next inside the function (a call returns, unless it never does)."""
    if insn.flow in ("ret", "trap"):
        return []
    out = []
    if insn.flow == "call":
        if insn.target in noreturn:
            return []
        out.append(insn.end)
    elif insn.flow != "jump":
        out.append(insn.end)
    if insn.flow in ("jump", "cjump") and insn.target is not None:
        out.append(insn.target)
    out += code.detours.get(insn.addr, ())
    return [a for a in out if code.at(a) is not None]


def _release_reachable_unread(code: FunctionCode, probe: int, releases: set[int],
                              reads: set[int], noreturn: frozenset[int]) -> bool:
    """Can the function get from the probe to a release point without reading the slot?"""
    seen: set[int] = set()
    work = [probe]
    while work:
        addr = work.pop()
        if addr in seen:
            continue
        seen.add(addr)
        if addr in reads:
            continue                # read here: what follows is the check's window
        if addr in releases:
            return True
        insn = code.at(addr)
        if insn is None:
            return True             # cannot follow: assume the worst
        work += _successors(code, insn, noreturn)
    return False


def _window_closes(code: FunctionCode, read: Instruction | None, releases: set[int],
                   noreturn: frozenset[int]) -> bool:
    """From the read, does every path reach a release point soon, calling nothing that returns?"""
    if read is None:
        return False
    work = [(a, 1) for a in _successors(code, read, noreturn)]
    if read.addr in releases:
        return True                 # the read is the release itself
    if not work:
        return False
    seen: set[int] = set()
    while work:
        addr, steps = work.pop()
        if addr in releases:
            continue
        if addr in seen:
            continue
        seen.add(addr)
        insn = code.at(addr)
        if insn is None or steps > MAX_WINDOW:
            return False
        if insn.flow == "trap" or (insn.flow == "call" and insn.target in noreturn):
            continue
        if insn.flow in ("call", "ret") or insn.mem_writes:
            return False            # the slot would stay unwatched far longer
        nxt = _successors(code, insn, noreturn)
        if insn.flow == "jump" and not nxt:
            return False            # a tail jump out of the function with the slot not released
        work += [(a, steps + 1) for a in nxt]
    return True


def _has_indirect_jump(code: FunctionCode) -> bool:
    """A jump table may land anywhere: no path can be proven to pass a read."""
    return any(i.flow in ("jump", "cjump") and i.target is None for i in code.instructions)
