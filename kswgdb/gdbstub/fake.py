"""A fake QEMU gdbstub for tests of this layer and the ones above it (no QEMU).

It speaks the real protocol over a socket pair, from a model made of byte
buffers (memory regions), register dicts per thread, and a script of stops:
each resume pops the next `ScriptedStop`, applies its register and memory
changes, and sends its stop reply. With no stop left, the target "runs" until
interrupted (then ``T02``), like a guest spinning.

It reproduces the QEMU 7.2 behaviours the client must cope with: every packet is
acked; ``p`` answers empty until target.xml was read; ``?`` removes all
breakpoints and watchpoints; ``Exx`` errors for unmapped memory (E14) and
refused requests; threads are vCPUs numbered from 1. Specific replies can be
forced with `forced` (payload -> reply), e.g. ``{"Z2,1000,8": "E22"}``.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from kswgdb.gdbstub.packet import escape_binary
from kswgdb.gdbstub.registers import RegisterLayout
from kswgdb.gdbstub.server import ServeThread, StubServer
from kswgdb.gdbstub.stopreply import parse_stop_reply, parse_thread_id
from kswgdb.gdbstub.transport import Transport


@dataclass
class ScriptedStop:
    """What happens at the next resume: the guest changes, then stops with `reply`."""

    reply: str  # e.g. "T05thread:01;watch:ffffc90000003ff8;"
    registers: dict[str, int] = field(default_factory=dict)  # of the stopping thread
    memory: dict[int, bytes] = field(default_factory=dict)
    console: bytes = b""  # sent as an O packet before the stop reply


class FakeStub(StubServer):
    """A scripted target behind the gdb remote protocol."""

    def __init__(
        self,
        xml_files: dict[str, str],
        *,
        threads: Iterable[int] = (1,),
        memory: dict[int, bytes] | None = None,
        registers: dict[int, dict[str, int]] | None = None,
        stops: Iterable[ScriptedStop] = (),
        forced: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.xml_files = xml_files
        self.layout = RegisterLayout.from_xml(xml_files.__getitem__)
        self.threads = list(threads)
        self.regs = {t: dict.fromkeys(self.layout.by_name, 0) for t in self.threads}
        for tid, values in (registers or {}).items():
            self.regs[tid].update(values)
        self.memory: list[tuple[int, bytearray]] = [
            (base, bytearray(data)) for base, data in (memory or {}).items()
        ]
        self.phys_memory: list[tuple[int, bytearray]] = []
        self.stops: deque[ScriptedStop] = deque(stops)
        self.forced = dict(forced or {})
        self.breakpoints: set[tuple[int, int, int]] = set()  # (type, addr, kind/len)
        self.g_thread = self.c_thread = self.threads[0]
        self.xml_read = False
        self.phys_mode = False
        self.sstep = 0x7
        self.running = False
        self.steps: list[int] = []  # threads single-stepped, in order
        self._thread_iter: list[int] = []

    # -- wiring -------------------------------------------------------------

    def start(self) -> tuple[socket.socket, ServeThread]:
        """Serve in a thread over a socket pair; returns our client's end and the thread."""
        ours, theirs = socket.socketpair()
        return ours, self.serve_in_thread(Transport(theirs, server=True, ack_mode="eager"))

    # -- the protocol -------------------------------------------------------

    def handle(self, payload: str) -> str | None:  # noqa: C901 - a dispatch table
        """Answer one request the way QEMU 7.2 would."""
        if payload in self.forced:
            return self.forced[payload]
        head = payload[:1]
        if payload.startswith("qSupported"):
            return "PacketSize=1000;qXfer:features:read+;vContSupported+"
        if payload == "vCont?":
            return "vCont;c;C;s;S"
        if payload.startswith("qXfer:features:read:"):
            return self._xfer(payload)
        if payload == "?":
            self.breakpoints.clear()  # QEMU 7.2: '?' removes every breakpoint
            return f"T05thread:{self.g_thread:02x};"
        if payload == "g":
            return "".join(
                self.layout.encode(r.name, self.regs[self.g_thread][r.name])
                for r in self.layout.registers
            )
        if head == "p":
            if not self.xml_read:
                return ""
            reg = self.layout.by_num.get(int(payload[1:], 16))
            return "E00" if reg is None else self.layout.encode(reg.name, self._reg(reg.name))
        if head == "P":
            num, _, value = payload[1:].partition("=")
            reg = self.layout.by_num[int(num, 16)]
            self.regs[self.g_thread][reg.name] = int.from_bytes(bytes.fromhex(value), "little")
            return "OK"
        if head == "m":
            addr, _, length = payload[1:].partition(",")
            data = self._read(int(addr, 16), int(length, 16))
            return "E14" if data is None else data.hex()
        if head == "M":
            where, _, data = payload[1:].partition(":")
            addr, _, _length = where.partition(",")
            return "OK" if self._write(int(addr, 16), bytes.fromhex(data)) else "E14"
        if head in ("Z", "z"):
            kind, addr, size = payload[1:].split(",")
            key = (int(kind), int(addr, 16), int(size, 16))
            if kind == "3":
                return "E22"  # like QEMU's KVM path: read watchpoints refused
            if head == "Z":
                self.breakpoints.add(key)
            elif key in self.breakpoints:
                self.breakpoints.discard(key)
            else:
                return "E22"
            return "OK"
        if head == "H":
            tid = parse_thread_id(payload[2:])
            tid = self.threads[0] if tid in (0, -1) else tid
            if tid not in self.threads:
                return "E22"
            if payload[1] == "g":
                self.g_thread = tid
            else:
                self.c_thread = tid
            return "OK"
        if payload == "qfThreadInfo":
            self._thread_iter = list(self.threads)
            return "m" + ",".join(f"{t:02x}" for t in self._thread_iter[:1])
        if payload == "qsThreadInfo":
            self._thread_iter = self._thread_iter[1:]
            if not self._thread_iter:
                return "l"
            return "m" + f"{self._thread_iter[0]:02x}"
        if payload == "qC":
            return f"QC{self.g_thread:02x}"
        if head == "T":
            return "OK" if parse_thread_id(payload[1:]) in self.threads else "E22"
        if payload == "qAttached":
            return "1"
        if payload == "qqemu.Supported":
            return "sstepbits;sstep;PhyMemMode"
        if payload == "qqemu.PhyMemMode":
            return "1" if self.phys_mode else "0"
        if payload.startswith("Qqemu.PhyMemMode:"):
            self.phys_mode = payload.endswith("1")
            return "OK"
        if payload == "qqemu.sstep":
            return f"{self.sstep:#x}"
        if payload.startswith("Qqemu.sstep="):
            self.sstep = int(payload.split("=")[1], 16)
            return "OK"
        if payload in ("c", "s") or payload.startswith(("vCont;c", "vCont;s")):
            if payload.startswith("vCont;s:"):
                self.steps.append(parse_thread_id(payload[8:]))
            elif payload == "s":
                self.steps.append(self.c_thread)
            self._resume()
            return None
        if head == "D":
            self.breakpoints.clear()
            self.done = True
            return "OK"
        if head == "k":
            self.done = True
            return None
        return ""

    def on_interrupt(self) -> None:
        """A running target stops with SIGINT; a stopped one ignores 0x03."""
        if self.running:
            self.running = False
            self.send(f"T02thread:{self.g_thread:02x};")

    # -- model --------------------------------------------------------------

    def _resume(self) -> None:
        if not self.stops:
            self.running = True
            return
        stop = self.stops.popleft()
        parsed = parse_stop_reply(stop.reply)
        tid = parsed.thread if parsed.thread not in (None, 0, -1) else self.threads[0]
        self.regs[tid].update(stop.registers)
        for addr, data in stop.memory.items():
            self._write(addr, data)
        self.g_thread = self.c_thread = tid  # QEMU: the stopped CPU becomes current
        if stop.console:
            self.send("O" + stop.console.hex())
        self.send(stop.reply)

    def _reg(self, name: str) -> int:
        return self.regs[self.g_thread][name]

    def _regions(self) -> list[tuple[int, bytearray]]:
        return self.phys_memory if self.phys_mode else self.memory

    def _read(self, addr: int, length: int) -> bytes | None:
        for base, buf in self._regions():
            if base <= addr and addr + length <= base + len(buf):
                return bytes(buf[addr - base : addr - base + length])
        return None

    def _write(self, addr: int, data: bytes) -> bool:
        for base, buf in self._regions():
            if base <= addr and addr + len(data) <= base + len(buf):
                buf[addr - base : addr - base + len(data)] = data
                return True
        return False

    def _xfer(self, payload: str) -> str:
        annex, _, span = payload[len("qXfer:features:read:") :].partition(":")
        if annex not in self.xml_files:
            return "E00"
        if annex == "target.xml":
            self.xml_read = True
        offset, _, length = span.partition(",")
        data = self.xml_files[annex].encode()
        start, size = int(offset, 16), int(length, 16)
        if start >= len(data):
            return "E00"  # what QEMU 7.2 answers past the end
        chunk = data[start : start + size]
        more = "m" if start + size < len(data) else "l"
        return more + escape_binary(chunk).decode("latin-1")
