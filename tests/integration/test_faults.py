"""Faults while watches are armed: each ends with one line, status 3, nothing left, log whole.

Every test runs ``kswgdb run`` as a user would (a separate process, ``--json
--log``), makes one thing go wrong mid-run, then checks the same four promises:
the exit status (3, or the signal's conventional one), a one-line reason as the
last line on stderr, no QEMU and no run directory left behind, and an event log
in which every line parses, hits are numbered 1..n in order, and every hit the
tool had shown is there.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from kswgdb.gdbstub.client import RemoteClient
from kswgdb.qemu import machine as machine_mod
from kswgdb.watch.session import RunOptions, WatchSession
from tests.integration.helpers.cli_run import CliRun, _comm, children
from tests.integration.helpers.patched import HANG, TRIPLE_FAULT, patched_image, poweroff

WATCH = "fn=s3_victim fo=0x23"
LONG_RUN = ["--scenario", "4", "--cmdline", "runs=60", "--watch", WATCH, "--accel", "tcg"]


def test_qemu_killed_while_watches_are_armed(tmp_path: Path) -> None:
    run = CliRun(LONG_RUN, tmp_path)
    qemu = run.wait_qemu()
    run.wait_hits(2)
    os.kill(qemu, signal.SIGKILL)
    assert run.finish() == 3, run.stderr()
    line = run.last_error_line()
    assert line.startswith("kswgdb: error: QEMU was killed while watching"), line
    assert "hit(s) in the event log" in line
    run.assert_nothing_left()
    hits = run.assert_log_complete()
    assert len(hits) >= 2
    assert run.events()[-1]["fault"] is True


@pytest.mark.parametrize("code,words", [
    (TRIPLE_FAULT, "the guest triple-faulted"),
    (poweroff(), "the guest powered off"),
], ids=["triple-fault", "power-off"])
def test_guest_ends_abnormally_after_a_hit(tmp_path: Path, code: bytes, words: str) -> None:
    image = patched_image(tmp_path, code)
    run = CliRun([str(image), "--scenario", "3", "--watch", WATCH, "--accel", "tcg"], tmp_path)
    run.wait_qemu()
    assert run.finish() == 3, run.stderr()
    assert run.last_error_line().startswith(f"kswgdb: error: {words} while watching"), \
        run.stderr()
    run.assert_nothing_left()
    assert len(run.assert_log_complete()) == 1


def test_guest_hang_is_detected(tmp_path: Path) -> None:
    image = patched_image(tmp_path, HANG)
    run = CliRun([str(image), "--scenario", "3", "--watch", WATCH, "--accel", "tcg",
                  "--hang-timeout", "2", "--timeout", "300"], tmp_path)
    run.wait_qemu()
    assert run.finish(120) == 3, run.stderr()
    assert run.last_error_line().startswith(
        "kswgdb: error: the guest hung: no console output, no stop and no clock tick for 2s"), \
        run.stderr()
    run.assert_nothing_left()
    assert len(run.assert_log_complete()) == 1


@pytest.mark.parametrize("sig,status,words", [
    (signal.SIGINT, 130, "kswgdb: interrupted"),
    (signal.SIGTERM, 128 + signal.SIGTERM, "kswgdb: terminated by SIGTERM"),
    (signal.SIGKILL, -signal.SIGKILL, None),
], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_tool_signalled_while_watches_are_armed(tmp_path: Path, sig: signal.Signals,
                                                status: int, words: str | None) -> None:
    run = CliRun(LONG_RUN, tmp_path)
    run.wait_qemu()
    run.wait_hits(2)
    run.proc.send_signal(sig)
    assert run.finish() == status, run.stderr()
    if words is not None:
        assert run.last_error_line() == words, run.stderr()
    run.assert_nothing_left(sweep_expected=sig == signal.SIGKILL)
    hits = run.assert_log_complete(expect_end=sig != signal.SIGKILL)
    assert len(hits) >= 2
    if sig != signal.SIGKILL:
        end = run.events()[-1]
        assert end["fault"] is True and end["reason"] == {
            signal.SIGINT: "interrupted (SIGINT)",
            signal.SIGTERM: "terminated (exit status 143)"}[sig]


class _Capture:
    """Remember the live gdbstub client and QMP socket of an in-process session."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.client: RemoteClient | None = None
        self.qmp_sock: socket.socket | None = None
        real_connect, real_qmp = RemoteClient.connect, machine_mod.Qmp

        def connect(*args, **kw):
            self.client = real_connect(*args, **kw)
            return self.client

        def qmp(sock, **kw):
            self.qmp_sock = sock
            return real_qmp(sock, **kw)

        monkeypatch.setattr(RemoteClient, "connect", staticmethod(connect))
        monkeypatch.setattr(machine_mod, "Qmp", qmp)


@pytest.mark.parametrize("link", ["gdbstub", "qmp"])
def test_socket_closing_under_the_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          link: str) -> None:
    cap = _Capture(monkeypatch)
    seen: list[int] = []

    def on_hit(hit) -> None:
        seen.append(hit.seq)
        if hit.seq == 1:
            assert cap.client is not None and cap.qmp_sock is not None
            sock = cap.client.transport.sock if link == "gdbstub" else cap.qmp_sock
            sock.shutdown(socket.SHUT_RDWR)

    log = tmp_path / "events.jsonl"
    session = WatchSession(RunOptions(scenario=4, watches=[WATCH], accel="tcg", timeout=120,
                                      cmdline="runs=30", log_path=log), on_hit=on_hit)
    report = session.run()
    expected = {"gdbstub": "the gdbstub connection closed while QEMU kept running",
                "qmp": "the QMP connection closed while QEMU kept running"}[link]
    assert report.fault is not None and report.fault.startswith(expected), report.fault
    assert report.guest_exit is None or report.guest_exit.kind != "debug-exit"
    run = CliRun.__new__(CliRun)
    run.log, run.out = log, log        # the log is also "what was shown"
    hits = run.assert_log_complete()
    assert [h["seq"] for h in hits] == seen
    assert not [p for p in children(os.getpid()) if "qemu" in _comm(p)], "QEMU left running"
