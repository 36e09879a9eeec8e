"""The console reader over a socketpair: no QEMU needed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kswgdb.qemu.console import Console
from kswgdb.qemu.errors import MachineError, MachineTimeout


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[socket.socket, Console]]:
    ours, qemu = socket.socketpair()
    con = Console(ours, tmp_path / "console.log", argv=["qemu-x"])
    yield qemu, con
    qemu.close()
    con.close()


def test_lines_tail_and_log(pair: tuple[socket.socket, Console], tmp_path: Path) -> None:
    qemu, con = pair
    qemu.sendall(b"KSWTEST boot\r\nKSWTEST cpus=2\nparti")
    con.wait_for(r"cpus=(\d)", 2)
    assert con.lines() == ["KSWTEST boot", "KSWTEST cpus=2"]
    assert con.tail(1) == ["parti"]             # unterminated line shows in the tail
    qemu.sendall(b"al\n")
    con.wait_for("^partial$", 2)
    qemu.close()
    assert con.wait_closed(2)
    assert con.eof
    assert (tmp_path / "console.log").read_bytes() == (
        b"KSWTEST boot\r\nKSWTEST cpus=2\npartial\n")


def test_wait_for_returns_match_of_earlier_line(pair: tuple[socket.socket, Console]) -> None:
    qemu, con = pair
    qemu.sendall(b"KSWTEST verdict scenario=3 name=x result=ok\n")
    con.wait_for("result=ok", 2)
    m = con.wait_for(r"scenario=(\d+) name=(\S+)", 0.1)
    assert m.groups() == ("3", "x")


def test_since_skips_old_lines(pair: tuple[socket.socket, Console]) -> None:
    qemu, con = pair
    qemu.sendall(b"tick 1\n")
    con.wait_for("tick 1", 2)
    mark = con.mark()

    def later() -> None:
        time.sleep(0.05)
        qemu.sendall(b"tick 2\n")

    threading.Thread(target=later).start()
    assert con.wait_for(r"tick (\d)", 2, since=mark).group(1) == "2"


def test_timeout_carries_tail(pair: tuple[socket.socket, Console]) -> None:
    qemu, con = pair
    qemu.sendall(b"one\ntwo\n")
    con.wait_for("two", 2)
    with pytest.raises(MachineTimeout) as info:
        con.wait_for("never", 0.05)
    assert info.value.console_tail == ["one", "two"]
    assert info.value.argv == ["qemu-x"]


def test_eof_before_match(pair: tuple[socket.socket, Console]) -> None:
    qemu, con = pair
    qemu.sendall(b"last words")
    qemu.close()
    with pytest.raises(MachineError, match="console closed") as info:
        con.wait_for("never", 5)
    assert not isinstance(info.value, MachineTimeout)
    assert info.value.console_tail == ["last words"]   # partial line flushed at EOF


def test_on_line_callback_and_big_output(tmp_path: Path) -> None:
    ours, qemu = socket.socketpair()
    seen: list[str] = []
    con = Console(ours, tmp_path / "c.log", on_line=seen.append)
    blob = b"".join(b"line %d\n" % i for i in range(20000))
    threading.Thread(target=lambda: (qemu.sendall(blob), qemu.close())).start()
    assert con.wait_closed(10)
    assert len(seen) == 20000 and seen[-1] == "line 19999"
    assert (tmp_path / "c.log").stat().st_size == len(blob)
    con.close()


def test_close_is_prompt_while_peer_open(tmp_path: Path) -> None:
    ours, qemu = socket.socketpair()
    con = Console(ours, tmp_path / "c.log")
    t = time.monotonic()
    con.close()
    assert time.monotonic() - t < 1
    qemu.close()


def test_follow_replays_kept_lines_then_new_ones_once(pair: tuple[socket.socket, Console]) -> None:
    qemu, con = pair
    qemu.sendall(b"one\ntwo\n")
    con.wait_for("two", 2)
    seen: list[str] = []
    con.follow(seen.append)
    qemu.sendall(b"three\n")
    con.wait_for("three", 2)
    assert seen == ["one", "two", "three"]
