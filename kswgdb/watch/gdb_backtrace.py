"""Hit backtraces unwound by gdb (DWARF CFI), for the engine's ``backtracer`` hook.

A frame-pointer walk is wrong or empty on kernels built without frame pointers
(most distribution kernels use ORC and no RBP chain). gdb unwinds with the
DWARF call-frame information of the symbol file instead. It reaches the
stopped guest through a read-only `Relay` of our own stub connection (QEMU 7.2
takes a single gdb client, and we hold it), so nothing about the watch changes.

gdb is started at the first hit only (runs without hits never pay for it) and
kept for the following ones; `close` kills it, and the session calls it on every
way out of a run, so no gdb outlives the tool.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kswgdb.gdbstub.relay import Backtracer
from kswgdb.gdbstub.stopreply import parse_stop_reply
from kswgdb.watch.hits import BacktraceFrame, SourceLine
from kswgdb.watch.stub_target import StubTarget
from kswgdb.watch.target import Registers, Stop

MAX_FRAMES = 32


def gdb_available(gdb: str = "gdb") -> bool:
    return shutil.which(gdb) is not None


class GdbUnwinder:
    """``(Stop, Registers) -> frames``: gdb's backtrace of the vCPU that stopped."""

    def __init__(self, target: StubTarget, symbol_file: str | Path, symbolizer,
                 gdb: str = "gdb", timeout: float = 30.0) -> None:
        self.target = target
        self.symbol_file = str(symbol_file)
        self.sym = symbolizer
        self.gdb = gdb
        self.timeout = timeout
        self.tracer: Backtracer | None = None
        self.gdb_pid: int | None = None
        self.unwound = 0
        self.failures: list[str] = []

    def __call__(self, stop: Stop, regs: Registers) -> list[BacktraceFrame] | None:
        """gdb's frames, or None (the engine then walks frame pointers) if gdb failed."""
        try:
            self.target.flush()       # queued break/watch changes go before gdb's reads
            if self.tracer is None:
                self.tracer = Backtracer(self.symbol_file, gdb=self.gdb, timeout=self.timeout)
                self.gdb_pid = self.tracer.mi.pid
            thread = stop.thread or 1
            reply = parse_stop_reply(f"T05thread:{thread:02x};")
            frames = self.tracer.backtrace(self.target.client, thread, reply,
                                           max_frames=MAX_FRAMES, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - a backtrace is evidence, never a reason to stop
            self.failures.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
            return None
        if not frames:
            self.failures.append("gdb returned no frames")
            return None
        self.unwound += 1
        out = []
        for f in frames:
            if not f.pc:
                continue        # gdb ends an unwind that runs off the stack with pc 0
            if f.level == 0:
                # Frame 0 is where the vCPU stopped, after the store; show the store
                # itself, as the frame-pointer walk and the hit's headline do.
                pc = self.sym.writer(f.pc, regs)[0]
                out.append(BacktraceFrame(0, pc, self.sym.symbol(pc), self.sym.source(pc)))
            else:
                out.append(self._frame(f.level, f.pc, f.file, f.line))
        return out

    def _frame(self, level: int, pc: int, file: str | None, line: int | None) -> BacktraceFrame:
        """A caller frame: gdb's line (looked up at the call, pc - 1), our file naming."""
        ours = self.sym.source(pc - 1)
        if file and line:
            if ours is not None and file.endswith("/" + ours.file.lstrip("/")):
                file = ours.file
            source: SourceLine | None = SourceLine(file, line)
        else:
            source = ours
        return BacktraceFrame(level=level, pc=pc, symbol=self.sym.symbol(pc), source=source)

    def close(self) -> None:
        """Kill gdb (if it was ever started) and remove its relay socket."""
        tracer, self.tracer = self.tracer, None
        if tracer is not None:
            tracer.close()


__all__ = ["GdbUnwinder", "gdb_available"]
