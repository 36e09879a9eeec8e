"""The guest command of a Linux image, carried in the initramfs, not on the command line.

``--cmdline '... -- COMMAND'`` asks the image's /init to run COMMAND. On the
kernel command line it would meet the kernel's limits: every word the kernel
does not know is handed to init as an argument or an environment variable, at
most 32 of each (``MAX_INIT_ARGS``/``MAX_INIT_ENVS``), and the 33rd panics the
guest ("Too many boot init vars"); the whole line is at most 2048 bytes. So the
words after `` -- `` go into a file, ``/kswgdb-command``, in a small cpio
archive appended to a per-run copy of the image's initrd (Linux unpacks
concatenated archives in order), and only the words before `` -- `` stay on
the kernel command line. images/linux/init reads that file first.

The user's ``--module`` files travel the same way, in the same archive, under
``/kswgdb-modules/`` (numbered in command-line order); /init loads each of them
after the image's own modules and before the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kswgdb.qemu.cpio import S_IFDIR, S_IFREG, Entry, append_archive

#: Where the command lands in the guest's root file system.
COMMAND_FILE = "kswgdb-command"
#: Where the user's ``--module`` files land; /init loads every ``*.ko`` there, in order.
MODULES_DIR = "kswgdb-modules"
SEPARATOR = " -- "


def split_command(extra: str) -> tuple[str, str | None]:
    """(kernel words, the guest command after `` -- `` or None)."""
    padded = f" {extra} "
    if SEPARATOR not in padded:
        return extra, None
    kernel, command = padded.split(SEPARATOR, 1)
    return kernel.strip(), command.strip()


def command_entries(command: str) -> list[Entry]:
    return [Entry(COMMAND_FILE, S_IFREG | 0o644, command.encode() + b"\n")]


def module_entries(modules: Sequence[Path]) -> list[Entry]:
    """The user's modules under `MODULES_DIR`, numbered so /init loads them in order."""
    if not modules:
        return []
    entries = [Entry(MODULES_DIR, S_IFDIR | 0o755)]
    for i, ko in enumerate(modules, start=1):
        entries.append(Entry(f"{MODULES_DIR}/{i:02d}-{ko.name}", S_IFREG | 0o644,
                             ko.read_bytes()))
    return entries


def prepare(guest: str | None, initrd: Path | None, extra: str, run_dir: Path,
            modules: Sequence[Path] = ()) -> tuple[str, Path | None]:
    """(kernel command-line words, the initrd to boot) for a Linux image's run.

    ``modules``: the user's ``--module`` files, loaded by /init before the command.
    """
    if guest != "linux" or initrd is None:
        return extra, None
    kernel, command = split_command(extra)
    if command is None and not modules:
        return extra, None
    entries = (command_entries(command) if command is not None else []) + \
        module_entries(modules)
    dest = run_dir / "initrd-run.img"
    append_archive(initrd, entries, dest)
    return (kernel if command is not None else extra), dest
