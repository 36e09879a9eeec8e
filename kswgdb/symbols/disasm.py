"""x86-64 instructions of a function, decoded from the ELF with capstone.

Three callers need them: the config check (``fo`` must sit on an instruction
boundary inside the function), the frame and canary analysis (which store
puts the canary where), and the hit report: x86 data breakpoints trap *after*
the store, so the reported PC is the instruction following the writer, and the
writer is found by decoding the containing function from its start and taking
the instruction that ends at PC. Decoding backwards from an arbitrary address is
ambiguous on x86, which is why the function start matters.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

import capstone
from capstone import x86_const as X

from kswgdb.errors import BadInput
from kswgdb.symbols.elf import Symbol, SymbolTable

Flow = Literal["call", "jump", "cjump", "ret", "trap"] | None

_GPR = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"]
_FULL: dict[str, str] = {}
for _r in _GPR:
    _b = _r[1:]                                    # ax, bx, ..., sp
    _FULL.update({_r: _r, "e" + _b: _r, _b: _r})
    _FULL[_b[0] + "l" if _b.endswith("x") else _b + "l"] = _r
    if _b.endswith("x"):
        _FULL[_b[0] + "h"] = _r
for _n in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _FULL[f"r{_n}{_suffix}"] = f"r{_n}"
_FULL["rip"] = "rip"

_TRAPS = {"ud2", "int3", "hlt", "ud1", "ud0"}
_REP_STRING = ("stos", "movs")


def full_reg(name: str | None) -> str | None:
    """The 64-bit register a (sub-)register belongs to: ``edi`` -> ``rdi``."""
    if name is None:
        return None
    return _FULL.get(name, name)


@dataclass(frozen=True, slots=True)
class MemRef:
    """A memory operand: ``segment:[base + index*scale + disp]``, ``size`` bytes."""

    base: str | None
    index: str | None
    scale: int
    disp: int
    segment: str | None
    size: int

    def target(self, insn_end: int) -> int | None:
        """The absolute address when it does not depend on a register (rip or none)."""
        if self.index is not None:
            return None
        if self.base == "rip":
            return (insn_end + self.disp) & 0xFFFF_FFFF_FFFF_FFFF
        if self.base is None:
            return self.disp & 0xFFFF_FFFF_FFFF_FFFF
        return None

    def __str__(self) -> str:
        parts = [p for p in (self.base, self.index and f"{self.index}*{self.scale}") if p]
        if self.disp or not parts:
            parts.append(f"{self.disp:#x}" if self.disp >= 0 or not parts else f"-{-self.disp:#x}")
        inner = "+".join(parts).replace("+-", "-")
        return f"{self.segment + ':' if self.segment else ''}[{inner}]"


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded instruction, with what the analyses need already extracted."""

    addr: int
    raw: bytes
    mnemonic: str
    op_str: str
    flow: Flow = None
    target: int | None = None                       # direct call/jump destination
    mem_reads: tuple[MemRef, ...] = ()
    mem_writes: tuple[MemRef, ...] = ()             # explicit operands only
    regs_read: frozenset[str] = frozenset()         # 64-bit names
    regs_written: frozenset[str] = frozenset()      # 64-bit names
    reg_ops: tuple[tuple[str, int, bool], ...] = ()  # (register, size, written) in operand order
    imm: int | None = None
    address_ref: MemRef | None = None               # lea's operand: an address, not an access

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def end(self) -> int:
        return self.addr + len(self.raw)

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()

    @property
    def is_rep_string_store(self) -> bool:
        """``rep stos``/``rep movs``: traps after each element with PC still here."""
        m = self.mnemonic
        return m.startswith("rep") and any(s in m for s in _REP_STRING)

    @property
    def is_push(self) -> bool:
        return self.mnemonic.startswith("push")

    @property
    def writes_memory(self) -> bool:
        """An explicit store, a push, or a call (which pushes the return address)."""
        return bool(self.mem_writes) or self.is_push or self.flow == "call"

    def __str__(self) -> str:
        return f"{self.addr:#x}: {self.text}"


@dataclass
class FunctionCode:
    """A function's instructions, searchable by address.

    ``instructions`` holds the function's own instructions in address order, then
    those of its cold parts (``parts``), each in address order: GCC moves unlikely
    paths (error returns, and often the whole epilogue) to ``NAME.cold`` in
    ``.text.unlikely`` and jumps there and back. The function's entry is always
    ``instructions[0]``; address lookups (`at`, `containing`, ...) cover every part.
    """

    symbol: Symbol
    instructions: list[Instruction]
    #: Direct jumps out of the function that come back into it (Linux's
    #: ``static_cpu_has``: ``jmp`` to a test in ``.altinstr_aux`` that jumps back to
    #: one of two labels here): jump address -> the addresses here it comes back to.
    detours: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: Cold parts (``NAME.cold``) analysed with the function: their instructions
    #: follow the function's own in ``instructions``.
    parts: tuple[Symbol, ...] = ()
    _starts: list[int] = field(init=False, repr=False)
    _order: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._order = sorted(range(len(self.instructions)),
                             key=lambda i: self.instructions[i].addr)
        self._starts = [self.instructions[i].addr for i in self._order]

    @property
    def name(self) -> str:
        return self.symbol.name

    @property
    def start(self) -> int:
        return self.symbol.addr

    def in_main(self, addr: int) -> bool:
        """True for an address of the function itself, False for one of a cold part."""
        return addr in self.symbol

    def part_of(self, addr: int) -> Symbol:
        """The symbol (the function, or one of its cold parts) whose code holds ``addr``."""
        return next((p for p in self.parts if addr in p), self.symbol)

    def is_boundary(self, addr: int) -> bool:
        """True if an instruction starts exactly at ``addr``."""
        i = bisect.bisect_left(self._starts, addr)
        return i < len(self._starts) and self._starts[i] == addr

    def index_of(self, addr: int) -> int:
        i = bisect.bisect_left(self._starts, addr)
        if i == len(self._starts) or self._starts[i] != addr:
            raise KeyError(addr)
        return self._order[i]

    def at(self, addr: int) -> Instruction | None:
        i = bisect.bisect_left(self._starts, addr)
        if i < len(self._starts) and self._starts[i] == addr:
            return self.instructions[self._order[i]]
        return None

    def containing(self, addr: int) -> Instruction | None:
        """The instruction whose bytes include ``addr``."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.instructions[self._order[i]].end:
            return self.instructions[self._order[i]]
        return None

    def after(self, addr: int) -> Instruction | None:
        """The instruction following the one at ``addr`` (in the same part)."""
        insn = self.instructions[self.index_of(addr)]
        return self.at(insn.end)

    def ending_at(self, pc: int) -> Instruction | None:
        """The instruction whose last byte is just before ``pc``."""
        i = bisect.bisect_left(self._starts, pc) - 1
        if i >= 0 and self.instructions[self._order[i]].end == pc:
            return self.instructions[self._order[i]]
        return None

    def nearest_boundaries(self, addr: int) -> tuple[int | None, int | None]:
        """Function offsets of the function's own boundaries just before and after ``addr``."""
        starts = [a for a in self._starts if a in self.symbol]
        i = bisect.bisect_right(starts, addr)
        before = starts[i - 1] - self.start if i > 0 else None
        after = starts[i] - self.start if i < len(starts) else None
        return before, after


class Disassembler:
    """Decodes functions of one symbol table on demand and keeps them."""

    def __init__(self, symtab: SymbolTable) -> None:
        self.symtab = symtab
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._cs.detail = True
        self._functions: dict[int, FunctionCode] = {}

    def function(self, func: str | Symbol) -> FunctionCode:
        """All instructions of a function, by name or symbol."""
        sym = self.symtab.function(func) if isinstance(func, str) else func
        if sym.addr not in self._functions:
            if sym.size == 0:
                raise BadInput(f"{sym.name} has no size in the symbol table: cannot decode it")
            code = self.symtab.read_bytes(sym.addr, sym.size)
            insns = self.decode(code, sym.addr)
            parts = self._cold_parts(sym, insns)
            for part in parts:
                insns += self.decode(self.symtab.read_bytes(part.addr, part.size), part.addr)
            self._functions[sym.addr] = FunctionCode(sym, insns, self._detours(sym, insns, parts),
                                                     parts)
        return self._functions[sym.addr]

    def _cold_parts(self, sym: Symbol, insns: list[Instruction]) -> tuple[Symbol, ...]:
        """The ``NAME.cold`` (or ``NAME.cold.N``) functions ``sym`` jumps into, in the same
        section: the unlikely paths GCC moved out, that belong to ``sym``'s frame.

        Found through the jumps, not the name alone: a static name may repeat, and
        each copy's cold part is the one its own code jumps to."""
        section = self.symtab.section_name(sym.addr)
        cold = f"{sym.name}.cold"
        found: dict[int, Symbol] = {}
        for insn in insns:
            target = insn.target
            if insn.flow not in ("jump", "cjump") or target is None or target in sym:
                continue
            part = self.symtab.containing(target, "func")
            if part is None or part.addr in found or not part.size or not (
                    part.name == cold or part.name.startswith(cold + ".")):
                continue
            if section is not None and self.symtab.section_name(part.addr) == section:
                found[part.addr] = part
        return tuple(sorted(found.values(), key=lambda p: p.addr))

    def _detours(self, sym: Symbol, insns: list[Instruction], parts: tuple[Symbol, ...] = ()
                 ) -> dict[int, tuple[int, ...]]:
        """Jumps out of ``sym`` (or its cold ``parts``) to code that is no function's start
        and that jumps straight back in (a few instructions that never touch RSP or memory)."""
        out = {}
        for insn in insns:
            target = insn.target
            if insn.flow != "jump" or target is None or target in sym \
                    or any(target in p for p in parts):
                continue
            found = self.symtab.containing(target, "func")
            if found is not None and found.addr == target:
                continue                    # a tail call
            back = self._jumps_back(sym, target)
            if back:
                out[insn.addr] = back
        return out

    def _jumps_back(self, sym: Symbol, start: int, limit: int = 8) -> tuple[int, ...]:
        code = b""
        for n in (16 * limit, 32, 16):         # what the section holds, up to 16 * limit
            try:
                code = self.symtab.read_bytes(start, n)
                break
            except BadInput:
                continue
        back: list[int] = []
        for insn in self.decode(code, start)[:limit]:
            if insn.flow in ("jump", "cjump") and insn.target is not None and insn.target in sym:
                back.append(insn.target)
                if insn.flow == "jump":
                    return tuple(back)
                continue
            if insn.flow is not None or insn.mem_writes or insn.is_push \
                    or "rsp" in insn.regs_written:
                return ()
        return ()

    def function_at(self, pc: int) -> FunctionCode | None:
        sym = self.symtab.containing(pc, "func")
        return self.function(sym) if sym is not None and sym.size else None

    def code_at(self, pc: int) -> FunctionCode | None:
        """The code around ``pc`` decoded from a known start: a function, or an
        assembly label (local, untyped, unsized: entry stubs) up to the next symbol."""
        func = self.function_at(pc)
        if func is not None:
            return func
        found = self.symtab.code_extent(pc)
        if found is None:
            return None
        sym, end = found
        if sym.addr not in self._functions:
            code = self.symtab.read_bytes(sym.addr, end - sym.addr)
            self._functions[sym.addr] = FunctionCode(sym, self.decode(code, sym.addr))
        return self._functions[sym.addr]

    def decode(self, code: bytes, addr: int) -> list[Instruction]:
        """Decode a byte run; undecodable bytes become one-byte ``(bad)`` entries."""
        out: list[Instruction] = []
        off = 0
        while off < len(code):
            for insn in self._cs.disasm(code[off:], addr + off):
                out.append(_convert(insn))
                off += insn.size
            if off < len(code):
                out.append(Instruction(addr + off, code[off:off + 1], "(bad)", "", flow="trap"))
                off += 1
        return out

    def decode_one(self, addr: int, max_len: int = 15) -> Instruction | None:
        """The single instruction at ``addr`` (no function needed)."""
        for insn in self._cs.disasm(self.symtab.read_bytes(addr, max_len), addr, 1):
            return _convert(insn)
        return None

    def instruction_before(self, pc: int) -> Instruction | None:
        """The instruction that ends at ``pc``: the writer of a data breakpoint hit.

        Decodes forward from a known start: the containing function, or the
        assembly label (entry code: local or untyped symbols) before ``pc``. If
        ``pc`` is a function's first byte, the writer was the caller's ``call``
        (it pushed the return address) or the CPU delivering an interrupt: None.
        None too if ``pc`` is not on a boundary of that decoding, or if no symbol
        gives a start: x86 cannot be decoded backwards, and a guess could begin
        in the middle of an instruction.
        """
        func = self.code_at(pc)
        if func is not None:
            # Off a boundary, our decoding and the guest disagree (patched code, or a
            # different build): guessing would name a wrong instruction.
            return func.ending_at(pc) if func.is_boundary(pc) else None
        prev = self.code_at(pc - 1)
        if prev is not None:
            return prev.ending_at(pc)
        # No known start to decode forward from: scanning back could start in
        # the middle of an instruction, so say nothing rather than guess.
        return None

    def likely_writer(self, pc: int) -> Instruction | None:
        """Like `instruction_before`, but knows that ``rep stos``/``rep movs`` trap
        with PC still on themselves while elements remain."""
        before = self.instruction_before(pc)
        if before is not None and before.writes_memory:
            return before
        func = self.function_at(pc)
        here = func.at(pc) if func is not None else None
        if here is not None and here.is_rep_string_store:
            return here
        return before

    def _scan_back(self, pc: int) -> Instruction | None:
        candidates: list[Instruction] = []
        for start in range(pc - 15, pc):
            try:
                insn = self.decode_one(start, pc - start)
            except BadInput:
                continue
            if insn is not None and insn.end == pc:
                candidates.append(insn)
        if not candidates:
            return None
        stores = [c for c in candidates if c.writes_memory]
        return (stores or candidates)[0]


def _convert(insn) -> Instruction:
    """capstone's detailed instruction -> our plain, picklable one."""
    reads: list[MemRef] = []
    writes: list[MemRef] = []
    reg_ops: list[tuple[str, int, bool]] = []
    imm = None
    address_ref = None
    for op in insn.operands:
        if op.type == X.X86_OP_MEM:
            m = op.mem
            ref = MemRef(
                base=full_reg(insn.reg_name(m.base)) if m.base else None,
                index=full_reg(insn.reg_name(m.index)) if m.index else None,
                scale=m.scale, disp=m.disp,
                segment=insn.reg_name(m.segment) if m.segment else None, size=op.size,
            )
            if insn.mnemonic == "lea":
                address_ref = ref
                continue
            if insn.mnemonic.startswith("nop"):
                continue
            if op.access & capstone.CS_AC_WRITE:
                writes.append(ref)
            if op.access & capstone.CS_AC_READ or not op.access:
                reads.append(ref)
        elif op.type == X.X86_OP_REG:
            reg_ops.append((insn.reg_name(op.reg), op.size, bool(op.access & capstone.CS_AC_WRITE)))
        elif op.type == X.X86_OP_IMM:
            imm = op.imm
    regs_read, regs_written = insn.regs_access()
    flow: Flow = None
    target = None
    if insn.group(capstone.CS_GRP_CALL):
        flow = "call"
    elif insn.group(capstone.CS_GRP_RET) or insn.mnemonic.startswith(("iret", "sysret")):
        flow = "ret"
    elif insn.group(capstone.CS_GRP_JUMP):
        flow = "jump" if insn.mnemonic == "jmp" else "cjump"
    elif insn.mnemonic in _TRAPS:
        flow = "trap"
    if flow in ("call", "jump", "cjump") and imm is not None and not reads:
        target = imm & 0xFFFF_FFFF_FFFF_FFFF
    return Instruction(
        addr=insn.address, raw=bytes(insn.bytes), mnemonic=insn.mnemonic, op_str=insn.op_str,
        flow=flow, target=target, mem_reads=tuple(reads), mem_writes=tuple(writes),
        regs_read=frozenset(full_reg(insn.reg_name(r)) for r in regs_read),
        regs_written=frozenset(full_reg(insn.reg_name(r)) for r in regs_written),
        reg_ops=tuple(reg_ops), imm=imm, address_ref=address_ref,
    )
