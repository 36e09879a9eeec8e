"""Hit backtraces unwound by gdb (DWARF CFI), for the engine's ``backtracer`` hook.

A frame-pointer walk is wrong or empty on kernels built without frame pointers
(most distribution kernels use ORC and no RBP chain). gdb unwinds with the
DWARF call-frame information of the symbol file instead. It reaches the
stopped guest through a read-only `Relay` of our own stub connection (QEMU 7.2
takes a single gdb client, and we hold it), so nothing about the watch changes.

gdb is started at the first hit only (runs without hits never pay for it) and
kept for the following ones; `close` kills it, and the session calls it on every
way out of a run, so no gdb outlives the tool. A vmlinux with a ``.gdb_index``
(``make image-linux`` adds one with ``gdb-add-index``) loads in about a second.

Code in a loadable module is unknown to the vmlinux: each module the symbolizer
has placed (its ``modules``, `kswgdb.watch.modules.LoadedModule`) is handed to
gdb with ``add-symbol-file FILE.ko -s .text ADDR -s .text.unlikely ADDR ...`` at
the section addresses found in guest memory, so gdb names and unwinds module
frames with the module's own DWARF (lines and CFI).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from kswgdb.gdbstub.mi import cli_quote
from kswgdb.gdbstub.relay import Backtracer
from kswgdb.gdbstub.stopreply import parse_stop_reply
from kswgdb.qemu.rundir import RUN_PREFIX, owned_tempdir
from kswgdb.watch.hits import BacktraceFrame, SourceLine
from kswgdb.watch.stub_target import StubTarget
from kswgdb.watch.target import Registers, Stop

MAX_FRAMES = 32


def gdb_available(gdb: str = "gdb") -> bool:
    return shutil.which(gdb) is not None


class GdbUnwinder:
    """``(Stop, Registers) -> frames``: gdb's backtrace of the vCPU that stopped."""

    def __init__(self, target: StubTarget, symbol_file: str | Path, symbolizer,
                 gdb: str = "gdb", timeout: float = 30.0,
                 find_modules: Callable[[], None] | None = None,
                 symbol_offset: int = 0) -> None:
        """``symbol_offset``: the kernel's KASLR slide, given to gdb as ``symbol-file -o``."""
        self.target = target
        self.symbol_offset = symbol_offset
        self.symbol_file = str(symbol_file)
        self.sym = symbolizer
        self.gdb = gdb
        self.timeout = timeout
        self.tracer: Backtracer | None = None
        self.relay_dir: Path | None = None
        self.gdb_pid: int | None = None
        self.unwound = 0
        self.failures: list[str] = []
        self.modules_given: set[str] = set()   # modules gdb has symbols for
        self.seconds: list[float] = []         # per backtrace (the first one starts gdb)
        #: Places the guest's other loaded modules in the symbolizer (watched ones
        #: already are) before each backtrace: `kswgdb.watch.modules.ModuleFinder`.
        self.find_modules = find_modules

    def __call__(self, stop: Stop, regs: Registers) -> list[BacktraceFrame] | None:
        """gdb's frames, or None (the engine then walks frame pointers) if gdb failed."""
        started = time.monotonic()
        try:
            self.target.flush()       # queued break/watch changes go before gdb's reads
            if self.tracer is None:
                # The relay's socket directory carries our pid, so a kswgdb killed
                # before close() leaves nothing that the next launch does not sweep.
                if self.relay_dir is None:
                    self.relay_dir = owned_tempdir(RUN_PREFIX + "relay-")
                self.tracer = Backtracer(self.symbol_file, gdb=self.gdb, timeout=self.timeout,
                                         directory=str(self.relay_dir),
                                         symbol_offset=self.symbol_offset)
                self.gdb_pid = self.tracer.mi.pid
            self._give_modules()
            thread = stop.thread or 1
            reply = parse_stop_reply(f"T05thread:{thread:02x};")
            frames = self.tracer.backtrace(self.target.client, thread, reply,
                                           max_frames=MAX_FRAMES, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - a backtrace is evidence, never a reason to stop
            self.failures.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
            return None
        finally:
            self.seconds.append(time.monotonic() - started)
        if not frames:
            self.failures.append("gdb returned no frames")
            return None
        self.unwound += 1
        out = []
        for i, f in enumerate(frames):
            if not f.pc:
                continue        # gdb ends an unwind that runs off the stack with pc 0
            if f.level == 0:
                # Frame 0 is where the vCPU stopped, after the store; show the store
                # itself, as the frame-pointer walk and the hit's headline do.
                pc = self.sym.writer(f.pc, regs)[0]
                out.append(BacktraceFrame(0, pc, self.sym.symbol(pc), self.sym.source(pc)))
                continue
            if not self._is_code(f):
                break
            inlined = i + 1 < len(frames) and frames[i + 1].pc == f.pc
            out.append(self._frame(f.level, f.pc, f.file, f.line, f.function, inlined))
        return out

    def _is_code(self, f) -> bool:
        """Is a caller frame in code anyone knows (our symbols, or gdb's line table)?

        Past the kernel's entry code gdb goes on "unwinding" the user registers
        saved in pt_regs (user addresses, small numbers that fall on per-CPU
        symbols at 0): the first frame that is neither a function we know nor a
        line gdb knows ends the trace, as the kernel's own unwinder ends at pt_regs.
        """
        return self.sym.function(f.pc - 1) is not None or bool(f.file and f.line)

    def _give_modules(self) -> None:
        """``add-symbol-file`` every placed module gdb does not have yet."""
        assert self.tracer is not None
        if self.find_modules is not None:
            try:
                self.find_modules()
            except Exception as exc:  # noqa: BLE001 - unwatched modules are a bonus
                self.failures.append(f"module list: {type(exc).__name__}: {exc}".splitlines()[0])
        for mod in getattr(self.sym, "modules", ()):
            if mod.name in self.modules_given:
                continue
            sections = mod.section_addresses()
            if not sections:
                continue
            self.tracer.mi.console(add_symbol_file_command(mod.program.path, sections))
            self.modules_given.add(mod.name)

    def _frame(self, level: int, pc: int, file: str | None, line: int | None,
               function: str | None = None, inlined: bool = False) -> BacktraceFrame:
        """A caller frame: gdb's line (looked up at the call, pc - 1), our file naming.

        The name is ours (``func+0xoff/0xsize``, the kernel's ``%pS``) except where
        gdb knows better: a function inlined into the next frame (same pc) is shown
        by its own name, and code our symbol table has no sized symbol for (entry
        assembly) by gdb's name.
        """
        symbol = self.sym.symbol(pc)
        if function and inlined and function != self.sym.function(pc - 1):
            symbol = f"{function} (inlined)"
        elif function and self.sym.function(pc - 1) is None:
            symbol = self._unsized(function, pc)
        ours = self.sym.source(pc - 1)
        if file and line:
            if ours is not None and file.endswith("/" + ours.file.lstrip("/")):
                file = ours.file
            source: SourceLine | None = SourceLine(file, line)
        else:
            source = ours
        return BacktraceFrame(level=level, pc=pc, symbol=symbol, source=source)

    def _unsized(self, function: str, pc: int) -> str:
        """``entry_SYSCALL_64+0x106``: assembly entry points are untyped linker symbols,
        left out of the symbol table; their value is read from the ELF (and cached)."""
        program = getattr(self.sym, "program", None)
        try:
            start = program.linker_symbol(function) if program is not None else None
        except Exception:  # noqa: BLE001 - a name is decoration
            start = None
        if start is not None and 0 <= pc - start < 0x10000:
            return f"{function}+{pc - start:#x}"
        return f"{function} ({pc:#x})"

    def close(self) -> None:
        """Kill gdb (if it was ever started) and remove its relay socket."""
        tracer, self.tracer = self.tracer, None
        try:
            if tracer is not None:
                tracer.close()
        finally:
            if self.relay_dir is not None:
                shutil.rmtree(self.relay_dir, ignore_errors=True)
                self.relay_dir = None


def add_symbol_file_command(path: str | Path, sections: dict[str, int]) -> str:
    """gdb's ``add-symbol-file`` for a module whose sections sit at ``sections``."""
    text = cli_quote(path)
    placed = " ".join(f"-s {name} {addr:#x}" for name, addr in sections.items())
    return f"add-symbol-file {text} {placed}"


__all__ = ["GdbUnwinder", "add_symbol_file_command", "gdb_available"]
