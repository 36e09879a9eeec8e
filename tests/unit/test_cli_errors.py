"""Bad input: one line on stderr naming the problem, exit status 2, nothing started.

These run the real ``kswgdb`` command in a subprocess, so argument parsing,
error formatting and the exit code are tested exactly as a user meets them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["run", "--watch", "fn=s3_victim fo=0x23 bogus=1"], "unknown key 'bogus'"),
    (["run", "--watch", "fn=s3_victim fo=zz"], "fo"),
    (["run", "--watch", "fn=s3_victim fo=0x23 wl=3"], "wl"),
    (["run", "--watch", "fn=no_such_function fo=0x10"], "no_such_function"),
    (["run", "--watch", "fn=s3_victim fo=0x100000"], "out of range"),
    (["run", "--watch", "fn=s3_victim fo=0x2000"], "past the end of s3_victim"),
    (["run", "--watch", "fn=s3_victim fo=0x24"], "not an instruction boundary"),
    (["run", "--watch", "fn=s3_victim fo=0x1"], "arms before s3_victim stores its canary"),
    (["run", "/nonexistent/image.toml", "--watch", "fn=s3_victim fo=0x23"], "image not found"),
    (["run"], "no --watch given"),
    (["run", "--accel", "quantum", "--watch", "fn=x fo=1"], "invalid choice"),
    (["disasm", "no_such_function"], "no_such_function"),
    (["run", "--watch", "fn=s3_victim fo=0x23", "--module", "/nonexistent.ko"],
     "--module: image kswtest is not a Linux image"),
    (["run", "--watch", "fn=s3_victim fo=0x23", "--qemu-arg=-gdb", "--qemu-arg=tcp::1"],
     "--qemu-arg -gdb: refused, kswgdb wires the gdbstub itself"),
    (["run", "--watch", "fn=s3_victim fo=0x23", "--drive", "/nonexistent.img,overlay"],
     "--drive /nonexistent.img: no such file"),
    (["boot", "--drive", "/nonexistent.img"], "--drive /nonexistent.img: no such file"),
]


@pytest.mark.parametrize(("argv", "fragment"), CASES)
def test_bad_input_is_one_line_exit_2(argv, fragment):
    proc = subprocess.run([sys.executable, "-m", "kswgdb", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kswgdb: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr
