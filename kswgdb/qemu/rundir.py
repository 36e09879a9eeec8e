"""The private run directory of one machine: its sockets, logs and RAM file.

Sockets of a QEMU guest are a debugging backdoor into a kernel: anyone who can
connect to the gdbstub can write guest memory. So every socket lives in a fresh
directory of mode 0700 owned by us, never in a shared, guessable place.

Unix socket paths are limited to 107 bytes (``sun_path``); we check that up front
so a long ``--run-dir`` gives a clear error instead of a cryptic QEMU one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kswgdb.qemu.errors import MachineStartError

#: sizeof(sockaddr_un.sun_path) - 1 on Linux.
MAX_SOCKET_PATH = 107

#: Where a shared guest-RAM file goes: tmpfs, so the "file" is really RAM.
SHM_DIR = Path("/dev/shm")
RUN_PREFIX = "kswgdb-"
SHM_PREFIX = "kswgdb-ram-"
#: File in each directory we create, naming the process that owns it.
OWNER_FILE = "owner.pid"


@dataclass(frozen=True)
class RunPaths:
    """Where one machine keeps its files; all inside one 0700 directory."""

    root: Path

    @property
    def console_sock(self) -> Path:
        """Serial console socket: we listen, QEMU connects (so no byte is lost)."""
        return self.root / "console.sock"

    @property
    def qmp_sock(self) -> Path:
        """QMP socket: we listen, QEMU connects at startup."""
        return self.root / "qmp.sock"

    @property
    def gdb_sock(self) -> Path:
        """gdbstub socket: QEMU listens, the remote client connects when it wants."""
        return self.root / "gdb.sock"

    @property
    def console_log(self) -> Path:
        """Every byte the guest wrote to its serial port."""
        return self.root / "console.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stdout/stderr (error messages at launch, warnings)."""
        return self.root / "qemu.log"

    def sockets(self) -> list[Path]:
        """All socket paths, for the length check."""
        return [self.console_sock, self.qmp_sock, self.gdb_sock]


class RunDir:
    """Create (and later remove) a machine's private run directory.

    With ``parent=None`` a fresh ``kswgdb-*`` directory is made under the system temp
    directory and removed again by `remove`. With an explicit ``path`` the directory
    is the caller's: it is created 0700 if missing and kept by `remove` (only the
    sockets go) — the caller asked for it to look at the logs afterwards. ``keep``
    overrides either default.
    """

    def __init__(self, path: str | Path | None = None, *, keep: bool | None = None) -> None:
        if path is None:
            root = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))  # mkdtemp makes it 0700
            self._owned = True
        else:
            root = Path(path).absolute()
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._owned = False
        os.chmod(root, 0o700)
        if self._owned:
            _write_owner(root)
        self.keep = (not self._owned) if keep is None else keep
        self.paths = RunPaths(root)
        self._shm_dir: Path | None = None
        too_long = [p for p in self.paths.sockets() if len(os.fsencode(p)) > MAX_SOCKET_PATH]
        if too_long:
            self.remove()
            raise MachineStartError(
                f"run directory path too long for a Unix socket ({too_long[0]}, "
                f"max {MAX_SOCKET_PATH} bytes); choose a shorter --run-dir"
            )

    @property
    def root(self) -> Path:
        """The directory itself."""
        return self.paths.root

    def shared_ram_file(self) -> Path:
        """A path for a guest-RAM backing file on tmpfs, in its own 0700 directory.

        Not inside `root`: the run directory may be on a disk filesystem, and a
        disk-backed guest RAM file would make every guest store a page-cache write.
        """
        if self._shm_dir is None:
            base = SHM_DIR if SHM_DIR.is_dir() else None
            self._shm_dir = Path(tempfile.mkdtemp(prefix=SHM_PREFIX, dir=base))
            _write_owner(self._shm_dir)
        return self._shm_dir / "guest-ram"

    def remove(self) -> None:
        """Remove what we created; idempotent. Sockets go even when the dir is kept."""
        if self._shm_dir is not None:
            shutil.rmtree(self._shm_dir, ignore_errors=True)
            self._shm_dir = None
        if self.keep:
            for sock in self.paths.sockets():
                with contextlib.suppress(OSError):
                    sock.unlink(missing_ok=True)
            return
        shutil.rmtree(self.paths.root, ignore_errors=True)



def owned_tempdir(prefix: str = RUN_PREFIX) -> Path:
    """A fresh 0700 temp directory marked with our pid.

    For private directories other than a machine's (the gdb relay's socket): if
    kswgdb is killed before it can remove one, the next launch's `sweep_stale`
    removes it like a stale run directory.
    """
    if not prefix.startswith(RUN_PREFIX):
        raise ValueError(f"prefix {prefix!r} must start with {RUN_PREFIX!r} to be swept")
    root = Path(tempfile.mkdtemp(prefix=prefix))     # mkdtemp makes it 0700
    _write_owner(root)
    return root


def _write_owner(directory: Path) -> None:
    (directory / OWNER_FILE).write_text(f"{os.getpid()}\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(dirs: list[Path] | None = None) -> list[Path]:
    """Remove run and guest-RAM directories left by kswgdb processes that are gone.

    Only directories we could have made are touched: our prefix, our uid, and an
    owner file naming a process that no longer exists. Returns what was removed.
    """
    bases = dirs if dirs is not None else [Path(tempfile.gettempdir()), SHM_DIR]
    removed: list[Path] = []
    for base in bases:
        try:
            entries = list(base.glob(RUN_PREFIX + "*"))
        except OSError:
            continue
        for d in entries:
            try:
                if not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid():
                    continue
                pid = int((d / OWNER_FILE).read_text().strip())
            except (OSError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed
