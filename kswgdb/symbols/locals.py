"""A function's locals and parameters as frame slots, from DWARF.

``var=mark`` watches a local by name. At -O2, GCC describes a variable whose
address is taken with ``DW_OP_fbreg N`` and the function's frame base as
``DW_OP_call_frame_cfa``: the slot is CFA+N, whatever the pc. Other variables
live in registers for part of the function (a location list); a watchpoint
needs memory, so those are refused with a message saying where they live.

The answer is a CFA offset; with a frame pointer (-fno-omit-frame-pointer) the
CFA is RBP+16 once ``mov rbp, rsp`` has run, so ``rbp_offset = cfa_offset + 16``.
`kswgdb.symbols.frame` converts it for any other arming point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from elftools.dwarf.die import DIE
from elftools.dwarf.dwarf_expr import DWARFExprOp

from kswgdb.errors import BadInput
from kswgdb.symbols.dwarf import DwarfInfo, PcRange

#: DWARF register numbers on x86-64 (System V psABI, figure 3.36).
DWARF_REGS = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip"]

#: CFA = RBP + 16 after ``push rbp; mov rbp, rsp``.
FP_CFA_OFFSET = 16

LocKind = Literal["frame", "register", "static", "value", "none", "complex"]


@dataclass(frozen=True)
class Location:
    """Where a variable is at one pc.

    kind "frame": memory at CFA + cfa_offset, or at base + offset when DWARF
    names a register directly (``DW_OP_breg6``); "register": only in ``reg``;
    "static": at ``addr``; "value": computed, not in memory; "none": not live.
    """

    kind: LocKind
    cfa_offset: int | None = None
    base: str | None = None
    offset: int | None = None
    reg: str | None = None
    addr: int | None = None


@dataclass(frozen=True)
class FrameVar:
    """A local or parameter, placed at one pc."""

    name: str
    type_name: str
    size: int | None            # element size for arrays, else the type's size
    total_size: int | None
    count: int | None           # array elements, None if not an array
    location: Location
    is_param: bool = False
    inlined: bool = False
    live: tuple[PcRange, ...] = field(default=())   # empty: valid in the whole function

    @property
    def cfa_offset(self) -> int | None:
        return self.location.cfa_offset

    @property
    def rbp_offset(self) -> int | None:
        """The slot as RBP+x, valid once the frame pointer is set up."""
        loc = self.location
        if loc.cfa_offset is not None:
            return loc.cfa_offset + FP_CFA_OFFSET
        if loc.base == "rbp":
            return loc.offset
        return None

    @property
    def on_stack(self) -> bool:
        return self.location.kind == "frame"


def frame_variables(dwarf: DwarfInfo, pc: int) -> list[FrameVar]:
    """Every variable and parameter of the function containing ``pc``, located at pc."""
    sub = dwarf.subprogram_at(pc)
    if sub is None:
        return []
    frame_base, _ = dwarf.location_at(sub, pc, "DW_AT_frame_base")
    out: list[FrameVar] = []
    for die, inlined in _walk(sub, pc, dwarf, inlined=False):
        name = dwarf.name(die)
        if name is None:
            continue
        ops, ranges = dwarf.location_at(die, pc)
        loc = _evaluate(ops, frame_base) if ops is not None else Location("none")
        type_die = dwarf.type_of(die)
        stripped = dwarf.strip(type_die)
        count = None
        size = total = dwarf.type_size(type_die)
        if stripped is not None and stripped.tag == "DW_TAG_array_type":
            count = dwarf.array_count(stripped)
            size = dwarf.type_size(dwarf.type_of(stripped))
        out.append(FrameVar(
            name=name, type_name=dwarf.type_name(type_die), size=size, total_size=total,
            count=count, location=loc, is_param=die.tag == "DW_TAG_formal_parameter",
            inlined=inlined, live=tuple(ranges),
        ))
    return out


def find_local(dwarf: DwarfInfo, func_name: str, name: str, pc: int) -> FrameVar:
    """The stack slot of local ``name`` at ``pc``; `BadInput` saying why if it has none."""
    all_vars = frame_variables(dwarf, pc)
    if not all_vars and dwarf.subprogram_at(pc) is None:
        raise BadInput(f"no DWARF for {func_name} at {pc:#x}: cannot find local {name!r}")
    matches = [v for v in all_vars if v.name == name]
    if not matches:
        names = sorted({v.name for v in all_vars if not v.inlined})
        raise BadInput(f"{func_name} has no local or parameter {name!r} "
                       f"(it has: {', '.join(names) or 'none'})")
    matches.sort(key=lambda v: (v.inlined, not v.on_stack))
    var = matches[0]
    loc = var.location
    where = f"{func_name}+{pc - _low(dwarf, pc):#x}"
    if loc.kind == "frame":
        return var
    if loc.kind == "register":
        raise BadInput(f"{name!r} lives in register {loc.reg} at {where}, not on the stack "
                       "(optimised into a register): a watchpoint needs memory")
    if loc.kind == "static":
        raise BadInput(f"{name!r} is a static variable at {loc.addr:#x}, not on the stack")
    if loc.kind == "value":
        raise BadInput(f"{name!r} has no memory at {where} (only its value is known)")
    if loc.kind == "none":
        live = ", ".join(f"{r.low:#x}-{r.high:#x}" for r in var.live)
        hint = f" (it lives at {live})" if live else " (optimised out)"
        raise BadInput(f"{name!r} has no stack location at {where}{hint}")
    raise BadInput(f"{name!r} has a location kswgdb cannot watch at {where} (split into pieces)")


def _low(dwarf: DwarfInfo, pc: int) -> int:
    sub = dwarf.subprogram_at(pc)
    ranges = dwarf.die_ranges(sub) if sub is not None else []
    return ranges[0].low if ranges else pc


def _walk(die: DIE, pc: int, dwarf: DwarfInfo, inlined: bool):
    """Variables and parameters under a subprogram, through blocks and inlined calls."""
    for child in die.iter_children():
        tag = child.tag
        if tag in ("DW_TAG_variable", "DW_TAG_formal_parameter"):
            yield child, inlined
        elif tag == "DW_TAG_lexical_block":
            yield from _walk(child, pc, dwarf, inlined)
        elif tag == "DW_TAG_inlined_subroutine":
            yield from _walk(child, pc, dwarf, True)


def _evaluate(ops: list[DWARFExprOp], frame_base: list[DWARFExprOp] | None) -> Location:
    """The few location shapes compilers use for stack variables."""
    if not ops:
        return Location("none")
    first = ops[0]
    if any(op.op_name in ("DW_OP_piece", "DW_OP_bit_piece") for op in ops):
        return Location("complex")
    if ops[-1].op_name == "DW_OP_stack_value" or first.op_name.startswith("DW_OP_lit") \
            or first.op_name == "DW_OP_implicit_value":
        return Location("value")
    if len(ops) != 1:
        return Location("complex")
    name = first.op_name
    if name == "DW_OP_fbreg":
        return _fbreg(first.args[0], frame_base)
    if name.startswith("DW_OP_breg"):
        reg = _reg(first)
        if reg in ("rbp", "rsp"):
            return Location("frame", base=reg, offset=first.args[-1])
        return Location("complex")
    if name.startswith("DW_OP_reg"):
        return Location("register", reg=_reg(first))
    if name == "DW_OP_addr":
        return Location("static", addr=first.args[0])
    return Location("complex")


def _fbreg(offset: int, frame_base: list[DWARFExprOp] | None) -> Location:
    if not frame_base:
        return Location("complex")
    fb = frame_base[0]
    if len(frame_base) == 1 and fb.op_name == "DW_OP_call_frame_cfa":
        return Location("frame", cfa_offset=offset)
    if len(frame_base) == 1 and fb.op_name.startswith("DW_OP_breg"):
        reg = _reg(fb)
        if reg in ("rbp", "rsp"):
            return Location("frame", base=reg, offset=fb.args[-1] + offset)
    if len(frame_base) == 1 and fb.op_name.startswith("DW_OP_reg") and _reg(fb) in ("rbp", "rsp"):
        return Location("frame", base=_reg(fb), offset=offset)
    return Location("complex")


def _reg(op: DWARFExprOp) -> str:
    name = op.op_name
    if name in ("DW_OP_regx", "DW_OP_bregx"):
        number = op.args[0]
    else:
        number = int(name.removeprefix("DW_OP_breg").removeprefix("DW_OP_reg"))
    return DWARF_REGS[number] if 0 <= number < len(DWARF_REGS) else f"dwarf{number}"
