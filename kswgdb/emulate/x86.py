"""Run the one instruction a stopped vCPU sits on, on the host, instead of stepping it.

Why: QEMU 7.2's gdbstub flushes the whole TCG translation cache whenever
single-step is switched on or off (``cpu_single_step`` -> ``tb_flush``), so
leaving a breakpoint by a real step costs the guest a full re-translation of
everything it runs next. Doing the instruction's effect with ``M``/``P``
packets that ride along with the resume costs a few host microseconds and no
flush at all.

The instruction is run by the ``unicorn`` CPU emulator: registers come from
the stop's ``g`` read, guest memory is fetched lazily through a read callback
(the gdbstub ``m`` packet) exactly where the instruction reads, and every
write is recorded, not applied: the caller decides whether to apply it (``M``)
or to fall back to a real step. The emulator refuses, and the caller steps,
for anything it cannot do faithfully on the host: privileged, I/O, system,
time-reading and string (``rep``) instructions, anything touching a register
that ``g`` does not give us (SSE, x87, segment selectors, control registers)
or that changes the interrupt flag, and any fault.

This module knows nothing about gdbstub packets or watching: it maps guest
virtual addresses 1:1 into a scratch unicorn address space for the duration
of one instruction.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import capstone
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_OK,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as ux

PAGE = 0x1000
MAX_INSN = 15
MASK64 = (1 << 64) - 1
#: unicorn runs x86-64 without paging and keeps 52 address bits, so a kernel
#: address 0xffffffff81000000 reaches its hooks as 0xfffff81000000. Guest
#: addresses are 4-level canonical (bit 47 sign-extended), so they map 1:1 to
#: their low 52 bits and back; 5-level (LA57) addresses are refused.
UC_ADDR_MASK = (1 << 52) - 1
#: CF PF AF ZF SF DF OF: the flags an ordinary instruction may change.
ARITH_FLAGS = 0x0001 | 0x0004 | 0x0010 | 0x0040 | 0x0080 | 0x0400 | 0x0800

#: Register names as the gdb x86-64 layout spells them -> unicorn ids.
GPRS: dict[str, int] = {
    "rax": ux.UC_X86_REG_RAX, "rbx": ux.UC_X86_REG_RBX, "rcx": ux.UC_X86_REG_RCX,
    "rdx": ux.UC_X86_REG_RDX, "rsi": ux.UC_X86_REG_RSI, "rdi": ux.UC_X86_REG_RDI,
    "rbp": ux.UC_X86_REG_RBP, "rsp": ux.UC_X86_REG_RSP,
    "r8": ux.UC_X86_REG_R8, "r9": ux.UC_X86_REG_R9, "r10": ux.UC_X86_REG_R10,
    "r11": ux.UC_X86_REG_R11, "r12": ux.UC_X86_REG_R12, "r13": ux.UC_X86_REG_R13,
    "r14": ux.UC_X86_REG_R14, "r15": ux.UC_X86_REG_R15,
}
#: What the emulator needs from the stop's registers.
NEEDED_REGISTERS = (*GPRS, "rip", "eflags", "fs_base", "gs_base")

#: Instructions that are refused whatever their operands: they do I/O, read
#: time or host state, change the interrupt flag or processor state, or are
#: privileged (capstone's privilege/int/iret groups catch most of the rest).
REFUSED_MNEMONICS = frozenset({
    "in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd",
    "cli", "sti", "popf", "popfq", "popfd", "hlt", "pause",
    "rdtsc", "rdtscp", "rdpmc", "rdrand", "rdseed", "cpuid", "xgetbv",
    "syscall", "sysret", "sysretq", "sysenter", "sysexit", "swapgs",
    "rdmsr", "wrmsr", "rdfsbase", "rdgsbase", "wrfsbase", "wrgsbase",
    "int", "int1", "int3", "into", "iret", "iretd", "iretq", "ud0", "ud1", "ud2",
    "invlpg", "wbinvd", "invd", "clflush", "clflushopt", "clwb", "monitor", "mwait",
    "lgdt", "lidt", "lldt", "ltr", "sgdt", "sidt", "sldt", "str", "lmsw", "smsw",
    "enter", "xlatb", "bound", "lar", "lsl", "verr", "verw", "ljmp", "lcall", "retf",
    "retfq", "lret", "lretq", "xsave", "xrstor", "xsaves", "xrstors", "fxsave", "fxrstor",
    # flags outside the arithmetic ones, transactions, serialising and cache control
    "stac", "clac", "xbegin", "xend", "xabort", "xtest", "serialize", "wbnoinvd",
    "invpcid", "prefetchw", "umonitor", "umwait", "tpause", "rsm", "getsec",
})


def _gpr_family() -> frozenset[str]:
    """Every name capstone uses for a piece of a general-purpose register."""
    names = {"rax", "rbx", "rcx", "rdx", "eax", "ebx", "ecx", "edx", "ax", "bx", "cx", "dx",
             "al", "bl", "cl", "dl", "ah", "bh", "ch", "dh",
             "rsi", "rdi", "rbp", "rsp", "esi", "edi", "ebp", "esp", "si", "di", "bp", "sp",
             "sil", "dil", "bpl", "spl", "rip", "eip", "rflags", "eflags"}
    for n in range(8, 16):
        names |= {f"r{n}", f"r{n}d", f"r{n}w", f"r{n}b"}
    return frozenset(names)


ALLOWED_READ = _gpr_family() | {"fs", "gs"}   # fs:/gs: overrides use the bases we load
ALLOWED_WRITE = _gpr_family()
#: Scratch pages kept mapped before the emulator starts over (a bound, not a cache size
#: anyone needs to tune: a run touches a few stack and code pages per task).
MAX_SCRATCH_PAGES = 512
_LOADED = (*GPRS.values(), ux.UC_X86_REG_RFLAGS, ux.UC_X86_REG_FS_BASE,
           ux.UC_X86_REG_GS_BASE, ux.UC_X86_REG_RIP)
_READ_BACK = (*GPRS.values(), ux.UC_X86_REG_RFLAGS, ux.UC_X86_REG_RIP)


class _RegisterBatch:
    """One fixed list of 64-bit registers, written or read in one call.

    unicorn's public ``reg_write_batch``/``reg_read_batch`` build their ctypes
    buffers and look up a value class per register on every call (about 40 us
    each for 20 registers, measured, twice per stop); here the buffers are built
    once and the binding's batch primitive is called with them. If a binding
    lacks that primitive, the public API is used.
    """

    def __init__(self, uc: Uc, ids: tuple[int, ...]) -> None:
        self.uc = uc
        self.ids = ids
        n = len(ids)
        self._ids = (ctypes.c_int * n)(*ids)
        self._values = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._values)
        self._ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        self._count = ctypes.c_int(n)
        self._fast = hasattr(uc, "_do_reg_write_batch") and hasattr(uc, "_do_reg_read_batch")

    def write(self, values: list[int]) -> None:
        if not self._fast:
            self.uc.reg_write_batch(list(zip(self.ids, values, strict=True)))
            return
        self._values[:] = [v & MASK64 for v in values]
        status = self.uc._do_reg_write_batch(self._ids, self._ptrs, self._count)
        if status != UC_ERR_OK:
            raise UcError(status)

    def read(self) -> list[int]:
        if not self._fast:
            return list(self.uc.reg_read_batch(self.ids))
        status = self.uc._do_reg_read_batch(self._ids, self._ptrs, self._count)
        if status != UC_ERR_OK:
            raise UcError(status)
        return list(self._values)


@dataclass(frozen=True)
class Emulated:
    """What one instruction did: the caller applies it or steps instead."""

    pc: int
    length: int
    text: str
    registers: dict[str, int]                 # changed registers only (incl. rip)
    writes: tuple[tuple[int, bytes], ...]      # memory writes, in order
    reads: tuple[tuple[int, int], ...] = ()    # memory reads (address, size), in order


@dataclass(frozen=True)
class Refused:
    """Why the instruction was not emulated (the caller then really steps it)."""

    pc: int
    reason: str


@dataclass
class _Insn:
    """A decoded instruction at one address, kept for the run (kernel text is static)."""

    code: bytes
    text: str
    refusal: str | None


@dataclass
class _Run:
    """State of one emulation: bytes known (fetched or written) and writes made."""

    read: Callable[[int, int], bytes]
    known: set[int] = field(default_factory=set)
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    reads: list[tuple[int, int]] = field(default_factory=list)
    error: str | None = None


class InstructionEmulator:
    """Emulates single x86-64 instructions of a stopped guest on the host.

    ``read_memory(addr, length)`` reads guest virtual memory (raising on an
    unreadable address). One emulator serves a whole run; it caches decoded
    instructions per address, never data.
    """

    def __init__(self, read_memory: Callable[[int, int], bytes]) -> None:
        self.read_memory = read_memory
        self._uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self._uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self._uc.hook_add(UC_HOOK_MEM_READ, self._on_read)
        self._uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write)
        self._md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._md.detail = True
        self._insns: dict[int, _Insn] = {}
        self._run: _Run | None = None
        self._pages: set[int] = set()        # mapped scratch pages (unicorn addresses)
        self._loaded: set[int] = set()       # instruction addresses whose bytes are in place
        self._code_pages: set[int] = set()   # guest page numbers holding loaded code
        self._load = _RegisterBatch(self._uc, _LOADED)
        self._read_back = _RegisterBatch(self._uc, _READ_BACK)

    # ----------------------------------------------------------- decoding
    def decode(self, pc: int) -> _Insn:
        """The instruction at ``pc`` and whether it may be emulated (cached)."""
        insn = self._insns.get(pc)
        if insn is None:
            insn = self._insns[pc] = self._decode(pc, self._fetch_code(pc))
        return insn

    def _fetch_code(self, pc: int) -> bytes:
        """Up to 15 bytes at ``pc``, not crossing into a page that need not exist."""
        first = min(MAX_INSN, PAGE - pc % PAGE)
        code = self.read_memory(pc, first)
        if first < MAX_INSN:
            # The next page may be unmapped: decode what we have.
            with contextlib.suppress(Exception):
                code += self.read_memory(pc + first, MAX_INSN - first)
        return code

    def _decode(self, pc: int, code: bytes) -> _Insn:
        found = next(self._md.disasm(code, pc, 1), None)
        if found is None:
            return _Insn(b"", "(bad)", "not a valid instruction")
        text = f"{found.mnemonic} {found.op_str}".strip()
        return _Insn(bytes(found.bytes), text, refusal_reason(found))

    # ---------------------------------------------------------- emulation
    def emulate(self, regs: Mapping[str, int]) -> Emulated | Refused:
        """Run the instruction at ``regs["rip"]``; nothing in the guest is changed."""
        pc = regs["rip"]
        try:
            insn = self.decode(pc)
        except Exception as exc:  # noqa: BLE001 - unreadable code: let the real CPU do it
            return Refused(pc, f"code not readable: {exc}")
        if insn.refusal is not None:
            return Refused(pc, f"{insn.text}: {insn.refusal}")
        if not is_canonical48(pc):
            return Refused(pc, "not a 4-level canonical address")
        missing = [n for n in NEEDED_REGISTERS if n not in regs]
        if missing:
            return Refused(pc, f"registers not known: {', '.join(missing)}")
        uc = self._uc
        if len(self._pages) >= MAX_SCRATCH_PAGES:
            self._forget_pages()        # between instructions, never from inside a hook
        run = self._run = _Run(read=self.read_memory)
        try:
            self._load_code(pc, insn.code)
            run.known.update(range(pc, pc + len(insn.code)))
            self._load.write([*(regs[name] for name in GPRS), regs["eflags"],
                              regs["fs_base"], regs["gs_base"], pc])
            try:
                uc.emu_start(pc, MASK64, count=1)
            except UcError as exc:
                return Refused(pc, f"{insn.text}: {run.error or exc}")
            if run.error is not None:
                return Refused(pc, f"{insn.text}: {run.error}")
            changed = self._changed_registers(regs)
        finally:
            self._run = None
            if any(w // PAGE in self._code_pages or (w + len(d) - 1) // PAGE in self._code_pages
                   for w, d in run.writes):
                self._loaded.clear()    # scratch code bytes may be overwritten: reload them
        if changed.get("rip", pc) == pc:
            return Refused(pc, f"{insn.text}: did not complete in one go")
        return Emulated(pc, len(insn.code), insn.text, changed, tuple(run.writes),
                        tuple(run.reads))

    def _load_code(self, pc: int, code: bytes) -> None:
        """Put the instruction's bytes into scratch memory once (they stay for the run)."""
        if pc in self._loaded:
            return
        self._map(uc_address(pc), len(code))
        self._uc.mem_write(uc_address(pc), code)
        self._code_pages.update({pc // PAGE, (pc + len(code) - 1) // PAGE})
        self._loaded.add(pc)

    def _changed_registers(self, regs: Mapping[str, int]) -> dict[str, int]:
        values = self._read_back.read()
        changed = {}
        for name, value in zip(GPRS, values, strict=False):
            if value & MASK64 != regs[name]:
                changed[name] = value & MASK64
        flags = regs["eflags"]
        new_flags = (flags & ~ARITH_FLAGS) | (values[-2] & ARITH_FLAGS)
        if new_flags != flags:
            changed["eflags"] = new_flags
        changed["rip"] = values[-1] & MASK64
        return changed

    def _map(self, addr: int, length: int) -> None:
        """Scratch pages over unicorn addresses ``[addr, addr+length)``.

        They stay mapped: changing unicorn's memory map costs a re-translation
        (about 0.5 ms an instruction, measured), and stale bytes in them are
        never seen, because every read fetches the bytes this run has not
        seen yet from the guest (`_on_read`).
        """
        for page in range(addr & ~(PAGE - 1), addr + length, PAGE):
            if page not in self._pages:
                self._uc.mem_map(page, PAGE)
                self._pages.add(page)

    def _forget_pages(self) -> None:
        for page in self._pages:
            self._uc.mem_unmap(page, PAGE)
        self._pages.clear()
        self._loaded.clear()

    # -------------------------------------------------------------- hooks
    def _on_unmapped(self, uc: Uc, access: int, addr: int, size: int, value: int,
                     user: object) -> bool:
        """Any page the instruction touches gets a scratch page; its bytes come lazily."""
        if not is_canonical48(guest_address(addr)) or not is_canonical48(
                guest_address(addr + size - 1)):
            assert self._run is not None
            self._run.error = f"address {addr:#x} is not 4-level canonical"
            return False
        try:
            self._map(addr, size)
        except UcError as exc:
            assert self._run is not None
            self._run.error = f"cannot map {addr:#x}: {exc}"
            return False
        return True

    def _on_read(self, uc: Uc, access: int, addr: int, size: int, value: int,
                 user: object) -> None:
        """Fetch exactly the bytes about to be read that this run has not yet seen."""
        run = self._run
        if run is None or run.error is not None:
            return
        self._map(addr, size)
        guest = guest_address(addr)
        run.reads.append((guest, size))
        wanted = [a for a in range(guest, guest + size) if a not in run.known]
        if not wanted:
            return
        start, end = wanted[0], wanted[-1] + 1
        try:
            data = run.read(start, end - start)
        except Exception as exc:  # noqa: BLE001 - unreadable: a real step must fault instead
            run.error = f"read of {start:#x} failed: {exc}"
            uc.emu_stop()
            return
        for offset, byte in enumerate(data):
            if start + offset not in run.known:
                uc.mem_write(uc_address(start + offset), bytes([byte]))
                run.known.add(start + offset)

    def _on_write(self, uc: Uc, access: int, addr: int, size: int, value: int,
                  user: object) -> None:
        run = self._run
        if run is None:
            return
        guest = guest_address(addr)
        run.writes.append((guest, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")))
        run.known.update(range(guest, guest + size))


def uc_address(addr: int) -> int:
    """Where guest virtual ``addr`` lives in unicorn's 52-bit address space."""
    return addr & UC_ADDR_MASK


def guest_address(uc_addr: int) -> int:
    """The canonical guest virtual address of a unicorn address."""
    return uc_addr | (MASK64 & ~UC_ADDR_MASK) if uc_addr & (1 << 47) else uc_addr


def is_canonical48(addr: int) -> bool:
    top = addr >> 47
    return top == 0 or top == (1 << 17) - 1


def refusal_reason(insn: capstone.CsInsn) -> str | None:
    """Why a decoded instruction must be really stepped, or ``None`` if it may be emulated."""
    groups = {insn.group_name(g) for g in insn.groups}
    if groups & {"privilege", "int", "iret", "vm"}:
        return "privileged instruction"
    if insn.mnemonic.startswith("rep") or any(p in (0xF2, 0xF3) for p in insn.prefix):
        return "repeat prefix"
    if insn.mnemonic in REFUSED_MNEMONICS:
        return "system, I/O or time instruction"
    try:
        reads, writes = insn.regs_access()
    except capstone.CsError:
        return "operands not decodable"
    for reg in reads:
        if insn.reg_name(reg) not in ALLOWED_READ:
            return f"reads {insn.reg_name(reg)}"
    for reg in writes:
        if insn.reg_name(reg) not in ALLOWED_WRITE:
            return f"writes {insn.reg_name(reg)}"
    return None


def coalesce(writes: tuple[tuple[int, bytes], ...]) -> list[tuple[int, bytes]]:
    """Recorded writes as the final bytes per contiguous range (later writes win)."""
    final: dict[int, int] = {}
    for addr, data in writes:
        for offset, byte in enumerate(data):
            final[addr + offset] = byte
    out: list[tuple[int, bytes]] = []
    for addr in sorted(final):
        if out and out[-1][0] + len(out[-1][1]) == addr:
            out[-1] = (out[-1][0], out[-1][1] + bytes([final[addr]]))
        else:
            out.append((addr, bytes([final[addr]])))
    return out


__all__ = ["Emulated", "InstructionEmulator", "Refused", "coalesce", "refusal_reason"]
