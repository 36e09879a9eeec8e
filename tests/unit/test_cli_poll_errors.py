"""--poll bad input through the real command: one line on stderr, exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("spec, fragment", [
    ("pa=0x1000 len=8", "exactly one of to=, from= and any=1"),
    ("pa=0x1000 to=0x33 interval=fast", "not a time"),
    ("pa=0x1000 to=0x33 on-hit=explode", "on-hit='explode'"),
    ("region=0x2000-0x1000", "empty"),
])
def test_bad_poll_is_one_line_exit_2(spec, fragment):
    proc = subprocess.run([sys.executable, "-m", "kswgdb", "run", "--scenario", "9",
                           "--poll", spec], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kswgdb: error: --poll ")
    assert fragment in lines[0]


def test_run_without_watch_or_poll_is_bad_input():
    proc = subprocess.run([sys.executable, "-m", "kswgdb", "run", "--scenario", "9"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no --watch given (and no --poll)" in proc.stderr
