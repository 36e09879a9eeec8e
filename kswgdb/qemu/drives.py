"""``--drive PATH[,overlay]``: a disk image given to the guest, never modified.

Read-only by default (``readonly=on``: QEMU refuses the guest's writes). With
``,overlay`` the guest may write, into a throw-away qcow2 overlay created in the
run's private directory (``qemu-img create -b PATH -F FORMAT``), removed with it;
the image itself is only ever the overlay's read-only backing file. The image's
format comes from ``qemu-img info --output=json`` (a raw image named as qcow2,
or the other way round, would be read wrongly or refused). Every drive is a
virtio-blk disk (``if=virtio``), in command-line order: vda, vdb...

`check_drives` runs before boot (missing or unreadable file, unknown format:
one line, exit 2); `drive_args` runs when the run directory exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kswgdb.errors import BadInput, InfraError

MODES = ("ro", "overlay")
QEMU_IMG = "qemu-img"
#: qemu-img answers in milliseconds; a busy 2-core machine may take a while.
QEMU_IMG_TIMEOUT = 30.0


@dataclass(frozen=True)
class Drive:
    """One checked ``--drive``: the image, how it is attached, its format."""

    path: Path
    mode: str = "ro"               # "ro" | "overlay"
    format: str = "raw"

    def describe(self) -> str:
        how = "throw-away overlay" if self.mode == "overlay" else "read-only"
        return f"{self.path} ({self.format}, {how})"


def parse_drive(text: str) -> tuple[Path, str]:
    """``PATH`` or ``PATH,overlay`` (or ``PATH,ro``) -> (path, mode)."""
    path, sep, mode = text.rpartition(",")
    if not sep or mode not in MODES:
        path, mode = text, "ro"
    if not path:
        raise BadInput(f"--drive {text!r}: no file named (PATH or PATH,overlay)")
    return Path(path), mode


def qemu_img_for(qemu_binary: str | None = None) -> str:
    """The qemu-img next to the QEMU that runs, else the one on PATH."""
    exe = shutil.which(qemu_binary) if qemu_binary else None
    if exe:
        sibling = Path(exe).with_name(QEMU_IMG)
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    found = shutil.which(QEMU_IMG)
    if found is None:
        raise InfraError("--drive needs qemu-img, which is not installed (Debian package "
                         "qemu-utils; `make setup` installs it)")
    return found


def image_format(path: Path, qemu_img: str) -> str:
    """The image's format as QEMU sees it (``qemu-img info``; ``-U``: it may be in use)."""
    try:
        proc = subprocess.run([qemu_img, "info", "-U", "--output=json", str(path)],
                              capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(f"qemu-img info {path}: {exc}") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise BadInput(f"--drive {path}: {why.removeprefix('qemu-img: ')}")
    try:
        return str(json.loads(proc.stdout)["format"])
    except (ValueError, KeyError, TypeError):
        raise InfraError(f"qemu-img info {path}: unexpected output") from None


def check_drive(text: str, qemu_img: str) -> Drive:
    """One ``--drive`` value, checked: the file exists, is readable, has a known format."""
    path, mode = parse_drive(text)
    if not path.exists():
        raise BadInput(f"--drive {path}: no such file")
    if path.is_dir():
        raise BadInput(f"--drive {path}: is a directory (give a disk image file)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise BadInput(f"--drive {path}: cannot read it ({exc.strerror or exc})") from None
    path = path.resolve()
    return Drive(path=path, mode=mode, format=image_format(path, qemu_img))


def check_drives(texts: Sequence[str], qemu_binary: str | None = None) -> list[Drive]:
    """Every ``--drive``, checked before boot; the same file twice is refused."""
    if not texts:
        return []
    qemu_img = qemu_img_for(qemu_binary)
    drives = [check_drive(t, qemu_img) for t in texts]
    seen: set[Path] = set()
    for d in drives:
        if d.path in seen:
            raise BadInput(f"--drive {d.path}: given twice")
        seen.add(d.path)
    return drives


def _opt(value: Path | str) -> str:
    """A value inside a QEMU option list: a comma is doubled to stay literal."""
    return str(value).replace(",", ",,")


def create_overlay(drive: Drive, dest: Path, qemu_img: str) -> None:
    """A qcow2 overlay at ``dest`` over ``drive``'s image (its backing file, read-only)."""
    argv = [qemu_img, "create", "-q", "-f", "qcow2", "-b", str(drive.path),
            "-F", drive.format, str(dest)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(f"qemu-img create (overlay of {drive.path}): {exc}") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise InfraError(f"qemu-img create (overlay of {drive.path}): {why}")


def drive_args(drives: Sequence[Drive], run_dir: Path, qemu_binary: str | None = None
               ) -> list[str]:
    """QEMU's ``-drive`` arguments, creating each overlay in ``run_dir`` first."""
    argv: list[str] = []
    qemu_img = qemu_img_for(qemu_binary) if any(d.mode == "overlay" for d in drives) else ""
    for i, drive in enumerate(drives):
        node = f"kswdrive{i}"
        if drive.mode == "overlay":
            overlay = run_dir / f"{node}-overlay.qcow2"
            create_overlay(drive, overlay, qemu_img)
            value = f"file={_opt(overlay)},format=qcow2"
        else:
            value = f"file={_opt(drive.path)},format={drive.format},readonly=on"
        argv += ["-drive", f"{value},if=virtio,id={node}"]
    return argv
