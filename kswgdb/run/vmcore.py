"""The vmcore of a frozen guest: dump it, keep the guest's clock of that moment, and
say which command opens it.

A Linux guest's dump is a Linux vmcore when it carries the kernel's VMCOREINFO ELF
note (OSRELEASE, PAGESIZE, KERNELOFFSET, SYMBOL(swapper_pg_dir), phys_base...):
that note is what drgn and crash read first, KASLR included. QEMU copies it into
``dump-guest-memory``'s ELF notes when the machine has ``-device vmcoreinfo`` (which
kswgdb adds for Linux guests, `kswgdb.qemu.argv`) and the kernel's fw_cfg driver
(``qemu_fw_cfg``, CONFIG_FW_CFG_SYSFS) told the device where the note is. A dump made
without either still has the note's text in guest memory (``vmcoreinfo_data``): it is
read through the stub and written beside the dump, for ``drgn --vmcoreinfo``.

The test kernel has no VMCOREINFO: gdb reads its dump, given the symbol file moved by
the slide.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from elftools.elf.elffile import ELFFile

from kswgdb.image import Image
from kswgdb.symbols.slide import KernelSlide, gdb_symbols
from kswgdb.watch.guest import guest_time

if TYPE_CHECKING:
    from kswgdb.run.rig import Rig

#: The ELF note name the kernel gives its vmcoreinfo (and QEMU keeps).
VMCOREINFO_NOTE = "VMCOREINFO"
#: The kernel keeps its vmcoreinfo in one page (VMCOREINFO_BYTES).
VMCOREINFO_MAX = 4096


@dataclass(frozen=True)
class FrozenCore:
    """A dump of the frozen guest and what a user needs to open it."""

    path: Path
    ticks: int | None           # the guest's tick counter (jiffies) at the dump, via the stub
    inspect: str                # a command that opens the dump for this kernel
    vmcoreinfo: str | None = None   # Linux: "note" (in the dump), "file" (beside it) or None


def freeze_vmcore(rig: Rig, why: str = "hit") -> FrozenCore:
    """Keep the moment: a vmcore through QMP while the guest is stopped, beside the log,
    and a ``vmcore`` event naming it (docs/events.md).

    The tick counter is read through the stub first: the value any reader of the dump
    must find there (the guest does not run between the two).
    """
    assert rig.machine is not None
    ticks = _ticks(rig)
    # A random suffix: two runs freezing in the same second never share a file.
    path = rig.plan.vmcore_dir / (f"kswgdb-vmcore-{time.strftime('%Y%m%d-%H%M%S')}-"
                                  f"{secrets.token_hex(4)}.elf")
    rig.machine.qmp.dump_guest_memory(path)
    frozen = describe(rig, path, ticks)
    if rig.log is not None:
        rig.log.write("vmcore", sync=True, path=str(path), why=why, ticks=ticks,
                      inspect=frozen.inspect, vmcoreinfo=frozen.vmcoreinfo)
    return frozen


def describe(rig: Rig, path: Path, ticks: int | None = None) -> FrozenCore:
    """The `FrozenCore` of a dump already written (also a poll's, dumped by `PhysWatch`)."""
    image = rig.plan.image
    slide = rig.placement.slide if rig.placement is not None else None
    if image.guest != "linux":
        return FrozenCore(path, ticks, inspect_command(image, path, slide))
    if has_vmcoreinfo_note(path):
        return FrozenCore(path, ticks, inspect_command(image, path, slide), "note")
    side = _save_vmcoreinfo(rig, path)
    return FrozenCore(path, ticks, inspect_command(image, path, slide, side),
                      "file" if side is not None else None)


def inspect_command(image: Image, vmcore: Path, slide: KernelSlide | None,
                    vmcoreinfo_file: Path | None = None) -> str:
    """A command line that opens ``vmcore`` for this image's kernel.

    Linux: drgn, with the vmlinux and every module object of the image (drgn places
    each where the dump's module list says, and ignores one that is not loaded).
    Other kernels: gdb with the symbol file moved by the KASLR slide. Not crash:
    before crash 9.0 its plain ``bt`` of a task running at the freeze aborts on
    a kernel without CONFIG_X86_MCE, Debian's cloud kernel (README, "Freezing it").
    """
    if image.guest != "linux":
        return f"gdb {gdb_symbols(image.symbols, slide)} {shlex.quote(str(vmcore))}"
    words = ["drgn", "-c", str(vmcore)]
    if vmcoreinfo_file is not None:
        words += ["--vmcoreinfo", str(vmcoreinfo_file)]
    words += ["-s", str(image.symbols)]
    if image.modules_dir is not None:
        for ko in sorted(image.modules_dir.glob("*.ko")):
            words += ["-s", str(ko)]
    return shlex.join(words)


def has_vmcoreinfo_note(path: Path) -> bool:
    """Does the ELF dump carry a VMCOREINFO note (only the note segments are read)?"""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            return any(note["n_name"] == VMCOREINFO_NOTE
                       for seg in elf.iter_segments() if seg.header.p_type == "PT_NOTE"
                       for note in seg.iter_notes())
    except Exception:  # noqa: BLE001 - an unreadable dump has no note
        return False


def _ticks(rig: Rig) -> int | None:
    target = rig.target
    if target is None or rig.layout is None:
        return None
    return guest_time(rig.layout, target.read)


def _save_vmcoreinfo(rig: Rig, path: Path) -> Path | None:
    """The kernel's vmcoreinfo text, read through the stub, written to ``PATH.vmcoreinfo``.

    ``vmcoreinfo_data`` points at the page the kernel filled at boot (KERNELOFFSET
    included); ``vmcoreinfo_size`` is how much of it is text. None when the kernel
    has neither or the stub is gone.
    """
    program = rig.placement.program if rig.placement is not None else None
    target = rig.target
    if program is None or target is None:
        return None
    try:
        data_ptr = program.global_address("vmcoreinfo_data")
        size_addr = program.global_address("vmcoreinfo_size")
        data = int.from_bytes(target.read(data_ptr, 8), "little")
        size = int.from_bytes(target.read(size_addr, 8), "little")
        if not data or not 0 < size <= VMCOREINFO_MAX:
            return None
        text = target.read(data, size)
    except Exception:  # noqa: BLE001 - the hint then says there is no vmcoreinfo
        return None
    side = path.with_name(path.name + ".vmcoreinfo")
    fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:        # 0600 like the dump: it is guest memory
        out.write(text)
    return side
