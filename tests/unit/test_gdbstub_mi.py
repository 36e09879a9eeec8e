"""The gdb/MI driver: replies matched by token, errors raised, gdb always killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kswgdb.gdbstub.errors import GdbError
from kswgdb.gdbstub.mi import GdbMI, gdb_command, mi_quote

assert shutil.which("gdb"), "gdb not installed: `make setup` installs it"
ROOT = Path(__file__).resolve().parents[2]


def test_gdb_command_is_tied_to_our_lifetime() -> None:
    argv = gdb_command()
    assert argv[-4:] == ["gdb", "--interpreter=mi3", "-nx", "-q"]
    if shutil.which("setpriv"):
        assert argv[1:4] == ["--pdeathsig", "KILL", "--"]


def test_results_are_matched_by_token_not_by_timing() -> None:
    with GdbMI() as gdb:
        first = gdb.send("-data-evaluate-expression 6*7")
        second = gdb.send("-data-evaluate-expression 1+1")
        assert gdb.wait(second)["payload"] == {"value": "2"}  # out of order on purpose
        assert gdb.wait(first)["payload"] == {"value": "42"}
        assert gdb.console("print 40+2") == "$1 = 42\n"
        assert gdb.command("-gdb-set confirm off")["message"] == "done"


def test_error_record_raises_with_the_command() -> None:
    with GdbMI() as gdb:
        with pytest.raises(GdbError) as info:
            gdb.command("-no-such-command")
        assert info.value.sent == "-no-such-command"
        assert "no-such-command" in (info.value.received or "")
        assert gdb.command("-gdb-version")["message"] == "done"  # still usable


def test_close_kills_gdb() -> None:
    gdb = GdbMI()
    pid = gdb.pid
    gdb.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(GdbError):
        gdb.send("-gdb-version")


def test_gdb_dies_when_its_parent_is_killed() -> None:
    code = textwrap.dedent("""
        import sys, time
        from kswgdb.gdbstub.mi import GdbMI
        gdb = GdbMI()
        print(gdb.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _dead(pid):
            return
        time.sleep(0.01)
    pytest.fail(f"gdb {pid} outlived its parent")


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it (killed all the same)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def test_mi_quote() -> None:
    assert mi_quote('a "b"\\c') == '"a \\"b\\"\\\\c"'
