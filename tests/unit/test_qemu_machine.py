"""Machine objects before launch: argument checks and safe no-op cleanup (no QEMU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kswgdb.image import Image
from kswgdb.qemu.errors import MachineError
from kswgdb.qemu.machine import Machine


def _image(tmp_path: Path) -> Image:
    k = tmp_path / "k.elf"
    k.write_bytes(b"")
    return Image(name="t", path=k, kernel=k, symbols=k)


def test_unknown_option_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="machin"):
        Machine(_image(tmp_path), machin="pc")


def test_known_options_accepted(tmp_path: Path) -> None:
    m = Machine(_image(tmp_path), machine="q35", bios=None, smp=1, memory="64M", cpu="max",
                gdb=False, extra_args=("-d", "int"), qemu_binary="qemu-system-x86_64")
    assert m.shared_ram is None


def test_shared_ram_true_means_file(tmp_path: Path) -> None:
    assert Machine(_image(tmp_path), shared_ram=True).shared_ram == "file"
    assert Machine(_image(tmp_path), shared_ram="memfd").shared_ram == "memfd"


def test_unlaunched_accessors_raise_and_close_is_safe(tmp_path: Path) -> None:
    m = Machine(_image(tmp_path))
    for attr in ("console", "qmp", "gdb_socket", "console_log"):
        with pytest.raises(MachineError, match="not launched"):
            getattr(m, attr)
    assert m.pid is None and not m.running and m.guest_exit is None
    m.close()
    m.close()
    with pytest.raises(MachineError):
        m.launch()                                  # closed machines do not relaunch


class _DisconnectingQmp:
    """QEMU closed QMP before answering ``cont`` (the guest already ended)."""

    def cont(self) -> None:
        from kswgdb.qemu.qmp import QmpCommandError

        raise QmpCommandError("QMP cont: Disconnected", command="cont", arguments=None)


def test_cont_racing_a_guest_that_ends_at_once_is_not_an_error() -> None:
    import subprocess

    import pytest as _pytest

    from kswgdb.qemu.errors import MachineError
    from kswgdb.qemu.machine import Machine

    m = Machine("kswtest")
    m._qmp = _DisconnectingQmp()  # type: ignore[assignment]
    m._proc = subprocess.Popen(["true"])
    m._proc.wait()
    m.resume()                                   # QEMU is gone: the guest ended, fine
    m._proc = subprocess.Popen(["sleep", "30"])
    try:
        with _pytest.raises(MachineError):
            m.resume()                           # QEMU still running: a real failure
    finally:
        m._proc.kill()
        m._proc.wait()


#: A process that, like QEMU stuck in monitor_cleanup, exits only when signalled, and
#: then with the status its main loop had chosen (an isa-debug-exit's 45).
_STUCK_EXIT = ("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: sys.exit(45))\n"
               "print('ready', flush=True)\n"
               "time.sleep(120)\n")


class _ShutdownQmp:
    """QEMU's QMP after its SHUTDOWN event: any command would go unanswered."""

    connected = True

    def count(self, name: str) -> int:
        return int(name == "SHUTDOWN")

    def shutdown_event(self) -> dict:
        return {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}}

    def wait_disconnected(self, timeout: float) -> bool:
        return True

    def status(self) -> str:
        raise AssertionError("a QMP command went to a QEMU that said SHUTDOWN")

    def close(self) -> None:
        pass


def test_a_qemu_stuck_after_its_shutdown_is_woken_and_keeps_its_status() -> None:
    """`kswgdb.qemu.exitnudge`: SHUTDOWN came and QEMU does not exit; `wait_exit`
    wakes it (SIGTERM), once, and the guest's ending is the one QEMU reports."""
    import subprocess
    import sys
    from types import SimpleNamespace

    m = Machine("kswtest")
    m._qmp = _ShutdownQmp()  # type: ignore[assignment]
    m.qemu = SimpleNamespace(quirks=SimpleNamespace(debug_exit_via_shutdown=True))  # type: ignore[assignment]
    m._proc = subprocess.Popen([sys.executable, "-c", _STUCK_EXIT], stdout=subprocess.PIPE)
    try:
        assert m._proc.stdout is not None and m._proc.stdout.readline() == b"ready\n"
        assert m.shutting_down
        ended = m.wait_exit(60)
    finally:
        if m._proc.poll() is None:
            m._proc.kill()
        m._proc.wait()
        m._proc.stdout.close()  # type: ignore[union-attr]
    assert m.exit_nudge.nudged
    assert (ended.kind, ended.status, ended.code) == ("debug-exit", 45, 22)
    assert not m.shutting_down


class _Proc:
    """A process that never exits and records being woken."""

    def __init__(self) -> None:
        self.terminated = 0

    def poll(self) -> None:
        return None

    def terminate(self) -> None:
        self.terminated += 1


def test_a_qemu_still_sending_to_kswgdb_after_shutdown_is_not_woken() -> None:
    """The grace runs from the later of SHUTDOWN and the engine's last line from QEMU:
    a QEMU whose exit waits on kswgdb reading a backlog of hit lines is not stuck."""
    from kswgdb.qemu.exitnudge import ExitNudge

    now = [100.0]
    nudge = ExitNudge(grace=1.0, clock=lambda: now[0])
    heard = [100.0]
    nudge.heard_from = lambda: heard[0]
    proc = _Proc()
    for _ in range(30):                   # 3 s after SHUTDOWN, lines still coming
        nudge.check(proc, shutdown_seen=True)  # type: ignore[arg-type]
        now[0] += 0.1
        heard[0] = now[0] - 0.05
    assert proc.terminated == 0 and not nudge.nudged
    for _ in range(11):                   # then silence: woken once, 1 s after the last line
        nudge.check(proc, shutdown_seen=True)  # type: ignore[arg-type]
        now[0] += 0.1
    nudge.check(proc, shutdown_seen=True)  # type: ignore[arg-type]
    assert proc.terminated == 1 and nudge.nudged
