"""Is this symbol file the kernel that runs in the guest? Checked in the guest's memory.

`kswgdb run` compares the kernel file QEMU boots with the symbol file before boot
(`kswgdb.symbols.match`). A guest someone else started gives no kernel file, only
its memory, so the same question is asked there, once the kernel is placed:

* the GNU build-id, when the symbol file has one in an allocated note (Linux's
  ``.notes`` lies in its read-only data and is never patched): the note's bytes
  at their guest address must be the file's;
* otherwise (the test kernel has no build-id) the first bytes of the watched
  functions. Not on Linux: the kernel rewrites its own code at boot (ftrace
  call sites, alternatives, static keys), so code bytes are no proof there.

A symbol file from another build places every watch in the middle of some other
instruction; this is where that becomes one line instead of a silent run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kswgdb.errors import KswError

#: Bytes compared at each watched function when there is no build-id.
FUNCTION_BYTES = 16
_SHF_ALLOC = 0x2


@lru_cache(maxsize=8)
def build_id_note(path: Path) -> tuple[int, bytes] | None:
    """(link-time address, bytes) of the GNU build-id in an allocated note, or None."""
    try:
        return _build_id_note(path)
    except (OSError, ELFError):
        return None


def _build_id_note(path: Path) -> tuple[int, bytes] | None:
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        for section in elf.iter_sections():
            if section["sh_type"] != "SHT_NOTE" or not section["sh_flags"] & _SHF_ALLOC:
                continue
            for note in section.iter_notes():
                if note["n_type"] != "NT_GNU_BUILD_ID" or note["n_name"] != "GNU":
                    continue
                desc_at = (note["n_offset"] - section["sh_offset"] + 12
                           + (note["n_namesz"] + 3) // 4 * 4)
                return section["sh_addr"] + desc_at, bytes.fromhex(str(note["n_desc"]))
    return None


def kernel_mismatch(read: Callable[[int, int], bytes], symbols: Path, slide: int,
                    functions: Iterable[tuple[str, int, bytes]], *,
                    code_is_patched: bool) -> str | None:
    """Why the running kernel is not ``symbols`` (None: it is, as far as can be seen).

    ``read(addr, n)``: guest memory; ``slide``: guest = file + slide for kernel-image
    addresses; ``functions``: (name, guest address, the file's bytes there), compared
    only when there is no build-id and ``code_is_patched`` is false.
    """
    note = build_id_note(Path(symbols))
    if note is not None:
        addr, want = note
        return _differs(read, "build-id", addr + slide, want, symbols)
    if code_is_patched:
        return None
    for name, addr, want in functions:
        why = _differs(read, name, addr, want, symbols)
        if why is not None:
            return why
    return None


def _differs(read: Callable[[int, int], bytes], what: str, addr: int, want: bytes,
             symbols: Path) -> str | None:
    """One line if the guest's bytes at ``addr`` are not ``want`` (the file's)."""
    got = _read(read, addr, len(want))
    if got == want:
        return None
    shown = got.hex() if got is not None else "unreadable memory"
    return (f"the running kernel's {what} at {addr:#x} holds {shown}, {Path(symbols).name} "
            f"has {want.hex()}: the symbols do not match the running kernel")


def _read(read: Callable[[int, int], bytes], addr: int, length: int) -> bytes | None:
    try:
        return read(addr, length)
    except KswError:
        return None


__all__ = ["FUNCTION_BYTES", "build_id_note", "kernel_mismatch"]
