"""Physical-memory polls inside one run: the poller wired to a launched `Machine`.

What this adds around `Poller`: the memory map and RAM mapping of the machine,
the vCPU snapshot and guest clock on a hit, the freeze/dump actions, the event
log, and the hint that turns a poll hit into an exact catch next time.

vCPU snapshot: ``info registers -a`` through QMP. When no gdbstub engine owns
the vCPUs, the guest is paused (QMP ``stop``) for the snapshot, so each PC is
an instruction boundary at the moment of the pause, and resumed afterwards:
about a millisecond. With ``--watch`` running, a pause would look like a stray
stop to the engine, so the registers are read live: under TCG a running vCPU's
saved PC can lag behind what it executes (it is updated when a translation
block exits). Either way it is *where the vCPUs were when the change was seen*,
not the writer.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kswgdb.errors import BadInput
from kswgdb.poll.config import PollSpec
from kswgdb.poll.memmap import parse_mtree
from kswgdb.poll.physmem import GuestPhysMemory, parse_xp, xp_command
from kswgdb.poll.poller import HitContext, Poller, PollHit, VcpuState
from kswgdb.qemu.machine import Machine
from kswgdb.symbols.program import Program
from kswgdb.symbols.slide import KernelSlide
from kswgdb.watch.hits import EventLog
from kswgdb.watch.kernelmap import kernel_map

#: The name Machine/argv give the shared RAM backend object.
RAM_BACKEND = "ram0"

_CPU_RE = re.compile(r"^CPU#(\d+)", re.MULTILINE)
_PC_RE = re.compile(r"\b[RE]IP=([0-9a-fA-F]+)")
_HLT_RE = re.compile(r"\bHLT=(\d)")


def parse_registers_all(text: str) -> list[tuple[int, int, bool]]:
    """(cpu, pc, halted) per vCPU from HMP ``info registers -a``."""
    out = []
    marks = list(_CPU_RE.finditer(text))
    for i, mark in enumerate(marks):
        chunk = text[mark.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        pc = _PC_RE.search(chunk)
        hlt = _HLT_RE.search(chunk)
        if pc:
            halted = bool(hlt and hlt.group(1) == "1")
            out.append((int(mark.group(1)), int(pc.group(1), 16), halted))
    return out


class PhysWatch:
    """Polls of one launched machine (whose RAM is a shared file)."""

    def __init__(
        self,
        machine: Machine,
        program: Program | None,
        specs: list[PollSpec],
        *,
        guest: str = "kswtest",
        log: EventLog | None = None,
        on_hit: Callable[[PollHit], None] | None = None,
        engine_attached: bool = False,
        vmcore_dir: Path | None = None,
        slide: KernelSlide | None = None,
    ) -> None:
        """``program`` at the guest's addresses, ``slide`` where the kernel is (Linux)."""
        if machine.ram_path is None:
            raise BadInput("physical polls need the machine's RAM in a shared file")
        self.machine = machine
        self.program = program
        self.specs = specs
        self.guest = guest
        self.log = log
        self.user_on_hit = on_hit
        self.engine_attached = engine_attached
        self.vmcore_dir = vmcore_dir or Path.cwd()
        self.freeze = threading.Event()
        self.vmcores: list[Path] = []
        self.qemu_reads = 0
        self._qmp_lock = threading.Lock()
        text = self._hmp("info mtree -f")
        self.memory = GuestPhysMemory(parse_mtree(text), machine.ram_path, RAM_BACKEND,
                                      self._qemu_read)
        self.poller = Poller(self.memory, on_hit=self._on_hit, context=self._context)
        #: Physical <-> virtual where it is fixed: the virtual-address hints, guest time.
        self.kernel_map = kernel_map(guest, program, slide)
        jiffies = self._global("jiffies")
        self._jiffies = (self.kernel_map.physical_of(jiffies)
                         if jiffies is not None and self.kernel_map is not None else None)

    # ----------------------------------------------------------- lifecycle
    def start(self) -> list[int]:
        """Add every poll (the guest may still be paused at -S) and start sampling."""
        ids = [self.poller.add_poll(spec) for spec in self.specs]
        self.poller.start()
        return ids

    def describe(self) -> list[str]:
        return [f"poll #{s.id} {s.config}: {s.kind} ({s.label})"
                + ("; read through QEMU, may briefly pause the guest" if s.kind == "mmio" else
                   "; read from the shared RAM file, the guest never pauses")
                for s in self.poller.polls()]

    def stop(self) -> None:
        self.poller.stop()

    def close(self) -> None:
        self.poller.stop()
        with contextlib.suppress(Exception):
            self.memory.close()

    # ------------------------------------------------------------ QEMU side
    def _hmp(self, command: str) -> str:
        with self._qmp_lock:
            return str(self.machine.qmp.execute("human-monitor-command",
                                                {"command-line": command}))

    def _qemu_read(self, addr: int, length: int) -> bytes:
        command, unit = xp_command(addr, length)
        self.qemu_reads += 1
        data = parse_xp(self._hmp(command), unit)
        if len(data) != length:
            raise OSError(f"xp {addr:#x}: got {len(data)} of {length} bytes")
        return data

    def _global(self, name: str) -> int | None:
        if self.program is None:
            return None
        try:
            return self.program.global_address(name)
        except Exception:
            return None

    # ---------------------------------------------------------------- hits
    def _context(self, spec: PollSpec, addr: int) -> HitContext:
        hint = self.hint(spec, addr)
        guest_time = None
        if self._jiffies is not None:
            raw = self.memory.read_ram(self._jiffies, 8)
            guest_time = int.from_bytes(raw, "little") if raw else None
        try:
            return self._vcpu_context(spec, hint, guest_time)
        except Exception as exc:  # e.g. the guest exited right after the change
            return HitContext(guest_time=guest_time, hint=hint,
                              note=f"vCPUs not read: {' '.join(str(exc).split())}")

    def _vcpu_context(self, spec: PollSpec, hint: str | None,
                      guest_time: int | None) -> HitContext:
        qmp = self.machine.qmp
        paused = False
        if spec.on_hit == "freeze":
            self.freeze.set()           # first: an engine must not resume the guest
            qmp.stop()
        elif not self.engine_attached and qmp.status() == "running":
            qmp.stop()
            paused = True
        paused_at = time.perf_counter()
        try:
            vcpus = tuple(VcpuState(cpu, pc, self._symbol(pc), halted)
                          for cpu, pc, halted in parse_registers_all(
                              self._hmp("info registers -a")))
            vmcore = None
            if spec.on_hit in ("freeze", "dump"):
                vmcore = self._dump(f"poll {spec.canonical()}")
        finally:
            if paused:
                qmp.cont()
        pause_ms = (time.perf_counter() - paused_at) * 1e3
        if spec.on_hit == "freeze":
            note = "guest frozen at the hit (QMP stop): the PCs are where it froze"
        elif paused:
            note = f"guest paused {pause_ms:.1f} ms to read the vCPUs, then resumed"
        else:
            note = "vCPU PCs read live (TCG updates them at block exits: may lag)"
        return HitContext(vcpus=vcpus, guest_time=guest_time, note=note,
                          hint=hint, vmcore=str(vmcore) if vmcore else None)

    def _symbol(self, pc: int) -> str:
        if self.program is None:
            return ""
        sym = self.program.symbolize(pc)
        return str(sym) if sym else ""

    def _dump(self, why: str) -> Path:
        path = self.vmcore_dir / (f"kswgdb-vmcore-{time.strftime('%Y%m%d-%H%M%S')}-"
                                  f"{secrets.token_hex(4)}-poll.elf")
        with self._qmp_lock:
            self.machine.qmp.dump_guest_memory(path)
        self.vmcores.append(path)
        if self.log is not None:
            self.log.write("vmcore", sync=True, path=str(path), why=why)
        return path

    def hint(self, spec: PollSpec, addr: int) -> str | None:
        """The command that catches a *CPU* writer of this address exactly, next run."""
        virtual = self.kernel_map.virtual_of(addr) if self.kernel_map is not None else None
        if virtual is None:
            return None
        length = spec.length if not spec.region and spec.length in (1, 2, 4, 8) else 8
        start = virtual - addr % length
        phys_start = addr - addr % length
        what = ""
        if self.program is not None:
            sym = self.program.symbolize(start)
            what = f" ({sym})" if sym else ""
        ctype = {1: "char", 2: "short", 4: "int", 8: "long"}[length]
        command = (f"gdb {self.program.path if self.program else 'vmlinux'} "
                   f"-ex 'target remote <gdbstub>' "
                   f"-ex 'watch -l *(unsigned {ctype} *){start:#x}'")
        if self.memory.read_ram(phys_start, length) is None:
            return (f"{start:#x} is a device register, not RAM: a CPU store to it is caught "
                    f"by a write watchpoint ({command}); changes the device makes itself "
                    "are visible only to a poll")
        return (f"virtual {start:#x}{what} is the same byte ({self.kernel_map.what}): a CPU "
                "store there "
                f"is caught exactly, writer and all, by a write watchpoint: {command}; "
                "if it never fires while this poll does, the writer is not a CPU (e.g. DMA)")

    def _on_hit(self, hit: PollHit) -> None:
        if self.log is not None:
            self.log.write("poll-hit", sync=True, **{k: v for k, v in hit.to_json().items()
                                                     if k != "event"})
        if self.user_on_hit is not None:
            self.user_on_hit(hit)
