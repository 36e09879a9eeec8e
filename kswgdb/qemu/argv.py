"""Build QEMU's command line from an image description and a few options.

The result is always a list handed to ``execve`` — never a shell string — so a
kernel command line or a path with spaces cannot turn into extra QEMU options.
This module does no I/O beyond checking that a named BIOS exists; it is the part of
the machine layer that unit tests can check completely.

Choices made here, and why:

* ``-nodefaults -display none``: no VGA, NIC or default serial/monitor; the guest's
  only channels are the ones we wire to our private sockets.
* ``-no-reboot``: a triple fault becomes a QEMU exit with a SHUTDOWN event
  (reason ``guest-reset``) instead of an endless reboot loop.
* ``isa-debug-exit`` at 0xf4: the test kernel reports its result as QEMU's exit
  status, ``(code << 1) | 1``.
* Console and QMP sockets: *we* listen and QEMU connects at startup
  (``server=off``), so the connection exists before the first guest instruction and
  not a console byte is lost. The gdbstub socket is the other way round
  (``server=on,wait=off``): QEMU listens and the remote client connects when ready.
* ``-S``: start with the vCPUs stopped so watchpoints can be armed before the guest
  runs a single instruction.
* ``-device vmcoreinfo`` for a Linux guest: the kernel's fw_cfg driver tells it where
  its VMCOREINFO note is, and QEMU's ``dump-guest-memory`` copies that note into the
  dump, which makes a freeze dump a Linux vmcore that drgn and crash open.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kswgdb.image import Image, parse_size  # noqa: F401  (parse_size: re-exported)
from kswgdb.qemu.rundir import RunPaths

QEMU_BINARY = "qemu-system-x86_64"
QBOOT_NAME = "qboot.rom"
QBOOT_ROM = Path("/usr/share/qemu") / QBOOT_NAME
DEBUG_EXIT_IOBASE = 0xF4

#: TCG with one host thread for all vCPUs (round-robin). Multi-threaded TCG loses
#: stop reports when two vCPUs trap at once (QEMU 7.2 reports only the last; the
#: other's watchpoint flag then rides on a later stop) and was seen to wedge the
#: LAPIC timer under thousands of gdbstub steps. Round-robin TCG keeps every
#: debug event ordered; on 2 cores it costs little, since a debugged guest is
#: stopped most of the time anyway. (Not yet benchmarked against multi-threaded TCG.)
TCG_ACCEL = "tcg,thread=single"

#: CPU model used under KVM. ``-cpu host`` alone fails on some hosts (the software
#: KVM here rejects MSR 0x10a, IA32_ARCH_CAPABILITIES); dropping that one feature
#: is harmless on a real VT-x/AMD-V host, and the accelerator probe uses the same.
KVM_CPU = "host,-arch-capabilities"

SharedRam = Literal["file", "memfd"] | None

def bios_path(bios: str | None, firmware_dirs: Sequence[Path] = ()) -> Path | None:
    """The firmware file for an image's ``bios`` key: "qboot", a path, or None (QEMU's own).

    "qboot" is the qboot.rom of the QEMU that runs: the first of its firmware
    directories (``-L help``) that has one, else the system's `QBOOT_ROM`.
    """
    if bios is None or bios == "":
        return None
    if bios == "qboot":
        return next((d / QBOOT_NAME for d in firmware_dirs if (d / QBOOT_NAME).is_file()),
                    QBOOT_ROM)
    return Path(bios)


@dataclass(frozen=True)
class QemuOptions:
    """Everything besides the image that shapes the command line.

    ``shared_ram`` puts guest RAM in a shared memory backend so another process (a
    later feature: reading guest memory without the gdbstub) can map it: ``"file"``
    uses ``ram_file`` (a tmpfs file), ``"memfd"`` an anonymous memfd reachable through
    ``/proc/<qemu-pid>/fd``.
    """

    accel: Literal["tcg", "kvm"] = "tcg"
    scenario: int | None = None
    extra_cmdline: str = ""
    paused: bool = True
    shared_ram: SharedRam = None
    ram_file: Path | None = None
    cpu: str | None = None          # None: KVM_CPU under kvm, QEMU's default under tcg
    smp: int | None = None          # None: image.cpus
    memory: str | None = None       # None: image.memory
    machine: str | None = None      # None: image.machine (e.g. to benchmark q35 vs pc)
    bios: str | None = "image"      # "image": image.bios; None: QEMU's default
    gdb: bool = True
    name: str | None = None
    extra_args: tuple[str, ...] = ()
    qemu_binary: str = QEMU_BINARY
    firmware_dirs: tuple[Path, ...] = ()   # the binary's -L help, for "qboot"
    version_args: tuple[str, ...] = ()     # what this QEMU version needs (Quirks.tcg_args)
    initrd: Path | None = None      # None: image.initrd (a run's copy carries its command)


def build_argv(image: Image, paths: RunPaths, opts: QemuOptions | None = None) -> list[str]:
    """The complete QEMU argument list (``argv[0]`` is the binary) for one machine."""
    opts = opts or QemuOptions()
    memory = opts.memory or image.memory
    machine = opts.machine or image.machine
    bios = bios_path(image.bios if opts.bios == "image" else opts.bios, opts.firmware_dirs)

    argv: list[str] = [opts.qemu_binary]
    argv += ["-name", f"{_opt('kswgdb-' + (opts.name or image.name))},debug-threads=on"]
    argv += ["-accel", TCG_ACCEL if opts.accel == "tcg" else opts.accel]
    cpu = opts.cpu if opts.cpu is not None else (KVM_CPU if opts.accel == "kvm" else None)
    if cpu:
        argv += ["-cpu", cpu]
    argv += list(opts.version_args)
    argv += ["-smp", str(opts.smp or image.cpus)]
    argv += ["-m", memory]

    if opts.shared_ram is not None:
        argv += ["-object", _ram_backend(opts.shared_ram, memory, opts.ram_file)]
        machine = f"{machine},memory-backend=ram0"
    argv += ["-machine", machine]
    if bios is not None:
        argv += ["-bios", str(bios)]

    argv += ["-kernel", str(image.kernel)]
    initrd = opts.initrd or image.initrd
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    cmdline = image.cmdline_for(opts.scenario, opts.extra_cmdline)
    if cmdline:
        argv += ["-append", cmdline]

    argv += ["-display", "none", "-nodefaults", "-no-reboot"]
    argv += ["-device", f"isa-debug-exit,iobase={DEBUG_EXIT_IOBASE:#x},iosize=0x04"]
    if image.guest == "linux":
        argv += ["-device", "vmcoreinfo"]
    argv += ["-chardev", f"socket,id=con0,path={_opt(paths.console_sock)},server=off"]
    argv += ["-serial", "chardev:con0"]
    argv += ["-chardev", f"socket,id=qmp0,path={_opt(paths.qmp_sock)},server=off"]
    argv += ["-mon", "chardev=qmp0,mode=control"]
    if opts.gdb:
        argv += ["-chardev", f"socket,id=gdb0,path={_opt(paths.gdb_sock)},server=on,wait=off"]
        argv += ["-gdb", "chardev:gdb0"]
    if opts.paused:
        argv.append("-S")
    argv += list(image.qemu_args_for(opts.scenario))
    argv += list(opts.extra_args)
    return argv


def _ram_backend(kind: str, memory: str, ram_file: Path | None) -> str:
    """The ``-object`` value of a shared RAM backend of exactly the machine's size."""
    size = parse_size(memory)
    if kind == "memfd":
        return f"memory-backend-memfd,id=ram0,size={size},share=on"
    if kind == "file":
        if ram_file is None:
            raise ValueError("shared_ram='file' needs ram_file")
        return f"memory-backend-file,id=ram0,size={size},mem-path={_opt(ram_file)},share=on"
    raise ValueError(f"unknown shared_ram kind: {kind!r}")


def _opt(path: Path | str) -> str:
    """A path inside a QEMU option list: a comma must be doubled to stay literal."""
    return str(path).replace(",", ",,")


def format_argv(argv: Sequence[str]) -> str:
    """A copy-pasteable rendering of argv for error messages and logs (never executed)."""
    return shlex.join(argv)
