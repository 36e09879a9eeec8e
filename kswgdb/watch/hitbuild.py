"""What a hit is made of: a `Hit` from a watch stop, and the frame-pointer walk.

Kept out of `Engine`, which decides *when* something is a hit; this decides
*what* it says: the writer (instruction, symbol, source), who owned the slot
and who wrote it, the guest's clock, and a backtrace (gdb's unwinder when the
caller has one, else the RBP chain within the current stack).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kswgdb.watch import guest
from kswgdb.watch.frames import ArmedWatch
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hits import BacktraceFrame, Hit, Writer
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.target import Registers, Stop

MAX_BACKTRACE = 32

ReadFn = Callable[[int, int], bytes]


class HitBuilder:
    """Assembles hits for one engine (its layout, symbolizer, memory reader, unwinder)."""

    def __init__(self, layout: GuestLayout, symbolizer: Any, read: ReadFn,
                 backtracer: Callable[[Stop, Registers], list[BacktraceFrame] | None]
                 | None = None) -> None:
        self.layout = layout
        self.sym = symbolizer
        self.read = read
        self.backtracer = backtracer

    def build(self, seq: int, stop: Stop, regs: Registers, spec: ArmSpec, watch: ArmedWatch,
              writer_task: int, new: bytes,
              writer: tuple[int, str, tuple[tuple[int, str], ...]],
              unchanged: bool = False) -> Hit:
        """The hit numbered ``seq``; ``writer`` is the symbolizer's (address, text, context);
        ``unchanged``: the store wrote the value already there."""
        insn_addr, text, context = writer
        backtrace = self.backtracer(stop, regs) if self.backtracer is not None else None
        if backtrace is None:
            backtrace = fp_backtrace(self.layout, self.sym, self.read, regs, insn_addr)
        # In an interrupt: a handler is on the backtrace, or the write is the entry
        # code's own (the stub pushing registers, or the CPU pushing the frame).
        irq = self.layout.is_entry_code(self.sym.function(insn_addr)) or any(
            (self.sym.function(f.pc) or "") in self.layout.irq_functions for f in backtrace
        )
        return Hit(
            seq=seq,
            wall_time=time.time(),
            guest_time=guest.guest_time(self.layout, self.read),
            cpu=max(0, stop.thread - 1),
            config=spec.text,
            addr=watch.addr,
            length=watch.length,
            what=spec.what,
            watched_func=spec.func,
            depth=watch.depth,
            old=watch.old_value.hex(),
            new=new.hex(),
            owner=guest.task_info(self.layout, watch.owner_task, self.read),
            writer_task=guest.task_info(self.layout, writer_task, self.read),
            writer=Writer(
                pc_reported=stop.pc,
                insn_addr=insn_addr,
                symbol=self.sym.symbol(insn_addr),
                function=self.sym.function(insn_addr) or "?",
                disasm=text,
                source=self.sym.source(insn_addr),
                context=context,
            ),
            registers=dict(regs.values),
            backtrace=tuple(backtrace),
            interrupt=irq,
            unchanged=unchanged,
        )


def fp_backtrace(layout: GuestLayout, sym: Any, read: ReadFn, regs: Registers,
                 pc: int) -> list[BacktraceFrame]:
    """Walk the frame-pointer (RBP) chain within the current stack, from ``pc``."""
    frames = [_frame(sym, 0, pc)]
    task = guest.current_task(layout, regs, read)
    base, top = guest.stack_bounds(layout, regs.sp, task, read)
    fp = regs.fp
    while len(frames) < MAX_BACKTRACE and base <= fp < top - 16 and fp % 8 == 0:
        raw = read(fp, 16)
        next_fp = int.from_bytes(raw[:8], "little")
        ret = int.from_bytes(raw[8:], "little")
        if ret == 0:
            break
        # A return address points after the call: symbolize the call itself.
        frames.append(_frame(sym, len(frames), ret - 1, shown_pc=ret))
        if next_fp <= fp:
            break
        fp = next_fp
    return frames


def _frame(sym: Any, level: int, addr: int, shown_pc: int | None = None) -> BacktraceFrame:
    pc = addr if shown_pc is None else shown_pc
    return BacktraceFrame(level=level, pc=pc, symbol=sym.symbol(pc), source=sym.source(addr))
