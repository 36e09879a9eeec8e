"""Which QEMU kswgdb runs, and which version it is: asked once, kept with the machine.

The binary is, in order: the one chosen with ``kswgdb --qemu PATH`` (`choose`), the
``KSWGDB_QEMU`` environment variable, or ``qemu-system-x86_64`` from ``PATH``.
`detect` runs it once per path (cached for the process) with ``-version`` and
``-L help``: the version decides every per-version behaviour (`Quirks`), and the
firmware directories are where *this* QEMU looks for its ROMs, so "qboot" is the
qboot.rom of the QEMU that runs, not another installation's.

A binary the user named that is missing or is not a QEMU is bad input (exit 2,
before anything starts); the default one missing is the host's problem (exit 3).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kswgdb.errors import BadInput, InfraError
from kswgdb.qemu.version import QemuVersion, Quirks, parse_version

ENV_VAR = "KSWGDB_QEMU"
DEFAULT_BINARY = "qemu-system-x86_64"
#: A QEMU answers -version in milliseconds; a wrapper script a little more.
DETECT_TIMEOUT = 20.0

_chosen: str | None = None


@dataclass(frozen=True)
class QemuBinary:
    """One QEMU executable: how to run it, its version and where it finds firmware."""

    path: str                       # argv[0] as QEMU is launched
    version: QemuVersion
    banner: str                     # the first line of -version, Debian revision included
    firmware_dirs: tuple[Path, ...]  # -L help, in QEMU's search order

    @property
    def quirks(self) -> Quirks:
        return Quirks.of(self.version)

    def firmware(self, name: str) -> Path | None:
        """The file ``name`` in the first of this QEMU's firmware directories that has it."""
        for directory in self.firmware_dirs:
            if (directory / name).is_file():
                return directory / name
        return None


def choose(path: str) -> QemuBinary:
    """Use ``path`` for every machine of this process (``--qemu``); checked at once."""
    global _chosen
    found = detect(path, named_by="--qemu")
    _chosen = path
    return found


@contextlib.contextmanager
def using(path: str) -> Iterator[QemuBinary]:
    """`choose` ``path`` for the block only (tests and benchmarks that compare QEMUs)."""
    global _chosen
    before = _chosen
    found = choose(path)
    try:
        yield found
    finally:
        _chosen = before


def check_choice(path: str | None) -> None:
    """Before a command starts: take ``--qemu`` (if given) and check a named QEMU.

    The default QEMU is left to the first launch, which says if it is missing.
    """
    if path:
        choose(path)
    elif selected_path()[1]:
        selected()


def selected_path() -> tuple[str, str]:
    """The QEMU to run and who named it: ``--qemu``, ``KSWGDB_QEMU`` or the default."""
    if _chosen is not None:
        return _chosen, "--qemu"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env, ENV_VAR
    return DEFAULT_BINARY, ""


def selected() -> QemuBinary:
    """The detected QEMU this process runs (see `selected_path`)."""
    path, named_by = selected_path()
    return detect(path, named_by=named_by)


@functools.cache
def detect(path: str, named_by: str = "") -> QemuBinary:
    """Run ``path -version`` and ``path -L help`` once; raise if it is not a usable QEMU."""
    where = f" ({named_by})" if named_by else ""
    error = BadInput if named_by else InfraError
    exe = shutil.which(path)
    if exe is None:
        raise error(f"QEMU not found: {path}{where}"
                    + ("" if named_by else f"; install qemu-system-x86 or set {ENV_VAR}"))
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True,
                             timeout=DETECT_TIMEOUT, check=False)
        dirs = subprocess.run([path, "-L", "help"], capture_output=True, text=True,
                              timeout=DETECT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"cannot run QEMU {path}{where}: {exc}") from exc
    version = parse_version(out.stdout)
    if out.returncode != 0 or version is None:
        said = (out.stdout + out.stderr).strip().splitlines()
        raise error(f"not a QEMU: {path}{where} (-version said: "
                    f"{said[0] if said else f'nothing, status {out.returncode}'})")
    banner = out.stdout.strip().splitlines()[0]
    firmware = tuple(Path(line.strip()) for line in dirs.stdout.splitlines() if line.strip())
    return QemuBinary(path, version, banner, firmware)
