"""``--qemu-arg ARG``: extra QEMU arguments, each one argv element, checked first.

They are appended to QEMU's argument list as given (never through a shell), so
``--qemu-arg=-device --qemu-arg=virtio-rng-pci`` adds a device. Arguments that
would take over what kswgdb wires itself are refused before anything starts:
the gdbstub, QMP and monitors, the serial console on stdio, start/stop and
daemon modes, the accelerator (decided and probed by ``--accel``), the RAM size
(RAM may be a shared file of exactly that size) and what the image description
says (kernel, initrd, command line).
"""

from __future__ import annotations

from collections.abc import Sequence

from kswgdb.errors import BadInput

#: Option -> why kswgdb cannot let it through.
REFUSED = {
    "gdb": "kswgdb wires the gdbstub itself",
    "s": "kswgdb wires the gdbstub itself",
    "S": "kswgdb starts the guest stopped itself",
    "qmp": "kswgdb wires QMP itself",
    "qmp-pretty": "kswgdb wires QMP itself",
    "monitor": "kswgdb wires QMP itself (a second monitor could stop or quit the guest "
               "behind its back)",
    "mon": "kswgdb wires QMP itself (a second monitor could stop or quit the guest "
           "behind its back)",
    "daemonize": "kswgdb must own the QEMU process",
    "nographic": "it puts the serial console and a monitor on stdio, which kswgdb owns",
    "incoming": "the guest would wait for a migration and never boot",
    "readconfig": "a config file could rewire the gdbstub, QMP or the console",
    "accel": "use --accel (kswgdb probes the accelerator's watchpoints)",
    "enable-kvm": "use --accel kvm (kswgdb probes the accelerator's watchpoints)",
    "m": "guest RAM is set by the image description (memory = ...)",
    "kernel": "the kernel is the image description's",
    "initrd": "the initrd is the image description's (add files with --module)",
    "append": "use --cmdline for kernel command-line words",
    "no-shutdown": "kswgdb needs QEMU to exit when the guest powers off",
}
#: kswgdb's own chardev ids (kswgdb.qemu.argv): another chardev may not take them.
OWN_CHARDEVS = ("con0", "qmp0", "gdb0")


def _name(arg: str) -> str | None:
    """``-device``/``--device`` -> ``device``; None for a value (no leading dash)."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    return arg.lstrip("-").split("=", 1)[0]


def check_qemu_args(args: Sequence[str]) -> tuple[str, ...]:
    """The ``--qemu-arg`` list, or `BadInput` naming the first argument kswgdb refuses."""
    out: list[str] = []
    previous: str | None = None
    for arg in args:
        if "\0" in arg:
            raise BadInput("--qemu-arg: an argument holds a NUL byte")
        name = _name(arg)
        if name is not None and name in REFUSED:
            raise BadInput(f"--qemu-arg {arg}: refused, {REFUSED[name]}")
        if previous in ("serial", "chardev", "parallel", "debugcon") and "stdio" in arg:
            raise BadInput(f"--qemu-arg -{previous} {arg}: refused, kswgdb owns stdio "
                           "(the guest console is on its own socket)")
        if previous == "chardev" and any(f"id={own}" in arg.split(",") for own in OWN_CHARDEVS):
            raise BadInput(f"--qemu-arg -chardev {arg}: refused, the id is kswgdb's own")
        previous = name if name is not None else None
        out.append(arg)
    if previous is not None and out and out[-1].startswith("-") and \
            previous in _TAKES_VALUE:
        raise BadInput(f"--qemu-arg {out[-1]}: needs a value (another --qemu-arg=VALUE)")
    return tuple(out)


#: Options commonly given whose value must follow (a dangling one is a mistake).
_TAKES_VALUE = {"device", "drive", "netdev", "nic", "object", "chardev", "serial",
                "blockdev", "global", "rtc", "cpu", "smp", "machine", "M", "fsdev",
                "virtfs", "audiodev", "display", "vga", "d", "D", "trace", "boot", "L",
                "bios", "name", "uuid", "fw_cfg", "icount", "numa", "parallel", "debugcon"}
