"""Security audit, as tests: private sockets, loopback only, no shell, private files.

A gdbstub or QMP socket lets whoever reaches it read and write guest memory, and
an event log or vmcore may hold kernel secrets; so: Unix sockets in a 0700
directory, TCP only on 127.0.0.1 and only when asked, files 0600, and no shell
ever interprets a string kswgdb built.
"""

from __future__ import annotations

import ast
import os
import socket
import stat
from pathlib import Path

import pytest

from kswgdb.errors import BadInput
from kswgdb.gdbstub.server import Listener, parse_loopback_address
from kswgdb.image import load as load_image
from kswgdb.qemu.argv import QemuOptions, build_argv
from kswgdb.qemu.rundir import RunDir
from kswgdb.watch.hits import EventLog

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "kswgdb").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])


def _shell_calls(path: Path) -> list[str]:
    """Calls with shell=True, and os.system / os.popen / commands-style helpers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{path}:{node.lineno} shell=")
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                (func.value.id, func.attr) in {("os", "system"), ("os", "popen"),
                                               ("subprocess", "getoutput"),
                                               ("subprocess", "getstatusoutput")}:
            found.append(f"{path}:{node.lineno} {func.value.id}.{func.attr}")
    return found


def test_no_shell_anywhere() -> None:
    assert len(SOURCES) > 50
    offenders = [hit for path in SOURCES for hit in _shell_calls(path)]
    assert not offenders, offenders
    text = "\n".join(p.read_text() for p in SOURCES)
    assert "shell=True" not in text


def test_the_shell_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess\nsubprocess.run('ls', shell=True)\nos.system('x')\n")
    assert len(_shell_calls(bad)) == 2


def test_qemu_sockets_are_unix_sockets_in_the_private_dir() -> None:
    rd = RunDir()
    try:
        assert stat.S_IMODE(os.stat(rd.root).st_mode) == 0o700
        assert os.stat(rd.root).st_uid == os.getuid()
        argv = build_argv(load_image(None), rd.paths, QemuOptions(accel="tcg"))
        joined = " ".join(argv)
        assert "tcp:" not in joined and "host=" not in joined and "port=" not in joined
        socket_args = [a for a in argv if a.startswith("socket,")]
        assert len(socket_args) == 3
        for arg in socket_args:
            path = next(p.split("=", 1)[1] for p in arg.split(",") if p.startswith("path="))
            assert Path(path).parent == rd.root
    finally:
        rd.remove()
    assert not rd.root.exists()


def test_relay_listener_binds_loopback_only() -> None:
    listener = Listener()
    try:
        assert listener.sock.family == socket.AF_INET
        assert listener.sock.getsockname()[0] == "127.0.0.1"
    finally:
        listener.close()


@pytest.mark.parametrize("text", ["0.0.0.0:1", "::1:1", "10.0.0.1:1", ":1", "127.0.0.1",
                                  "127.0.0.1:-1", "127.0.0.1:65536", "localhost:x"])
def test_gdb_listen_refuses_anything_but_loopback(text: str) -> None:
    with pytest.raises(BadInput):
        parse_loopback_address(text)


def test_gdb_listen_accepts_loopback() -> None:
    assert parse_loopback_address("127.0.0.1:1234") == ("127.0.0.1", 1234)
    assert parse_loopback_address("localhost:0") == ("127.0.0.1", 0)


@pytest.mark.parametrize("existing", [False, True])
def test_event_log_is_0600(tmp_path: Path, existing: bool) -> None:
    path = tmp_path / "events.jsonl"
    if existing:
        path.write_text("")
        path.chmod(0o644)
    old = os.umask(0)
    try:
        log = EventLog(path)
        log.write("guest-stall", line="rcu: INFO: rcu_sched self-detected stall on CPU")
        log.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
