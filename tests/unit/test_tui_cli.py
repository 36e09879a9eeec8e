"""`kswgdb tui` refuses bad input with one line and status 2, before any screen or QEMU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tui(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kswgdb", "tui", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(("args", "needle"), [
    (["-w", "fn=s3_victim fo=0x23 zz=1"], "unknown key 'zz'"),
    (["-w", "fn=no_such_function fo=0x10"], "no_such_function"),
    (["--scenario", "99"], "--scenario 99"),
    (["--slots", "0"], "--slots"),
    (["--poll", "pa=0x1000 len=3 to=0x1"], "len=3"),
    (["--poll", "pa=0x1000 len=8 to=0x1 zz=1"], "zz"),
    (["--timeout", "-1"], "--timeout"),
    (["--log", "/nonexistent/dir/ev.jsonl"], "no such directory"),
    (["--accel", "xen"], "invalid choice"),
    (["no-such-image"], "no-such-image"),
    (["--scenario", "3"], "needs a terminal"),          # stdin is not a tty here
])
def test_bad_input_is_one_line_status_2_and_leaves_nothing(tmp_path, args, needle):
    proc = tui(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kswgdb: error: ") and needle in lines[0]
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []               # not even an empty event log
