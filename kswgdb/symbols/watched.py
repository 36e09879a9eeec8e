"""The bytes a watch covers, as a CFA range: one rule for `run` and `disasm`.

``var=NAME[i]`` and ``so=``/``wl=`` are resolved here, once, so that ``kswgdb
disasm --var 'buf[8]'`` means exactly what ``run --watch '... var=buf[8]'``
means (and refuses exactly what it refuses, with the same words).
"""

from __future__ import annotations

from dataclasses import dataclass

from kswgdb.errors import BadInput
from kswgdb.symbols.frame import FrameState
from kswgdb.symbols.locals import FrameVar
from kswgdb.symbols.program import Program
from kswgdb.symbols.prologue import FrameSlot, FunctionAnalysis

WATCH_LENGTHS = (1, 2, 4, 8)


@dataclass(frozen=True)
class WatchedVar:
    """A local (or one element of it) placed in the frame."""

    var: FrameVar
    ref: str                    # "mark", "buf[8]"
    cfa_offset: int | None      # None when DWARF names a register the CFA cannot place
    length: int
    index_offset: int

    @property
    def slot(self) -> FrameSlot | None:
        if self.cfa_offset is None:
            return None
        return FrameSlot(self.cfa_offset, self.length, self.ref)


def watched_var(program: Program, analysis: FunctionAnalysis, name: str, index: int | None,
                pc: int, state: FrameState | None) -> WatchedVar:
    """``var=name[index]`` at ``pc`` (the arming point); BadInput saying why not."""
    ref = name if index is None else f"{name}[{index}]"
    var = program.local(analysis.symbol.name, name, pc)
    if var.count is not None and index is None:
        raise BadInput(f"{name} is an array of {var.count} x {var.size} bytes: "
                       f"name one element, e.g. var={name}[{var.count - 1}]")
    if index is not None:
        if var.count is None:
            raise BadInput(f"var={ref}: {name} is not an array ({var.type_name})")
        if index >= var.count:
            raise BadInput(f"var={ref}: index out of range ({name} has {var.count} elements)")
    length = var.size or 0
    if length not in WATCH_LENGTHS:
        raise BadInput(f"{ref} is {length} bytes ({var.type_name}); a watch covers 1, 2, 4 or 8"
                       " bytes: name a smaller part, or use so=/wl=")
    index_off = (index or 0) * length
    loc = var.location
    if loc.cfa_offset is not None:
        cfa = loc.cfa_offset + index_off
    elif state is not None and loc.base is not None and loc.offset is not None:
        cfa = state.cfa_offset(loc.base, loc.offset + index_off)
    else:
        cfa = None
    return WatchedVar(var, ref, cfa, length, index_off)


def body_state(analysis: FunctionAnalysis) -> FrameState | None:
    """The frame state once the straight-line prologue has run: what ``disasm --so``
    is relative to."""
    region = analysis.frame.straight_line()
    return analysis.frame.state_after(region[-1].addr) if region else None


def sp_range(state: FrameState | None, so: int, wl: int) -> FrameSlot | None:
    """``so=``/``wl=`` (relative to SP at the arming point) as a CFA range."""
    if state is None or state.sp is None:
        return None
    return FrameSlot(so - state.sp, wl, f"sp{so:+#x}")
