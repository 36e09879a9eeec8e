"""However the tool dies, its QEMU dies too (and, when it can clean up, its run dir goes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kswgdb.qemu.rundir import sweep_stale

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig,status", [
    (signal.SIGINT, None),           # KeyboardInterrupt -> traceback, exit 1
    (signal.SIGTERM, 128 + signal.SIGTERM),
    (signal.SIGKILL, -signal.SIGKILL),  # no Python runs: only PR_SET_PDEATHSIG can help
], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_qemu_dies_with_the_tool(sig: signal.Signals, status: int | None) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.helpers.hold_machine"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    qemu_pid = None
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("READY "), line + holder.stderr.read() if holder.stderr else ""
        _, pid_text, run_dir, tmp_dir = line.split()
        qemu_pid = int(pid_text)
        assert _alive(qemu_pid)
        holder.send_signal(sig)
        rc = holder.wait(10)
        if status is not None:
            assert rc == status
        else:
            assert rc != 0
        assert _wait_gone(qemu_pid, 5), f"QEMU {qemu_pid} survived {sig.name}"
        if sig != signal.SIGKILL:
            assert not Path(run_dir).exists()     # finally blocks ran: run dir removed
        else:
            assert Path(run_dir).exists()         # nothing could clean up...
            assert Path(run_dir) in sweep_stale()  # ...until the next launch sweeps it
            shutil.rmtree(tmp_dir, ignore_errors=True)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if qemu_pid is not None and _alive(qemu_pid):
            os.kill(qemu_pid, signal.SIGKILL)
