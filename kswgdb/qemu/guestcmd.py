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
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: Where the command lands in the guest's root file system.
COMMAND_FILE = "kswgdb-command"
SEPARATOR = " -- "


def split_command(extra: str) -> tuple[str, str | None]:
    """(kernel words, the guest command after `` -- `` or None)."""
    padded = f" {extra} "
    if SEPARATOR not in padded:
        return extra, None
    kernel, command = padded.split(SEPARATOR, 1)
    return kernel.strip(), command.strip()


def newc_entry(name: str, mode: int, data: bytes = b"", ino: int = 0,
               rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One cpio "newc" record (``070701``): 13 hex fields, name, data, each 4-byte aligned."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    rec = head + name.encode() + b"\0"
    rec += b"\0" * (-len(rec) % 4)
    rec += data + b"\0" * (-len(data) % 4)
    return rec


def initrd_with_command(initrd: Path, command: str, dest: Path) -> None:
    """``dest`` = ``initrd``, zero-padded to 4 bytes, then an archive holding the command."""
    with open(initrd, "rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(newc_entry(COMMAND_FILE, 0o100644, command.encode() + b"\n", ino=1))
        out.write(newc_entry("TRAILER!!!", 0))


def prepare(guest: str | None, initrd: Path | None, extra: str, run_dir: Path
            ) -> tuple[str, Path | None]:
    """(kernel command-line words, the initrd to boot) for a Linux image's run."""
    if guest != "linux" or initrd is None:
        return extra, None
    kernel, command = split_command(extra)
    if command is None:
        return extra, None
    dest = run_dir / "initrd-command.img"
    initrd_with_command(initrd, command, dest)
    return kernel, dest
