"""Exit statuses come from one table; an unexpected exception is one line and status 3."""

from __future__ import annotations

import pytest

from kswgdb import cli, commands
from kswgdb.errors import BadInput, InfraError, KswError
from kswgdb.exitcodes import ExitStatus, signalled, status_of_run


def test_the_table():
    assert [int(s) for s in ExitStatus] == [0, 1, 2, 3, 4, 5, 130]
    assert signalled(15) == 143
    assert BadInput.exit_code == ExitStatus.BAD_INPUT
    assert InfraError.exit_code == KswError.exit_code == ExitStatus.INFRA


def test_a_fault_outranks_the_hits():
    assert status_of_run(0) == ExitStatus.OK
    assert status_of_run(2) == ExitStatus.HIT
    assert status_of_run(2, fault="QEMU was killed") == ExitStatus.INFRA
    assert status_of_run(0, fault="hang") == ExitStatus.INFRA
    assert status_of_run(0, unarmed=True) == ExitStatus.UNARMED
    assert status_of_run(1, unarmed=True) == ExitStatus.HIT


@pytest.mark.parametrize("exc", [RuntimeError("boom\nsecond line"), KeyError("k"),
                                 AssertionError()])
def test_an_unexpected_exception_is_one_line_status_3_and_a_debug_log(
        exc, monkeypatch, tmp_path, capsys):
    def dispatch(_args):
        raise exc

    monkeypatch.setenv("KSWGDB_DEBUG_DIR", str(tmp_path))
    monkeypatch.setattr(commands, "dispatch", dispatch)
    status = cli.main(["accel"])
    err = capsys.readouterr().err
    assert status == 3 and status != ExitStatus.HIT
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("kswgdb: error: unexpected failure in cli.main: "
                               f"{type(exc).__name__}")
    logs = list(tmp_path.glob("kswgdb-debug-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    text = logs[0].read_text()
    assert "Traceback" in text and type(exc).__name__ in text and "['accel']" in text
    assert logs[0].stat().st_mode & 0o777 == 0o600


def test_an_unwritable_debug_directory_still_gives_one_line(monkeypatch, tmp_path, capsys):
    def dispatch(_args):
        raise RuntimeError("boom")

    monkeypatch.setenv("KSWGDB_DEBUG_DIR", str(tmp_path / "missing"))
    monkeypatch.setattr(commands, "dispatch", dispatch)
    assert cli.main(["accel"]) == ExitStatus.INFRA
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "no debug log could be written" in err


def test_the_line_names_the_innermost_kswgdb_function(monkeypatch, tmp_path, capsys):
    import kswgdb.qemu.accel

    monkeypatch.setenv("KSWGDB_DEBUG_DIR", str(tmp_path))
    monkeypatch.setattr(kswgdb.qemu.accel, "decide", {}.__getitem__)   # KeyError('auto')
    assert cli.main(["accel"]) == ExitStatus.INFRA
    err = capsys.readouterr().err
    assert err.startswith("kswgdb: error: unexpected failure in commands.cmd_accel: "
                          "KeyError: 'auto' (traceback in ")
