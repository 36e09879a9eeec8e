"""The host instruction emulator on real x86-64 instruction bytes (no QEMU)."""

from __future__ import annotations

import pytest

from kswgdb.emulate.x86 import Emulated, InstructionEmulator, Refused, coalesce

CODE = 0xFFFFFFFF81000000
STACK = 0xFFFFC90000004000
PERCPU = 0xFFFF888007C00000


class Memory:
    """Guest memory as a dict of bytes; records every read the emulator makes."""

    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}
        self.reads: list[tuple[int, int]] = []

    def put(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.bytes[addr + i] = b

    def read(self, addr: int, length: int) -> bytes:
        self.reads.append((addr, length))
        if any(addr + i not in self.bytes for i in range(length)):
            raise OSError(f"E14 at {addr:#x}")
        return bytes(self.bytes[addr + i] for i in range(length))


def regs(**over: int) -> dict[str, int]:
    base = {n: 0 for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10",
                           "r11", "r12", "r13", "r14", "r15")}
    base.update(rip=CODE, rsp=STACK + 0x100, rbp=STACK + 0x140, eflags=0x246,
                fs_base=0, gs_base=PERCPU)
    base.update(over)
    return base


def emulate(code_hex: str, mem: Memory | None = None, **over: int) -> Emulated | Refused:
    mem = mem or Memory()
    mem.put(CODE, bytes.fromhex(code_hex) + b"\x90" * 16)
    return InstructionEmulator(mem.read).emulate(regs(**over))


def test_store_immediate_to_frame_is_recorded_not_applied():
    mem = Memory()
    out = emulate("48c745f8efbeadde", mem)          # movq $0xffffffffdeadbeef, -8(%rbp)
    assert isinstance(out, Emulated)
    assert out.writes == ((STACK + 0x138, bytes.fromhex("efbeaddeffffffff")),)
    assert out.registers == {"rip": CODE + 8}
    assert STACK + 0x138 not in mem.bytes          # the guest is untouched
    assert not any(STACK <= a < STACK + 0x1000 for a, _ in mem.reads)  # a store reads nothing


def test_add_to_rsp_changes_rsp_and_flags_only():
    out = emulate("4883c410")                        # add $0x10, %rsp
    assert isinstance(out, Emulated)
    assert out.writes == ()
    assert out.registers["rsp"] == STACK + 0x110
    assert out.registers["rip"] == CODE + 4
    # 0xffffc900...4110: negative (SF), not zero, no carry, low byte 0x10 has odd parity
    assert out.registers["eflags"] & 0x8D5 == 0x080


def test_leave_reads_saved_rbp_from_the_guest():
    mem = Memory()
    mem.put(STACK + 0x140, (STACK + 0x300).to_bytes(8, "little"))
    out = emulate("c9", mem)                          # leave
    assert isinstance(out, Emulated)
    assert out.registers == {"rbp": STACK + 0x300, "rsp": STACK + 0x148, "rip": CODE + 1}
    assert (STACK + 0x140, 8) in mem.reads


def test_call_pushes_the_return_address():
    out = emulate("e810000000")                       # call .+0x15
    assert isinstance(out, Emulated)
    assert out.registers["rip"] == CODE + 5 + 0x10
    assert out.registers["rsp"] == STACK + 0xF8
    assert out.writes == ((STACK + 0xF8, (CODE + 5).to_bytes(8, "little")),)


def test_gs_relative_read_uses_the_per_cpu_base():
    mem = Memory()
    mem.put(PERCPU + 0x28, bytes.fromhex("1122334455667788"))
    out = emulate("65488b042528000000", mem)         # mov %gs:0x28, %rax
    assert isinstance(out, Emulated)
    assert out.registers["rax"] == 0x8877665544332211


def test_read_modify_write_sees_guest_bytes():
    mem = Memory()
    mem.put(STACK + 0x100, (5).to_bytes(8, "little"))
    out = emulate("48ff0424", mem)                    # incq (%rsp)
    assert isinstance(out, Emulated)
    assert out.writes == ((STACK + 0x100, (6).to_bytes(8, "little")),)


@pytest.mark.parametrize("code_hex, why", [
    ("fa", "privileged"),                 # cli
    ("9d", "system"),                     # popfq
    ("0f01f8", "privileged"),             # swapgs
    ("ec", "system"),                     # in (%dx), %al
    ("0f31", "system"),                   # rdtsc
    ("f3ab", "repeat"),                   # rep stos
    ("66480f6ec0", "xmm0"),               # movq %rax, %xmm0
    ("0f22d8", "privileged"),             # mov %rax, %cr3
    ("0f0b", "system"),                   # ud2
    ("0f01cb", "privileged"),             # stac: AC is not an arithmetic flag
])
def test_unsafe_instructions_are_refused(code_hex, why):
    out = emulate(code_hex)
    assert isinstance(out, Refused)
    assert why in out.reason


def test_unreadable_memory_is_refused_so_the_real_cpu_faults():
    out = emulate("488b4508")                         # mov 8(%rbp), %rax: nothing there
    assert isinstance(out, Refused)
    assert "read of" in out.reason


def test_decoded_instructions_are_cached_per_address():
    mem = Memory()
    mem.put(CODE, bytes.fromhex("4883c410") + b"\x90" * 16)
    emu = InstructionEmulator(mem.read)
    emu.emulate(regs())
    code_reads = len(mem.reads)
    second = emu.emulate(regs(rsp=STACK))
    assert len(mem.reads) == code_reads
    assert isinstance(second, Emulated) and second.registers["rsp"] == STACK + 0x10


def test_data_pages_are_fresh_for_every_emulation():
    mem = Memory()
    mem.put(STACK + 0x140, (1).to_bytes(8, "little"))
    mem.put(CODE, bytes.fromhex("c9") + b"\x90" * 16)
    emu = InstructionEmulator(mem.read)
    assert emu.emulate(regs()).registers["rbp"] == 1
    mem.put(STACK + 0x140, (2).to_bytes(8, "little"))
    assert emu.emulate(regs()).registers["rbp"] == 2


def test_coalesce_keeps_the_last_bytes_per_address():
    assert coalesce(((0x10, b"\x01\x02"), (0x11, b"\x03"), (0x20, b"\x04"))) == [
        (0x10, b"\x01\x03"), (0x20, b"\x04")]


def test_public_register_api_fallback_gives_the_same_result():
    mem = Memory()
    mem.put(STACK + 0x140, (STACK + 0x300).to_bytes(8, "little"))
    mem.put(CODE, bytes.fromhex("c9") + b"\x90" * 16)
    emu = InstructionEmulator(mem.read)
    fast = emu.emulate(regs())
    emu._load._fast = emu._read_back._fast = False
    slow = emu.emulate(regs())
    assert isinstance(fast, Emulated) and fast == slow


def test_scratch_pages_are_bounded_and_emulation_goes_on(monkeypatch):
    from kswgdb.emulate import x86 as emulate_mod
    monkeypatch.setattr(emulate_mod, "MAX_SCRATCH_PAGES", 3)
    mem = Memory()
    mem.put(CODE, bytes.fromhex("c9") + b"\x90" * 16)     # leave: reads [rbp]
    emu = InstructionEmulator(mem.read)
    for i in range(6):                                   # a new stack page each time
        rbp = STACK + i * 0x1000 + 0x140
        mem.put(rbp, (i + 1).to_bytes(8, "little"))
        out = emu.emulate(regs(rbp=rbp))
        assert isinstance(out, Emulated) and out.registers["rbp"] == i + 1
        assert len(emu._pages) <= 3 + 1
