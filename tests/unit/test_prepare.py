"""`prepare` is shared: `run` and `tui` refuse the same bad input with the same line.

Each bad input is fed to both commands in-process with QEMU's launch replaced
by a sentinel; both must end with the same one-line error, exit status 2, and
nothing started (no QEMU, no port left bound, no log file left behind).
"""

from __future__ import annotations

import socket

import pytest

from kswgdb import cli
from kswgdb.errors import BadInput
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import check_log_path, prepare
from kswgdb.watch.hits import EventLog

WATCH = "fn=s3_victim fo=0x23"


@pytest.fixture
def busy_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


BAD = {
    "unknown-key": (["--watch", WATCH + " bogus=1"], "unknown key 'bogus'"),
    "no-function": (["--watch", "fn=no_such_function fo=0x10"], "no_such_function"),
    "stack-reach": (["--watch", WATCH + " so=0x4000 wl=8"], "reaches outside the task's stack"),
    "bad-poll": (["--poll", "pa=0x1000 len=8"], "give exactly one of to="),
    "log-no-dir": (["--log", "/nonexistent/x.jsonl"], "no such directory /nonexistent"),
    "log-under-file": (["--log", "{tmp}/file/x.jsonl"], "file is not a directory"),
    "log-is-dir": (["--log", "{tmp}"], "is a directory"),
    "log-sysfs": (["--log", "/sys/x.jsonl"], "--log /sys/x.jsonl: "),
    "slots": (["--slots", "0"], "--slots: '0': must be from 1 to 1024"),
    "scenario": (["--scenario", "99"], "--scenario 99: image kswtest has no such scenario"),
    "hang-timeout": (["--hang-timeout", "-1"], "seconds out of range"),
    "poll-beyond-memory": (["--poll", "pa=0x7ffffffff000 to=1"], "is beyond guest memory"),
    "image": (["/nonexistent/image.toml"], "image not found"),
    "gdb-listen-busy": (["--gdb-listen", "127.0.0.1:{port}"], "--gdb-listen 127.0.0.1:"),
    "gdb-listen-wildcard": (["--gdb-listen", "0.0.0.0:1234"], "127.0.0.1"),
}


def _error_line(capsys, argv: list[str]) -> str:
    status = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("kswgdb: error: "), err
    return err[0]


@pytest.mark.parametrize("case", sorted(BAD))
def test_run_and_tui_refuse_the_same_bad_input_with_the_same_line(
        case, tmp_path, capsys, no_guest, busy_port):
    (tmp_path / "file").write_text("")
    extra, fragment = BAD[case]
    extra = [a.format(tmp=tmp_path, port=busy_port) for a in extra]
    if "--watch" not in extra:
        extra += ["--watch", WATCH]
    before = sorted(p.name for p in tmp_path.iterdir())
    lines = {cmd: _error_line(capsys, [cmd, *extra, "--accel", "tcg"]) for cmd in ("run", "tui")}
    assert lines["run"] == lines["tui"], lines
    assert fragment in lines["run"], lines["run"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # no log left behind


def test_both_commands_take_the_same_watch_and_poll_options():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    def options(name: str) -> set[str]:
        return {o for a in sub.choices[name]._actions for o in a.option_strings}

    only_run, only_tui = {"--json", "--console"}, {"--paused"}
    assert options("run") - only_run == options("tui") - only_tui


def test_the_gdb_listen_port_is_bound_by_prepare_and_released_by_close(tmp_path):
    plan = prepare(RunOptions(watches=[WATCH], accel="tcg", log_path=tmp_path / "e.jsonl",
                              gdb_listen=("127.0.0.1", 0)))
    assert plan.listener is not None and plan.options.gdb_listen is not None
    port = int(plan.listener.address.rsplit(":", 1)[1])
    with pytest.raises(BadInput, match="--gdb-listen"):
        prepare(RunOptions(watches=[WATCH], accel="tcg", gdb_listen=("127.0.0.1", port)))
    plan.close()
    again = prepare(RunOptions(watches=[WATCH], accel="tcg", gdb_listen=("127.0.0.1", port)))
    again.close()


def test_an_existing_log_is_kept_and_a_new_one_is_not_created(tmp_path):
    existing = tmp_path / "old.jsonl"
    log = EventLog(existing)
    log.write("guest-stall", line="watchdog: BUG: soft lockup")
    log.close()
    before = existing.read_text()
    check_log_path(existing)
    assert existing.read_text() == before
    check_log_path(tmp_path / "new.jsonl")
    assert not (tmp_path / "new.jsonl").exists()


def test_an_empty_tui_is_fine_but_an_empty_run_is_not(tmp_path):
    with pytest.raises(BadInput, match="nothing to watch"):
        prepare(RunOptions(accel="tcg"))
    plan = prepare(RunOptions(accel="tcg"), require_watch=False)
    assert plan.specs == [] and plan.listener is None
