"""A guest made of byte buffers and a script, for testing the engine without QEMU.

The script is written in guest terms (a task calls, writes, returns); the fake
turns each event into a stop only when the engine has asked for one: a call
stops only if a breakpoint sits on its probe address, a write only if a
watchpoint covers it. So a test that expects a hit fails if the engine armed
the wrong address, and one that expects none fails if it armed too much.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kswgdb.watch.target import Registers, Stop

GUARD_ADDR = 0x10_0000
PERCPU = [0x20_0000, 0x20_1000]      # gs_base of CPU 0 and 1; current at offset 0
GUARD = bytes.fromhex("00c0ffee1234abcd")


@dataclass
class Event:
    kind: str            # "probe" | "ret" | "write" | "read" | "exit"
    length: int = 8      # bytes a "read" event reads
    cpu: int = 0
    task: int = 0
    regs: dict[str, int] = field(default_factory=dict)
    addr: int = 0
    data: bytes = b""
    pc: int = 0


class FakeTarget:
    def __init__(self) -> None:
        self.mem: dict[int, int] = {}
        self.breakpoints: set[int] = set()
        self.watchpoints: set[tuple[int, int]] = set()
        self.read_watchpoints: list[tuple[int, int]] = []   # Z3: may be inserted twice
        self.access_watchpoints: set[tuple[int, int]] = set()   # Z4: reads and writes
        self.script: list[Event] = []
        self.regs: dict[int, dict[str, int]] = {}
        self.stopped_thread = 1
        self.resumes = 0
        self.with_resume: list = []
        self.max_watchpoints_seen = 0
        self.write(GUARD_ADDR, GUARD)

    # ------------------------------------------------------------ memory
    def write(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.mem[addr + i] = b

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.mem.get(addr + i, 0) for i in range(length))

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        return [self.read(a, n) for a, n in ranges]

    # ------------------------------------------------------- breakpoints
    def set_breakpoint(self, addr: int) -> None:
        assert addr not in self.breakpoints, f"breakpoint {addr:#x} inserted twice"
        self.breakpoints.add(addr)

    def clear_breakpoint(self, addr: int) -> None:
        self.breakpoints.remove(addr)

    def set_watchpoint(self, addr: int, length: int, access: str = "write") -> None:
        if access == "read":
            self.read_watchpoints.append((addr, length))
            return
        if access == "access":
            assert (addr, length) not in self.access_watchpoints, "access watch inserted twice"
            self.access_watchpoints.add((addr, length))
            return
        self.watchpoints.add((addr, length))
        self.max_watchpoints_seen = max(self.max_watchpoints_seen, len(self.watchpoints))

    def clear_watchpoint(self, addr: int, length: int, access: str = "write") -> None:
        if access == "read":
            self.read_watchpoints.remove((addr, length))
            return
        if access == "access":
            self.access_watchpoints.remove((addr, length))
            return
        self.watchpoints.remove((addr, length))

    # ------------------------------------------------------------ running
    def registers(self, thread: int) -> Registers:
        return Registers(dict(self.regs[thread]))

    def resume(self) -> None:
        self.resumes += 1
        pending, self.with_resume = self.with_resume, []
        for ranges, callback in pending:
            callback(self.read_many(ranges))

    def read_with_resume(self, ranges, callback) -> None:
        """Reads sent with the resume (`StubTarget.read_with_resume`): answered then."""
        self.with_resume.append((ranges, callback))

    def interrupt(self) -> None:
        pass

    def wait_stop(self, timeout: float | None) -> Stop | None:
        while self.script:
            stop = self.play(self.script.pop(0))
            if stop is not None:
                return stop
        return Stop("exit", exit_status=0)

    def play(self, ev: Event) -> Stop | None:
        """Run one scripted event; the stop it causes, or None if nothing was hit."""
        thread = ev.cpu + 1
        self.write(PERCPU[ev.cpu], ev.task.to_bytes(8, "little"))
        regs = {"gs_base": PERCPU[ev.cpu], **ev.regs}
        if ev.kind == "exit":
            return Stop("exit", exit_status=0)
        if ev.kind in ("probe", "ret"):
            if ev.pc in self.breakpoints:
                self.regs[thread] = {**regs, "rip": ev.pc}
                return Stop("break", thread=thread, pc=ev.pc)
            return None
        if ev.kind == "write":
            self.write(ev.addr, ev.data)
            for addr, length in self.watchpoints:
                if addr <= ev.addr < addr + length or ev.addr <= addr < ev.addr + len(ev.data):
                    self.regs[thread] = {**regs, "rip": ev.pc}
                    return Stop("watch", thread=thread, pc=ev.pc, watch_addr=addr)
        if ev.kind in ("read", "write"):
            size = ev.length if ev.kind == "read" else len(ev.data)
            for addr, length in self.access_watchpoints:
                if addr < ev.addr + size and ev.addr < addr + length:
                    self.regs[thread] = {**regs, "rip": ev.pc}
                    return Stop("watch", thread=thread, pc=ev.pc, watch_addr=addr,
                                watch_access="access")
        if ev.kind == "read":
            for addr, length in self.read_watchpoints:
                if addr < ev.addr + ev.length and ev.addr < addr + length:
                    self.regs[thread] = {**regs, "rip": ev.pc}
                    return Stop("watch", thread=thread, pc=ev.pc, watch_addr=addr,
                                watch_access="read")
        return None

class Program:
    """Builds a script of calls with realistic frames for one watched function.

    The watched function's frame: CFA = sp + 0x30 at the probe, return address at
    CFA-8, saved rbp at CFA-16, rbp = CFA-16, canary at rbp-8.
    """

    CFA_FROM_SP = 0x30

    def __init__(self, fake: FakeTarget, probe: int, ret_site: int) -> None:
        self.fake = fake
        self.probe = probe
        self.ret_site = ret_site

    def call(self, task: int, sp: int, cpu: int = 0, ret_site: int | None = None,
             canary: bytes = GUARD) -> dict[str, int]:
        cfa = sp + self.CFA_FROM_SP
        rbp = cfa - 16
        ret = self.ret_site if ret_site is None else ret_site
        self.fake.write(cfa - 8, ret.to_bytes(8, "little"))
        self.fake.write(rbp - 8, canary)
        regs = {"rsp": sp, "rbp": rbp}
        self.fake.script.append(Event("probe", cpu=cpu, task=task, regs=regs, pc=self.probe))
        return {"cfa": cfa, "rbp": rbp, "canary": rbp - 8, "sp": sp}

    def ret(self, task: int, frame: dict[str, int], cpu: int = 0,
            ret_site: int | None = None) -> None:
        ret = self.ret_site if ret_site is None else ret_site
        regs = {"rsp": frame["cfa"], "rbp": 0}
        self.fake.script.append(Event("ret", cpu=cpu, task=task, regs=regs, pc=ret))

    def store(self, task: int, addr: int, value: bytes, pc: int, sp: int, cpu: int = 0) -> None:
        regs = {"rsp": sp, "rbp": sp + 0x10}
        self.fake.script.append(
            Event("write", cpu=cpu, task=task, regs=regs, addr=addr, data=value, pc=pc))
