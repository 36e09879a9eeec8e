"""Every exit status kswgdb ends with, decided here and only here.

The table (also in docs/contracts.md)::

    0    OK            the run watched and nothing was caught
    1    HIT           at least one watch or poll hit (so CI can gate on it)
    2    BAD_INPUT     the user's input is wrong; found before anything started
    3    INFRA         QEMU, gdb or the stub failed, the run ended by a fault
                       (`kswgdb.run.faults`), or an unexpected exception
                       (one line, traceback in a debug log)
    4    UNARMED       no hit, but a watch was never armed (not with --allow-unarmed;
                       `kswgdb.watch.unarmed`): a run that watched nothing is no success
    5    DEMO_MISSED   `kswgdb demo` only: the demo ran to its end and caught nothing
    130  INTERRUPTED   Ctrl-C (SIGINT)
    128+N              ended by signal N (SIGTERM: 143, SIGHUP: 129)

Commands return an `ExitStatus`; errors carry theirs (`KswError.exit_code`);
`status_of_run` turns what a run caught and how it ended into one. The CLI's
`main` is the only place that hands a number to the shell.
"""

from __future__ import annotations

import enum
import os
import signal
import tempfile
import time
import traceback
from pathlib import Path


class ExitStatus(enum.IntEnum):
    OK = 0
    HIT = 1
    BAD_INPUT = 2
    INFRA = 3
    UNARMED = 4
    DEMO_MISSED = 5
    INTERRUPTED = 128 + signal.SIGINT


def signalled(signum: int) -> int:
    """The conventional status of a run ended by signal ``signum``."""
    return 128 + signum


def status_of_run(hits: int, fault: str | None = None, unarmed: bool = False) -> ExitStatus:
    """A fault is INFRA whatever was caught; else HIT, else UNARMED if a watch never armed
    (and that counts), else OK."""
    if fault:
        return ExitStatus.INFRA
    if hits:
        return ExitStatus.HIT
    return ExitStatus.UNARMED if unarmed else ExitStatus.OK


def debug_log_dir() -> Path:
    """Where debug logs go: $KSWGDB_DEBUG_DIR, else the system's temporary directory."""
    return Path(os.environ.get("KSWGDB_DEBUG_DIR") or tempfile.gettempdir())


def write_debug_log(exc: BaseException, argv: list[str] | None = None) -> Path | None:
    """Keep ``exc``'s traceback in a new file (mode 0600); its path, or None if unwritable."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, name = tempfile.mkstemp(prefix=f"kswgdb-debug-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".log", dir=debug_log_dir())
    except OSError:
        return None
    path = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        if argv is not None:
            fh.write(f"argv: {argv!r}\n")
        fh.write(text)
    return path


def unexpected(exc: BaseException, argv: list[str] | None = None) -> str:
    """The one line a user sees for an exception no layer expected (status INFRA)."""
    what = " ".join(str(exc).split())
    what = f"{type(exc).__name__}: {what}" if what else type(exc).__name__
    where = _failed_in(exc)
    path = write_debug_log(exc, argv)
    keep = f"traceback in {path}" if path is not None else "no debug log could be written"
    return f"unexpected failure{where}: {what} ({keep})"


def _failed_in(exc: BaseException) -> str:
    """`` in module.function`` of the innermost kswgdb frame, so the line names what failed."""
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/kswgdb/" in frame.filename:
            module = Path(frame.filename).stem
            found = f" in {module}.{frame.name}"
    return found
