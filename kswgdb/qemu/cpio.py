"""Newc cpio archives, and appending one to an initramfs (Linux unpacks them in order).

The kernel's initramfs may be several archives laid end to end (each 4-byte
aligned, compressed or not); files of a later archive are added to, or replace,
those of an earlier one. kswgdb uses that to give a Linux guest per-run files
(its command, the user's modules) without rebuilding the image's initrd: a
copy of it, padded, then one small uncompressed archive. ``cpio`` is not on
every machine, and the format is a few lines: written here, once, also for
images/linux/build.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRAILER = "TRAILER!!!"
S_IFDIR, S_IFREG = 0o040000, 0o100000


@dataclass(frozen=True)
class Entry:
    """One file or directory of an archive: its path inside (no leading /), mode, bytes."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_entry(name: str, mode: int, data: bytes = b"", ino: int = 0,
               rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One cpio "newc" record (``070701``): 13 hex fields, name, data, each 4-byte aligned."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    rec = head + name.encode() + b"\0"
    rec += b"\0" * (-len(rec) % 4)
    rec += data + b"\0" * (-len(data) % 4)
    return rec


def archive(entries: Iterable[Entry]) -> bytes:
    """A whole newc archive of ``entries`` (inode numbers from 1), with its trailer."""
    blob = bytearray()
    for ino, entry in enumerate(entries, start=1):
        blob += newc_entry(entry.name, entry.mode, entry.data, ino=ino, rdev=entry.rdev)
    blob += newc_entry(TRAILER, 0)
    return bytes(blob)


def append_archive(initrd: Path, entries: Iterable[Entry], dest: Path) -> None:
    """``dest`` = ``initrd``, zero-padded to 4 bytes, then one archive of ``entries``."""
    with open(initrd, "rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(archive(entries))
