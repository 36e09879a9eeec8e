"""The reaper: children die with us (pdeathsig), on kill_all, and on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kswgdb.qemu import reaper

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie still answers kill(0); it is dead for our purpose
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def test_spawn_registers_and_kill_all_kills() -> None:
    proc = reaper.spawn(["sleep", "60"])
    assert proc in reaper.live()
    assert os.getpgid(proc.pid) == proc.pid          # own process group
    reaper.kill_all()
    assert proc.poll() is not None
    assert proc not in reaper.live()


def test_unregister() -> None:
    proc = reaper.spawn(["sleep", "60"])
    reaper.unregister(proc)
    assert proc not in reaper.live()
    proc.kill()
    proc.wait()


def _run_parent(body: str) -> tuple[int, int]:
    """Run a parent that spawns `sleep` through the reaper; return the sleep's pid."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from kswgdb.qemu import reaper
        child = reaper.spawn(["sleep", "60"])
        print(child.pid, flush=True)
        {body}
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=20, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    return int(out.stdout.split()[0]), out.returncode


def test_pdeathsig_kills_child_when_parent_is_sigkilled() -> None:
    pid, rc = _run_parent("os.kill(os.getpid(), signal.SIGKILL)")
    assert rc == -signal.SIGKILL
    assert _gone(pid)


def test_child_dies_when_parent_exits_without_cleanup() -> None:
    pid, rc = _run_parent("os._exit(0)")     # no atexit, no finally
    assert rc == 0
    assert _gone(pid)


def test_atexit_kills_child() -> None:
    pid, rc = _run_parent("sys.exit(0)")
    assert rc == 0
    assert _gone(pid, 1.0)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 128 + 15), (signal.SIGHUP, 128 + 1)])
def test_signal_exits_with_conventional_status(sig: int, status: int) -> None:
    body = f"""
try:
    os.kill(os.getpid(), {int(sig)})
    time.sleep(5)
finally:
    print("finally ran", flush=True)
"""
    code = textwrap.dedent("""
        import os, signal, sys, time
        from kswgdb.qemu import reaper
        child = reaper.spawn(["sleep", "60"])
        print(child.pid, flush=True)
    """) + body
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=20, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert out.returncode == status
    assert "finally ran" in out.stdout
    assert _gone(int(out.stdout.split()[0]))


def test_sigint_chains_to_keyboard_interrupt() -> None:
    code = textwrap.dedent("""
        import os, signal, time
        from kswgdb.qemu import reaper
        child = reaper.spawn(["sleep", "60"])
        print(child.pid, flush=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", child.poll(), flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=20, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    pid, word, status = out.stdout.split()
    assert word == "KeyboardInterrupt"
    assert status == str(-signal.SIGKILL)     # child already killed when the handler chained
    assert _gone(int(pid))


def test_ignored_signal_stays_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(reaper._previous, signal.SIGHUP, signal.SIG_IGN)
    monkeypatch.setattr(reaper, "_signalled", None)    # the handler's mark stays in this test
    proc = reaper.spawn(["sleep", "60"])
    reaper._on_signal(signal.SIGHUP, None)      # returns, no exception
    assert proc.poll() is not None
