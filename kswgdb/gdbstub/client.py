"""`RemoteClient`: the remote-protocol rules on top of a `Transport`.

One request, one reply, in order: replies are matched to requests by position on
the stream (the protocol has no ids, and an all-stop stub answers strictly in
order). `pipeline` uses that: it writes several requests at once and reads the
replies back in the same order, paying one round trip instead of N.

State the stub keeps and we must mirror:

* QEMU sets the "general" thread (Hg) to the CPU that stopped, at every stop, so
  the cached ``Hg`` thread is reset from each stop reply.
* While the guest runs, QEMU stops it on *any* byte it receives; every request
  other than `interrupt` therefore refuses to run while `running` is true,
  instead of silently pausing the guest.
* QEMU answers ``p`` with the empty packet until target.xml was read; `handshake`
  reads it (it also gives us the ``g`` layout).
* ``?`` in QEMU removes every breakpoint and watchpoint, so it is never sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from kswgdb.gdbstub import requests as rq
from kswgdb.gdbstub.errors import StubError, Unsupported
from kswgdb.gdbstub.packet import unescape_binary
from kswgdb.gdbstub.registers import RegisterLayout
from kswgdb.gdbstub.stopreply import StopReply, parse_stop_reply, parse_thread_id
from kswgdb.gdbstub.transport import Transport

# multiprocess+: QEMU 7.2 never turns multiprocess ids off once a client (gdb)
# asked for them, so asking ourselves makes the format the same on every connection.
CLIENT_FEATURES = "qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+;xmlRegisters=i386"
MEMORY_CHUNK = 2048  # QEMU 7.2 refuses m/M longer than MAX_PACKET_LENGTH / 2

# Qqemu.sstep flag bits (QEMU include/exec/gdbstub.h)
SSTEP_ENABLE = 0x1
SSTEP_NOIRQ = 0x2
SSTEP_NOTIMER = 0x4


class RemoteClient:
    """A client of one gdbstub connection; not thread-safe."""

    def __init__(self, transport: Transport, *, timeout: float = 5.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self.features: dict[str, str] = {}
        self.vcont_actions: frozenset[str] = frozenset()
        self.layout: RegisterLayout | None = None
        self.packet_size = 4096
        self.running = False
        self.exited = False
        self.last_stop: StopReply | None = None
        self.console = bytearray()  # text from O packets
        self.g_thread: int | None = None  # where QEMU's Hg points; None = unknown

    # -- lifetime -----------------------------------------------------------

    @classmethod
    def connect(
        cls,
        address: str,
        timeout: float = 5.0,
        *,
        ack_mode: str = "lazy",
        trace: bool = False,
    ) -> RemoteClient:
        """Connect to ``PATH``/``unix:PATH``/``127.0.0.1:PORT``; does not handshake."""
        transport = Transport.connect(address, timeout, ack_mode=ack_mode, trace=trace)
        return cls(transport, timeout=timeout)

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (QEMU keeps the guest as it is; nothing is resumed)."""
        if self.running:
            self.transport.forget_ack()  # a '+' now would pause the running guest
        self.transport.close()

    def detach(self) -> None:
        """``D``: QEMU removes all breakpoints and *resumes* the guest, then we close."""
        self._require_stopped("D")
        # With multiprocess ids on, QEMU 10 refuses a bare ``D`` (E22): name the process.
        sent = "D;1" if self.features.get("multiprocess") == "+" else "D"
        try:
            rq.check_ok(self.request(sent), sent)
        finally:
            self.running = True
            self.close()

    # -- raw requests -------------------------------------------------------

    def request(self, payload: str, timeout: float | None = None) -> str:
        """Send one packet and return its reply payload (no error checking)."""
        if self.running or self.exited:
            self._require_stopped(payload)
        t = self.transport
        t.send_packet(payload.encode("latin-1"))
        return t.recv_packet(self.timeout if timeout is None else timeout).decode("latin-1")

    def pipeline(self, payloads: list[str], timeout: float | None = None) -> list[str]:
        """Send `payloads` back to back and return their replies in order.

        A resume packet (``c``, ``s``, ``vCont;...``) has no reply of its own and
        may only be last; afterwards `running` is true and `wait_stop` collects
        the stop. With eager acks the resume is held back until the other
        replies are in, because an ack reaching a running QEMU would stop it.
        """
        if not payloads:
            return []
        if self.running or self.exited:
            self._require_stopped(payloads[0])
        for p in payloads[:-1]:
            if rq.is_resume(p):
                raise ValueError(f"resume packet {p!r} must be the last of a pipeline")
        resume = payloads[-1] if rq.is_resume(payloads[-1]) else None
        body = payloads[:-1] if resume is not None else payloads
        t = self.transport
        wait = self.timeout if timeout is None else timeout
        if resume is not None and t.lazy:
            t.send_packets([p.encode("latin-1") for p in payloads])
            self.running = True  # set before reading: the guest already runs
        elif body:
            t.send_packets([p.encode("latin-1") for p in body])
        replies = [t.recv_packet(wait).decode("latin-1") for _ in body]
        if resume is not None and t.lazy:
            t.forget_ack()  # QEMU dropped those replies on reading the resume's '$'
        elif resume is not None:
            t.send_packet(resume.encode("latin-1"))
        if resume is not None:
            self._resumed()
        return replies

    # -- connection setup ---------------------------------------------------

    def handshake(self) -> dict[str, str]:
        """Exchange qSupported, learn vCont actions and read target.xml.

        Returns the stub's features (``{"PacketSize": "1000", ...}``, flags as
        ``"+"``). Reading target.xml is not optional with QEMU: ``p`` only works
        afterwards.
        """
        reply = self.request(CLIENT_FEATURES)
        self.features = {}
        for item in reply.split(";"):
            if "=" in item:
                key, _, value = item.partition("=")
                self.features[key] = value
            elif item:
                self.features[item[:-1]] = item[-1]
        if "PacketSize" in self.features:
            self.packet_size = int(self.features["PacketSize"], 16)
        vcont = self.request("vCont?")
        if vcont.startswith("vCont"):
            self.vcont_actions = frozenset(a for a in vcont[5:].split(";") if a)
        if self.features.get("qXfer:features:read") == "+":
            self.layout = RegisterLayout.from_xml(self.read_feature_file)
        return dict(self.features)

    def read_feature_file(self, annex: str) -> str:
        """Read one target-description file with ``qXfer:features:read``."""
        chunk = self.packet_size - 5
        data = bytearray()
        while True:
            sent = f"qXfer:features:read:{annex}:{len(data):x},{chunk:x}"
            reply = self.request(sent)
            if reply[:1] not in ("m", "l"):
                rq.raise_for_error(reply, sent)
                raise StubError("unexpected qXfer reply", sent=sent, received=reply)
            data += unescape_binary(reply[1:].encode("latin-1"))
            if reply[0] == "l":
                return data.decode("utf-8")

    # -- registers ----------------------------------------------------------

    def read_registers(
        self, thread: int | None = None, names: Iterable[str] | None = None
    ) -> dict[str, int]:
        """All (or the named) registers of `thread` (default: the stopped CPU), via ``g``."""
        layout = self._need_layout()
        if thread is not None and thread != self.g_thread:
            sent = rq.set_thread("g", thread)
            ack, reply = self.pipeline([sent, "g"])
            rq.check_ok(ack, sent)
            self.g_thread = thread
        else:
            reply = self.request("g")
        if not reply or reply[0] == "E":
            rq.raise_for_error(reply, "g")
        return layout.decode_g(reply, names)

    def read_register(self, name: str) -> int:
        """One register via ``p`` (cheaper than ``g`` when only one is needed)."""
        reg = self._need_layout()[name]
        sent = rq.read_register(reg.regnum)
        reply = self.request(sent)
        if len(reply) != 2 * reg.size:
            rq.raise_for_error(reply, sent)
            raise StubError("malformed register reply", sent=sent, received=reply)
        return int.from_bytes(bytes.fromhex(reply), "little")

    def write_register(self, name: str, value: int) -> None:
        """One register via ``P``."""
        layout = self._need_layout()
        sent = rq.write_register(layout[name].regnum, layout.encode(name, value))
        rq.check_ok(self.request(sent), sent)

    # -- memory -------------------------------------------------------------

    def read_memory(self, addr: int, length: int) -> bytes:
        """`length` bytes of guest *virtual* memory (through the current CPU's MMU).

        Reads longer than one packet are split and the pieces pipelined.
        """
        if length <= MEMORY_CHUNK:
            sent = rq.read_memory(addr, length)
            return rq.decode_memory(self.request(sent), sent, length)
        pieces = [
            (a, min(MEMORY_CHUNK, addr + length - a))
            for a in range(addr, addr + length, MEMORY_CHUNK)
        ]
        sents = [rq.read_memory(a, n) for a, n in pieces]
        replies = self.pipeline(sents)
        return b"".join(
            rq.decode_memory(r, s, n) for r, s, (_, n) in zip(replies, sents, pieces, strict=True)
        )

    def write_memory(self, addr: int, data: bytes) -> None:
        """Write guest virtual memory with ``M`` (pipelined in packet-sized pieces)."""
        step = min(MEMORY_CHUNK, (self.packet_size - 64) // 2)
        sents = [rq.write_memory(addr + i, data[i : i + step]) for i in range(0, len(data), step)]
        for reply, sent in zip(self.pipeline(sents), sents, strict=True):
            rq.check_ok(reply, sent)

    def phys_read(self, addr: int, length: int) -> bytes:
        """Read guest *physical* memory: PhyMemMode on, ``m``, off, in one round trip."""
        pieces = [
            (a, min(MEMORY_CHUNK, addr + length - a))
            for a in range(addr, addr + length, MEMORY_CHUNK)
        ]
        sents = [rq.read_memory(a, n) for a, n in pieces]
        replies = self.pipeline(["Qqemu.PhyMemMode:1", *sents, "Qqemu.PhyMemMode:0"])
        rq.check_ok(replies[0], "Qqemu.PhyMemMode:1")
        rq.check_ok(replies[-1], "Qqemu.PhyMemMode:0")
        return b"".join(
            rq.decode_memory(r, s, n)
            for r, s, (_, n) in zip(replies[1:-1], sents, pieces, strict=True)
        )

    def phys_write(self, addr: int, data: bytes) -> None:
        """Write guest physical memory (PhyMemMode around ``M``, one round trip)."""
        step = min(MEMORY_CHUNK, (self.packet_size - 64) // 2)
        sents = [rq.write_memory(addr + i, data[i : i + step]) for i in range(0, len(data), step)]
        replies = self.pipeline(["Qqemu.PhyMemMode:1", *sents, "Qqemu.PhyMemMode:0"])
        for reply, sent in zip(
            replies, ["Qqemu.PhyMemMode:1", *sents, "Qqemu.PhyMemMode:0"], strict=True
        ):
            rq.check_ok(reply, sent)

    # -- breakpoints and watchpoints ----------------------------------------

    def insert_breakpoint(self, addr: int, kind: str = "sw") -> None:
        """``Z0`` (sw, int3) or ``Z1`` (hw); ErrorReply if refused, Unsupported if unknown."""
        sent = rq.insert_breakpoint(addr, kind)
        rq.check_ok(self.request(sent), sent)

    def remove_breakpoint(self, addr: int, kind: str = "sw") -> None:
        """``z0``/``z1``."""
        sent = rq.remove_breakpoint(addr, kind)
        rq.check_ok(self.request(sent), sent)

    def insert_watchpoint(self, addr: int, length: int, access: str = "write") -> None:
        """``Z2`` write / ``Z3`` read / ``Z4`` access watchpoint on ``[addr, addr+length)``."""
        sent = rq.insert_watchpoint(addr, length, access)
        rq.check_ok(self.request(sent), sent)

    def remove_watchpoint(self, addr: int, length: int, access: str = "write") -> None:
        """``z2``/``z3``/``z4``."""
        sent = rq.remove_watchpoint(addr, length, access)
        rq.check_ok(self.request(sent), sent)

    # -- threads ------------------------------------------------------------

    def threads(self) -> list[int]:
        """Thread ids (QEMU: one per vCPU, 1-based) via qfThreadInfo/qsThreadInfo."""
        out: list[int] = []
        sent = "qfThreadInfo"
        while True:
            reply = self.request(sent)
            if reply.startswith("m"):
                out.extend(parse_thread_id(t) for t in reply[1:].split(",") if t)
                sent = "qsThreadInfo"
            elif reply.startswith("l"):
                out.extend(parse_thread_id(t) for t in reply[1:].split(",") if t)
                return out
            else:
                rq.raise_for_error(reply, sent)
                raise StubError("unexpected thread list reply", sent=sent, received=reply)

    def current_thread(self) -> int:
        """``qC``: the thread the stub considers current."""
        reply = self.request("qC")
        if not reply.startswith("QC"):
            rq.raise_for_error(reply, "qC")
            raise StubError("unexpected qC reply", sent="qC", received=reply)
        return parse_thread_id(reply[2:])

    def set_thread(self, op: str, tid: int) -> None:
        """``Hg`` (registers/memory) or ``Hc`` (step/continue) to `tid`."""
        sent = rq.set_thread(op, tid)
        rq.check_ok(self.request(sent), sent)
        if op == "g":
            self.g_thread = tid

    # -- execution ----------------------------------------------------------

    def cont(self) -> None:
        """Resume every vCPU (``c``); collect the stop with `wait_stop`."""
        self.pipeline(["c"])

    def step(self, thread: int | None = None) -> None:
        """Single-step `thread` (``vCont;s:N`` if offered); collect with `wait_stop`.

        QEMU 7.2 system mode, measured: with ``vCont;s:N`` only vCPU N executes
        and the other vCPUs stay paused; a plain ``s`` steps the current vCPU
        while the others run freely (tests/integration/test_gdbstub_qemu.py).
        """
        if thread is not None and "s" not in self.vcont_actions:
            self.set_thread("c", thread)
        self.pipeline([rq.step(thread, "s" in self.vcont_actions)])

    def wait_stop(self, timeout: float | None = None) -> StopReply:
        """Wait for the next stop reply; console ``O`` packets go to `console`.

        Raises `StubTimeout` if the guest is still running at the deadline (it is
        left running: call `interrupt` and wait again to stop it).
        """
        wait = self.timeout if timeout is None else timeout
        while True:
            payload = self.transport.recv_packet(wait).decode("latin-1")
            try:
                stop = parse_stop_reply(payload)
            except ValueError as exc:
                raise StubError("expected a stop reply", received=payload) from exc
            if stop.kind == "O":
                self.console += stop.output
                continue
            self.running = False
            self.last_stop = stop
            if stop.exited:
                self.exited = True
            self.g_thread = stop.thread  # QEMU makes the stopped CPU current
            return stop

    def interrupt(self) -> None:
        """Send 0x03: a running guest stops and a stop reply (T02) follows."""
        self.transport.send_interrupt()

    def halt(self, timeout: float | None = None) -> StopReply:
        """Interrupt a running guest and return its stop reply."""
        self.interrupt()
        return self.wait_stop(timeout)

    # -- QEMU extensions ----------------------------------------------------

    def sstep_flags(self) -> int:
        """``qqemu.sstep``: single-step flags (ENABLE 1, NOIRQ 2, NOTIMER 4)."""
        reply = self.request("qqemu.sstep")
        if not reply.startswith("0x"):
            rq.raise_for_error(reply, "qqemu.sstep")
        return int(reply, 16)

    def set_sstep_flags(self, flags: int) -> None:
        """``Qqemu.sstep=0xN``: e.g. ENABLE only lets interrupts fire while stepping."""
        sent = f"Qqemu.sstep={flags:#x}"
        rq.check_ok(self.request(sent), sent)

    def monitor(self, command: str) -> str:
        """``qRcmd``: run a QEMU monitor (HMP) command, return its text output."""
        sent = "qRcmd," + command.encode().hex()
        out = bytearray()
        reply = self.request(sent)
        while reply.startswith("O") and reply != "OK":  # output comes as O packets
            out += bytes.fromhex(reply[1:])
            reply = self.transport.recv_packet(self.timeout).decode("latin-1")
        rq.check_ok(reply, sent)
        return out.decode("utf-8", "replace")

    # -- internals ----------------------------------------------------------

    def _resumed(self) -> None:
        self.running = True
        self.g_thread = None

    def _need_layout(self) -> RegisterLayout:
        if self.layout is None:
            raise Unsupported("register layout unknown: call handshake() first")
        return self.layout

    def _require_stopped(self, payload: str) -> None:
        if self.exited:
            raise StubError("the target has exited", sent=payload)
        if self.running:
            raise StubError(
                "the guest is running: any byte would stop it; interrupt() and wait_stop() first",
                sent=payload,
            )
