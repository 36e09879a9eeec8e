"""Choosing how hit backtraces are unwound: gdb when installed, else frame pointers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kswgdb.errors import BadInput
from kswgdb.run.prepare import resolve_backtrace_mode

MISSING = "/nonexistent/gdb"


def test_auto_is_gdb_when_installed_else_frame_pointers(tmp_path):
    fake = tmp_path / "gdb"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert resolve_backtrace_mode("auto", gdb=str(fake)) == "gdb"
    assert resolve_backtrace_mode("auto", gdb=MISSING) == "fp"
    assert resolve_backtrace_mode("fp", gdb=MISSING) == "fp"


def test_gdb_requested_but_missing_is_bad_input():
    with pytest.raises(BadInput, match="gdb is not installed"):
        resolve_backtrace_mode("gdb", gdb=MISSING)


def test_cli_backtrace_gdb_without_gdb_is_one_line_exit_2(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))         # no gdb anywhere on PATH
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", "--backtrace", "gdb",
         "--watch", "fn=s3_victim fo=0x23"],
        capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "gdb is not installed" in lines[0], proc.stderr
