"""Watchpoint stops that QEMU 7.2 lost, found in the other vCPUs' registers.

Why this exists (QEMU 7.2, single-threaded TCG, two or more vCPUs): when vCPU
A hits a watchpoint, ``cpu_handle_guest_debug`` records A as the stop CPU and
asks the main loop to stop the VM. Until the main loop does so, the round-robin
thread runs vCPU B. If B reaches a breakpoint or a watchpoint in that window,
B becomes the stop CPU, and ``gdb_vm_state_change`` reports B only. A's
``cpu->watchpoint_hit`` is then never cleared (only a reported stop of A clears
it). A's next access to any page holding a watchpoint takes
``cpu_check_watchpoint``'s "re-entered" path, which takes the I/O thread lock;
when that access is an interrupt or exception frame being pushed (delivery runs
with that lock held), QEMU aborts with ``qemu_mutex_lock_iothread_impl:
assertion failed: (!qemu_mutex_iothread_locked())``. The hit itself is lost too.

A vCPU that stopped that way is parked right after the access (its PC is the
next instruction; a ``rep`` store keeps its PC on itself). So at every stop the
target reads the other vCPUs' registers, asks `LostStopFinder.find` whether the
instruction that vCPU last ran touched a live watchpoint, and if so single-steps
that vCPU alone (interrupts masked): QEMU then reports the stale hit as a stop
of that vCPU and clears it. The engine gets the hit as it would have arrived,
with the registers from before the step.
"""

from __future__ import annotations

from collections.abc import Iterable

from kswgdb.symbols.disasm import Disassembler, Instruction, MemRef, full_reg
from kswgdb.watch.target import Registers

Range = tuple[int, int]
MASK = 0xFFFF_FFFF_FFFF_FFFF
#: Bytes a string element or a stack slot can have.
_STRING_SIZES = {"b": 1, "w": 2, "d": 4, "q": 8}


class LostStopFinder:
    """Did a parked vCPU's last instruction touch one of the live watchpoints?"""

    def __init__(self, disasm: Disassembler) -> None:
        self.disasm = disasm

    def find(self, regs: Registers, writes: Iterable[Range], reads: Iterable[Range]
             ) -> tuple[int, str] | None:
        """(watched address, "write" | "read") the vCPU's last access hit, or None."""
        pc = regs.pc
        written, read = self.accesses(pc, regs)
        for ranges, watches, access in ((written, writes, "write"), (read, reads, "read")):
            for addr, length in watches:
                if any(a < addr + length and addr < a + n for a, n in ranges):
                    return addr, access
        return None

    def accesses(self, pc: int, regs: Registers) -> tuple[list[Range], list[Range]]:
        """(bytes written, bytes read) by the instruction that ended at ``pc``."""
        written: list[Range] = []
        read: list[Range] = []
        func = self.disasm.function_at(pc)
        here = func.at(pc) if func is not None else None
        if here is not None and here.is_rep_string_store:
            size = _STRING_SIZES.get(here.mnemonic[-1], 8)
            down = bool(regs.get("eflags") & 0x400)
            rdi = regs.get("rdi")
            written.append(((rdi + size) & MASK if down else (rdi - size) & MASK, size))
        sp = regs.sp
        if func is not None and pc == func.start:
            written.append((sp, 8))         # a call pushed its return address
        insn = self.disasm.instruction_before(pc)
        if insn is None:
            return written, read
        m = insn.mnemonic
        if insn.is_push:
            written.append((sp, 8))
        if m.startswith(("pop", "leave")) or insn.flow == "call":
            # After a `call` instruction means a `ret` brought us back here.
            read.append(((sp - 8) & MASK, 8))
        for ref in insn.mem_writes:
            where = operand_address(ref, insn, regs)
            if where is not None:
                written.append((where, ref.size or 8))
        for ref in insn.mem_reads:
            where = operand_address(ref, insn, regs)
            if where is not None:
                read.append((where, ref.size or 8))
        return written, read


def operand_address(ref: MemRef, insn: Instruction, regs: Registers) -> int | None:
    """The operand's address from the registers *after* ``insn`` ran.

    Right only when the instruction did not change the registers it addresses
    with (``mov [rdx+8], rax`` yes, ``pop qword [rsp]`` no): otherwise None.
    """
    if ref.segment is not None:
        return None
    fixed = ref.target(insn.end)
    if fixed is not None:
        return fixed
    used = {full_reg(ref.base), full_reg(ref.index)} - {None}
    if used & insn.regs_written or "rsp" in used and (insn.is_push or insn.flow == "call"):
        return None
    addr = ref.disp
    if ref.base is not None:
        addr += regs.get(full_reg(ref.base) or "")
    if ref.index is not None:
        addr += regs.get(full_reg(ref.index) or "") * ref.scale
    return addr & MASK
