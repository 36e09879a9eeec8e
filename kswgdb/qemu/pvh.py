"""Tiny bootable PVH ELF64 images, built from bytes in Python.

QEMU's ``-kernel`` loads an ELF64 directly when it carries a Xen PVH note
(``XEN_ELFNOTE_PHYS32_ENTRY``, type 18): the vCPU starts at that physical address
in 32-bit protected mode with paging off and flat segments. That is the smallest
possible guest, and it needs no compiler: a few hand-encoded instructions.

They serve two purposes: the accelerator probe (does a write watchpoint fire under
this accelerator?) and machine-layer tests that must not depend on the test
kernel (console, debug-exit, hang, triple fault, ACPI power-off).

Layout of every image: one PT_LOAD at physical 1 MiB (code, then data, then a
zeroed page holding the probe's watched word), one PT_NOTE with the PVH entry.
QEMU reads the entry as a 64-bit value at the note descriptor, so the descriptor
is 8 bytes, as in Linux (``_ASM_PTR``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from kswgdb.image import Image

LOAD_ADDR = 0x100000
#: The word the watch-loop program stores to; first word of the bss page.
PAGE = 0x1000
XEN_ELFNOTE_PHYS32_ENTRY = 18
COM1 = 0x3F8
DEBUG_EXIT_PORT = 0xF4

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4


@dataclass
class Asm:
    """Just enough 32-bit x86 encoding for the programs below, with rel8 jumps to labels."""

    base: int = LOAD_ADDR
    code: bytearray = field(default_factory=bytearray)
    labels: dict[str, int] = field(default_factory=dict)
    _fixups: list[tuple[int, str]] = field(default_factory=list)

    def here(self) -> int:
        """Address of the next instruction."""
        return self.base + len(self.code)

    def label(self, name: str) -> None:
        self.labels[name] = self.here()

    def emit(self, *chunks: bytes | int) -> None:
        for c in chunks:
            self.code += bytes([c]) if isinstance(c, int) else c

    def mov_eax(self, imm: int) -> None:
        self.emit(0xB8, struct.pack("<I", imm & 0xFFFFFFFF))

    def mov_esi(self, imm: int) -> None:
        self.emit(0xBE, struct.pack("<I", imm & 0xFFFFFFFF))

    def mov_al(self, imm: int) -> None:
        self.emit(0xB0, imm & 0xFF)

    def mov_ax(self, imm: int) -> None:
        self.emit(0x66, 0xB8, struct.pack("<H", imm & 0xFFFF))

    def mov_dx(self, imm: int) -> None:
        self.emit(0x66, 0xBA, struct.pack("<H", imm & 0xFFFF))

    def out_al(self) -> None:
        self.emit(0xEE)            # out dx, al

    def out_ax(self) -> None:
        self.emit(0x66, 0xEF)      # out dx, ax

    def out_eax(self) -> None:
        self.emit(0xEF)            # out dx, eax

    def xor_eax_eax(self) -> None:
        self.emit(0x31, 0xC0)

    def inc_eax(self) -> None:
        self.emit(0x40)            # one-byte inc eax (32-bit mode only)

    def store_eax(self, addr: int) -> None:
        self.emit(0xA3, struct.pack("<I", addr))   # mov [moffs32], eax

    def lodsb(self) -> None:
        self.emit(0xAC)

    def test_al_al(self) -> None:
        self.emit(0x84, 0xC0)

    def lidt(self, addr: int) -> None:
        self.emit(0x0F, 0x01, 0x1D, struct.pack("<I", addr))   # lidt [disp32]

    def int3(self) -> None:
        self.emit(0xCC)

    def jmp(self, label: str) -> None:
        self._rel8(0xEB, label)

    def jz(self, label: str) -> None:
        self._rel8(0x74, label)

    def hang(self) -> None:
        self.emit(0xEB, 0xFE)      # jmp $

    def _rel8(self, opcode: int, label: str) -> None:
        self.emit(opcode, 0)
        self._fixups.append((len(self.code) - 1, label))

    def assemble(self) -> bytes:
        """Resolve jumps; the result is position-dependent code for ``base``."""
        out = bytearray(self.code)
        for pos, label in self._fixups:
            rel = self.labels[label] - (self.base + pos + 1)
            if not -128 <= rel <= 127:
                raise ValueError(f"jump to {label} out of rel8 range")
            out[pos] = rel & 0xFF
        return bytes(out)


def build_pvh_elf(code: bytes, data: bytes = b"", *, bss: int = PAGE) -> bytes:
    """An ELF64 executable that QEMU boots with ``-kernel``: code at LOAD_ADDR, entry there.

    ``data`` follows the code; ``bss`` zeroed bytes follow at the next page boundary.
    """
    payload = code + data
    memsz = _align(len(payload), PAGE) + bss
    note_desc = struct.pack("<Q", LOAD_ADDR)
    note = struct.pack("<III", 4, len(note_desc), XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + note_desc
    phnum = 2
    note_off = _EHDR.size + phnum * _PHDR.size
    load_off = PAGE
    ehdr = _EHDR.pack(
        b"\x7fELF\x02\x01\x01" + bytes(9),  # 64-bit, little-endian, version 1, SysV ABI
        2, 0x3E, 1,                          # ET_EXEC, EM_X86_64, EV_CURRENT
        LOAD_ADDR, _EHDR.size, 0,            # entry, phoff, shoff
        0, _EHDR.size, _PHDR.size, phnum, 0, 0, 0,
    )
    ph_load = _PHDR.pack(PT_LOAD, PF_R | PF_W | PF_X, load_off, LOAD_ADDR, LOAD_ADDR,
                         len(payload), memsz, PAGE)
    ph_note = _PHDR.pack(PT_NOTE, PF_R, note_off, 0, 0, len(note), len(note), 4)
    head = ehdr + ph_load + ph_note + note
    return head + bytes(load_off - len(head)) + payload


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def bss_addr(code_and_data_len: int) -> int:
    """Physical address of the zeroed page after ``code_and_data_len`` bytes of payload."""
    return LOAD_ADDR + _align(code_and_data_len, PAGE)


#: Programs keep their code below this offset and their text (if any) at it.
TEXT_OFFSET = 0x800


@dataclass(frozen=True)
class Program:
    """A built image: ELF bytes plus the addresses a test or probe needs."""

    elf: bytes
    watch_addr: int | None = None
    description: str = ""

    def write(self, path: Path) -> Path:
        """Write the ELF to ``path`` and return it."""
        path.write_bytes(self.elf)
        return path

    def image(self, path: Path, *, name: str = "pvh-probe", machine: str = "pc",
              bios: str | None = "qboot", memory: str = "32M", cpus: int = 1) -> Image:
        """Write the ELF and describe it as an `Image` a `Machine` can boot."""
        self.write(path)
        return Image(name=name, path=path, kernel=path, symbols=path, memory=memory,
                     cpus=cpus, machine=machine, bios=bios, guest="raw",
                     description=self.description)


def _build(asm: Asm, text: str, description: str, watch_addr: int | None = None) -> Program:
    code = asm.assemble()
    if len(code) > TEXT_OFFSET:
        raise ValueError("program code overlaps its text")
    data = text.encode() + b"\0" if text else b""
    payload = code + bytes(TEXT_OFFSET - len(code)) + data if data else code
    return Program(build_pvh_elf(payload[:len(code)], payload[len(code):]),
                   watch_addr=watch_addr, description=description)


def _emit_print(asm: Asm, text: str) -> None:
    """Emit: write ``text`` (stored at TEXT_OFFSET) to COM1, byte by byte."""
    if not text:
        return
    asm.mov_esi(LOAD_ADDR + TEXT_OFFSET)
    asm.mov_dx(COM1)
    asm.label("putc")
    asm.lodsb()
    asm.test_al_al()
    asm.jz("putc_done")
    asm.out_al()
    asm.jmp("putc")
    asm.label("putc_done")


def watch_loop(text: str = "") -> Program:
    """Store an incrementing counter to one RAM word forever: the watchpoint probe.

    The watched word is the first of the zeroed page after the payload.
    """
    asm = Asm()
    _emit_print(asm, text)
    payload_len = TEXT_OFFSET + len(text) + 1 if text else 16
    addr = bss_addr(payload_len)
    asm.xor_eax_eax()
    asm.label("loop")
    asm.inc_eax()
    asm.store_eax(addr)
    asm.jmp("loop")
    prog = _build(asm, text, "store loop (accelerator watchpoint probe)", watch_addr=addr)
    # the real payload length is known only now; the bss page must follow it
    assert bss_addr(len(prog.elf) - PAGE) <= addr, "watched word inside the payload"
    return prog


def print_and_exit(text: str, code: int) -> Program:
    """Print one line to COM1, then leave through isa-debug-exit with ``code``."""
    asm = Asm()
    _emit_print(asm, text)
    asm.mov_al(code)
    asm.mov_dx(DEBUG_EXIT_PORT)
    asm.out_al()
    asm.hang()
    return _build(asm, text, f"print, then debug-exit {code:#x}")


def print_and_hang(text: str) -> Program:
    """Print one line, then spin forever: a guest that never finishes."""
    asm = Asm()
    _emit_print(asm, text)
    asm.hang()
    return _build(asm, text, "print, then hang")


def triple_fault(text: str = "") -> Program:
    """Print, load an empty IDT and ``int3``: #GP, #DF, then a triple fault."""
    asm = Asm()
    _emit_print(asm, text)
    idtr = LOAD_ADDR + TEXT_OFFSET - 8       # 6 zero bytes in the padding before the text
    asm.lidt(idtr)
    asm.int3()
    asm.hang()
    return _build(asm, text, "print, then triple fault (null IDT + int3)")


def poweroff_piix4(text: str = "") -> Program:
    """Print, then ACPI soft-off through the PIIX4 PM device of ``-M pc`` (00:01.3).

    We program the PM I/O base ourselves (PMBA at config 0x40, enable bit in
    PMREGMISC 0x80) so the result does not depend on the firmware, then write
    SLP_EN with SLP_TYP=0 to PM1a_CNT: QEMU's guest-shutdown path.
    """
    pm_base = 0x600
    asm = Asm()
    _emit_print(asm, text)
    asm.mov_eax(0x80000000 | (1 << 11) | (3 << 8) | 0x40)
    asm.mov_dx(0xCF8)
    asm.out_eax()
    asm.mov_eax(pm_base | 1)
    asm.mov_dx(0xCFC)
    asm.out_eax()
    asm.mov_eax(0x80000000 | (1 << 11) | (3 << 8) | 0x80)
    asm.mov_dx(0xCF8)
    asm.out_eax()
    asm.mov_al(1)
    asm.mov_dx(0xCFC)
    asm.out_al()
    asm.mov_ax(0x2000)                       # SLP_EN | SLP_TYP(0)
    asm.mov_dx(pm_base + 4)
    asm.out_ax()
    asm.hang()
    return _build(asm, text, "print, then ACPI power-off (PIIX4)")
