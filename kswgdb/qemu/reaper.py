"""No QEMU (or gdb) outlives kswgdb, however kswgdb ends.

A stray QEMU is a real cost: it keeps a vCPU spinning at 100% and a gdbstub
socket open. Four layers make sure children die with us:

1. ``PR_SET_PDEATHSIG(SIGKILL)``, set in the child between fork and exec: the
   kernel kills the child when its parent dies, even by SIGKILL or a crash, when no
   Python code runs any more. Caveat: the "parent" is the *thread* that forked,
   not the process — if a worker thread starts QEMU and then exits, QEMU is killed
   at once. So start children from the main thread (`spawn` warns otherwise).
   The child re-checks ``getppid()`` after the prctl to close the race where the
   parent died between fork and prctl.
2. A registry of live children, killed by `kill_all`.
3. ``atexit`` runs `kill_all` on any normal interpreter exit.
4. SIGTERM, SIGINT and SIGHUP handlers run `kill_all` first, then behave as before:
   a previous Python handler is chained (SIGINT's default raises
   KeyboardInterrupt), an ignored signal stays ignored, and a default-action signal
   becomes ``SystemExit(128 + signum)`` — the conventional status — which, unlike
   re-raising the signal, still lets ``finally`` blocks remove run directories.

Children are also put in their own process group, so a Ctrl-C typed at the
terminal reaches only kswgdb, which then stops QEMU in order (QEMU would otherwise
exit on its own SIGINT and race our shutdown).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# Resolve prctl in the parent: the child, between fork and exec, should do as
# little as possible (no dlopen, no symbol lookup).
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

_lock = threading.RLock()  # re-entrant: a signal handler may run while we hold it
_children: dict[int, subprocess.Popen[Any]] = {}
_previous: dict[int, Any] = {}
_atexit_installed = False
#: The last terminating signal handled, kept because the exception raised for it can
#: be lost on its way up (replaced by a cleanup error, or raised inside a finalizer).
_signalled: int | None = None
_signals_installed = False


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    """The function run in the child between fork and exec."""

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # parent already gone: prctl came too late
            os._exit(127)

    return preexec


def spawn(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Start a child that cannot outlive us, and register it.

    Keyword arguments go to `subprocess.Popen` (stdin defaults to /dev/null).
    Call from the main thread (see the module docstring).
    """
    install()
    if threading.current_thread() is not threading.main_thread():
        warnings.warn(
            "kswgdb child started from a non-main thread: PR_SET_PDEATHSIG will kill "
            "it when that thread exits",
            RuntimeWarning,
            stacklevel=2,
        )
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    popen_kwargs.setdefault("process_group", 0)
    with _lock:
        proc = subprocess.Popen(
            list(argv), preexec_fn=_pdeathsig_preexec(os.getpid()), **popen_kwargs
        )
        _children[proc.pid] = proc
    return proc


def register(proc: subprocess.Popen[Any]) -> None:
    """Put a child started elsewhere under the same guard (atexit and signals)."""
    install()
    with _lock:
        _children[proc.pid] = proc


def unregister(proc: subprocess.Popen[Any]) -> None:
    """Forget a child that has been waited for."""
    with _lock:
        _children.pop(proc.pid, None)


def live() -> list[subprocess.Popen[Any]]:
    """Registered children that have not been reaped yet."""
    with _lock:
        return [p for p in _children.values() if p.poll() is None]


def kill_all(timeout: float = 2.0) -> None:
    """SIGKILL every registered child and reap it; bounded, never raises."""
    with _lock:
        procs = list(_children.values())
        _children.clear()
    for proc in procs:
        with contextlib.suppress(OSError):
            if proc.poll() is None:
                proc.kill()
    for proc in procs:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.wait(timeout)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Kill children, then do what the process would have done without us."""
    global _signalled
    _signalled = signum
    kill_all()
    prev = _previous.get(signum, signal.SIG_DFL)
    if prev is signal.SIG_IGN:
        return
    if callable(prev) and prev is not signal.SIG_DFL:
        prev(signum, frame)
        return
    raise SystemExit(128 + signum)


def install() -> None:
    """Install the atexit hook and (from the main thread) the signal handlers; idempotent.

    Python only lets the main thread set signal handlers; a first call from another
    thread installs the atexit hook and leaves the handlers to a later main-thread call.
    """
    global _atexit_installed, _signals_installed
    with _lock:
        if not _atexit_installed:
            atexit.register(kill_all)
            _atexit_installed = True
        if not _signals_installed and threading.current_thread() is threading.main_thread():
            for sig in HANDLED_SIGNALS:
                _previous[sig] = signal.getsignal(sig)
                signal.signal(sig, _on_signal)
            _signals_installed = True


def signalled() -> int | None:
    """The terminating signal this process received and handled, if any."""
    return _signalled


def consume(signum: int) -> None:
    """Forget that ``signum`` came: its caller took it as the normal end of what it was
    doing (Ctrl-C ends a ``--gdb-listen``), not as an interruption of the run."""
    global _signalled
    with _lock:
        if _signalled == signum:
            _signalled = None
