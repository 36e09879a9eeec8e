"""The engine's `Symbolizer`, answered from a `kswgdb.symbols.program.Program`.

The engine describes a hit in the kernel's own terms (``s3_corrupter+0x1c/0x60``,
``file:line``, the storing instruction); the symbol layer knows how. This adapter
only converts between the two layers' types, so the engine can still be tested
with a hand-made symbolizer and no ELF.
"""

from __future__ import annotations

from kswgdb.symbols.disasm import Instruction
from kswgdb.symbols.lines import SourceLine
from kswgdb.symbols.program import Program
from kswgdb.watch.loststops import operand_address
from kswgdb.watch.target import Registers

#: Instructions shown on each side of the writer in a report.
CONTEXT = 3
#: Instructions whose memory write is a push at the new stack pointer.
PUSH_MNEMONICS = ("push", "call", "enter")


class ProgramSymbolizer:
    """`kswgdb.watch.engine.Symbolizer` over one kernel ELF."""

    def __init__(self, program: Program) -> None:
        self.program = program

    def symbol(self, addr: int) -> str:
        where = self.program.symbolize(addr)
        return str(where) if where is not None else f"{addr:#x}"

    def function(self, addr: int) -> str | None:
        """The function, or the assembly label (entry code), ``addr`` is in."""
        found = self.program.symtab.code_extent(addr)
        return found[0].name if found is not None else None

    def source(self, addr: int) -> SourceLine | None:
        return self.program.source_line(addr)

    def writer(self, pc: int, regs: Registers) -> tuple[int, str, tuple[tuple[int, str], ...]]:
        """The store behind a watch stop at ``pc`` (x86 reports the next instruction).

        At a function's first byte the write was the caller's ``call`` pushing the
        return address; that is said in words, since memory is not at hand here.
        """
        insn = self.program.writer_of(pc)
        code = self.program.disasm.code_at(pc)
        if code is not None and code.symbol.kind == "code" and (
                insn is None or not insn.writes_memory):
            # Entry code, and no instruction before the stop wrote memory: the
            # write was the CPU pushing the interrupt frame on its way in.
            return pc, ("(the CPU delivering an interrupt or exception: it pushed the "
                        f"interrupt frame; the stop is at {self.symbol(pc)})"), ()
        if insn is None:
            func = self.program.disasm.function_at(pc)
            if func is not None and pc == func.start:
                return pc, f"call {func.name} (the caller pushed its return address)", ()
            if func is not None:
                return pc, (f"(unknown: {pc:#x} is not an instruction boundary of {func.name}; "
                            "does the symbol file match the guest?)"), ()
            return pc, "(unknown: no instruction ends here)", ()
        return insn.addr, insn.text, self._context(insn)

    def is_store(self, pc: int) -> bool:
        """Does an instruction that stores to memory explain a watch stop at ``pc``?"""
        insn = self.program.writer_of(pc)
        return insn is not None and (bool(insn.mem_writes) or insn.is_rep_string_store
                                     or insn.is_push or insn.flow == "call")

    def store_misses(self, pc: int, regs: Registers, addr: int, length: int) -> bool:
        """Does the store behind a watch stop at ``pc`` provably miss ``[addr, addr+length)``?

        QEMU can report a watch stop at an instruction whose store went elsewhere
        (seen on the Debian kernel with QEMU 7.2: `vfs_getattr_nosec`'s ``mov [rsi+4],
        0`` reported against `vfs_statx`'s canary, the value unchanged, on 46 of 48
        calls). Only a plain store whose every operand address is known from the
        registers after it ran can prove that; pushes, calls, string stores and
        stores that move their own base register cannot, and count as hits.
        """
        insn = self.program.writer_of(pc)
        func = self.program.disasm.function_at(pc)
        here = func.at(pc) if func is not None else None
        if (insn is None or not insn.mem_writes or insn.is_push or insn.flow == "call"
                or insn.is_rep_string_store or (here is not None and here.is_rep_string_store)):
            return False
        for ref in insn.mem_writes:
            where = operand_address(ref, insn, regs)
            if where is None or (where < addr + length and addr < where + (ref.size or 8)):
                return False
        return True

    def stack_push(self, pc: int) -> bool:
        """Was the write that stopped at ``pc`` a push onto the stack?

        True for ``push``/``call``/``enter``, and for writes no instruction
        before ``pc`` explains (the CPU pushing an interrupt frame while
        delivering an interrupt, the stop then lands on the handler's first
        instruction). Inside a known function the exact instruction decides;
        in assembly stubs without a sized symbol every decoding that ends at
        ``pc`` is considered.
        """
        disasm = self.program.disasm
        func = disasm.function_at(pc)
        here = func.at(pc) if func is not None else None
        if here is not None and here.is_rep_string_store:
            # A `rep stos`/`rep movs` with elements left traps with PC still on
            # itself: the write is the string store, not a push.
            return False
        if func is not None and func.start < pc:
            insn = func.ending_at(pc)
            candidates = [insn] if insn is not None else []
        else:
            candidates = []
            for start in range(pc - 15, pc):
                try:
                    insn = disasm.decode_one(start, pc - start)
                except Exception:  # noqa: BLE001 - undecodable bytes are just not a candidate
                    continue
                if insn is not None and insn.end == pc:
                    candidates.append(insn)
        if any(c.mnemonic.startswith(PUSH_MNEMONICS) for c in candidates):
            return True
        return not any(c.writes_memory for c in candidates)

    def _context(self, insn: Instruction) -> tuple[tuple[int, str], ...]:
        func = self.program.disasm.function_at(insn.addr)
        if func is None or not func.is_boundary(insn.addr):
            return ((insn.addr, insn.text),)
        i = func.index_of(insn.addr)
        window = func.instructions[max(i - CONTEXT, 0):i + CONTEXT + 1]
        return tuple((w.addr, w.text) for w in window)
