"""The machine layer against tiny PVH guests (no test kernel needed)."""

from __future__ import annotations

import mmap
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kswgdb.image import Image
from kswgdb.qemu import binary, pvh
from kswgdb.qemu.errors import MachineStartError
from tests.integration.helpers import MachineFactory

pytestmark = pytest.mark.integration


def test_debug_exit_code_and_console(machine: MachineFactory,
                                     pvh_image: Callable[..., Image]) -> None:
    m = machine(pvh_image(pvh.print_and_exit("HELLO boot\n", 0x21)))
    assert m.qmp.status() == "prelaunch"             # -S: nothing ran yet
    assert m.console.lines() == []
    m.resume()
    assert m.wait_for(r"^HELLO (\w+)$", 10).group(1) == "boot"
    gone = m.wait_exit(10)
    assert (gone.kind, gone.code, gone.status) == ("debug-exit", 0x21, 67)
    assert gone.lines == ("HELLO boot",)
    assert m.console_log.read_bytes() == b"HELLO boot\n"


def test_triple_fault_shutdown_and_debug_exit_are_told_apart(
        machine: MachineFactory, pvh_image: Callable[..., Image]) -> None:
    programs = {
        "triple-fault": pvh.triple_fault("GOING\n"),
        "shutdown": pvh.poweroff_piix4("GOING\n"),
        "debug-exit": pvh.print_and_exit("GOING\n", 0),
    }
    for kind, prog in programs.items():
        m = machine(pvh_image(prog), paused=False)
        gone = m.wait_exit(10)
        assert gone.kind == kind, (kind, gone)
        assert gone.lines == ("GOING",)
    # status alone cannot tell them apart: triple fault and power-off both exit 0
    assert machine(pvh_image(pvh.triple_fault()), paused=False).wait_exit(10).reason \
        == "guest-reset"


def test_timeout_keeps_last_lines_and_qemu_running(machine: MachineFactory,
                                                   pvh_image: Callable[..., Image]) -> None:
    m = machine(pvh_image(pvh.print_and_hang("KSWTEST stuck here\n")), paused=False)
    m.wait_for("stuck", 10)
    t = time.monotonic()
    gone = m.wait_exit(0.3)
    assert gone.kind == "timeout"
    assert 0.3 <= time.monotonic() - t < 3
    assert gone.lines == ("KSWTEST stuck here",)
    assert m.running
    assert m.kill().kind == "killed"
    assert not m.running


def test_qmp_stop_cont_and_events(machine: MachineFactory,
                                  pvh_image: Callable[..., Image]) -> None:
    m = machine(pvh_image(pvh.watch_loop()))
    m.resume()
    assert m.qmp.status() == "running"
    mark = m.qmp.mark()
    m.qmp.stop()
    assert m.qmp.wait_event("STOP", 5, since=mark)["event"] == "STOP"
    assert m.qmp.status() == "paused"
    m.qmp.cont()
    assert m.qmp.status() == "running"


def test_system_reset_ends_the_machine(machine: MachineFactory,
                                       pvh_image: Callable[..., Image]) -> None:
    m = machine(pvh_image(pvh.watch_loop()), paused=False)
    m.qmp.system_reset()                          # -no-reboot: a reset is an exit
    gone = m.wait_exit(10)
    assert (gone.kind, gone.reason) == ("killed", "host-qmp-system-reset")


def test_close_quits_and_removes_run_dir(machine: MachineFactory,
                                         pvh_image: Callable[..., Image]) -> None:
    m = machine(pvh_image(pvh.watch_loop()), paused=False)
    assert m.run_dir is not None
    root = m.run_dir.root
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert m.gdb_socket.is_socket() and m.gdb_socket.parent == root
    # console and QMP listeners are unlinked once QEMU connected
    assert not (root / "console.sock").exists() and not (root / "qmp.sock").exists()
    pid = m.pid
    m.close()
    assert not root.exists()
    assert m.guest_exit is not None and m.guest_exit.reason == "host-qmp-quit"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    m.close()                                      # idempotent


def test_close_escalates_when_qemu_does_not_answer(
        machine: MachineFactory, pvh_image: Callable[..., Image]) -> None:
    """A frozen QEMU (SIGSTOP: no QMP reply, SIGTERM stays pending) still goes, in bound."""
    m = machine(pvh_image(pvh.watch_loop()), paused=False)
    assert m.pid is not None
    os.kill(m.pid, signal.SIGSTOP)
    t = time.monotonic()
    m.close(timeout=1.0)
    assert time.monotonic() - t < 3.0
    assert m.guest_exit is not None and m.guest_exit.status == -signal.SIGKILL
    assert not m.running


def test_kept_run_dir(machine: MachineFactory, pvh_image: Callable[..., Image],
                      tmp_path: Path) -> None:
    m = machine(pvh_image(pvh.print_and_exit("kept\n", 1)), paused=False,
                run_dir=tmp_path / "run")
    m.wait_exit(10)
    m.close()
    assert (tmp_path / "run" / "console.log").read_text() == "kept\n"
    assert (tmp_path / "run" / "qemu.log").exists()
    assert not (tmp_path / "run" / "gdb.sock").exists()


def test_launch_failure_carries_argv_and_qemu_output(machine: MachineFactory,
                                                     pvh_image: Callable[..., Image]) -> None:
    img = pvh_image(pvh.watch_loop())
    with pytest.raises(MachineStartError) as info:
        machine(img, extra_args=("-device", "no-such-device-kswgdb"))
    err = info.value
    assert "exited with status 1" in str(err)
    assert err.argv[0] == binary.selected_path()[0] and "no-such-device-kswgdb" in err.argv
    assert any("no-such-device-kswgdb" in line for line in err.console_tail)
    assert "command:" in err.details()


def test_launch_failure_bad_binary(machine: MachineFactory,
                                   pvh_image: Callable[..., Image]) -> None:
    with pytest.raises(MachineStartError, match="could not launch"):
        machine(pvh_image(pvh.watch_loop()), qemu_binary="/nonexistent/qemu")


def test_dump_guest_memory(machine: MachineFactory, pvh_image: Callable[..., Image],
                           tmp_path: Path) -> None:
    prog = pvh.watch_loop()
    m = machine(pvh_image(prog))
    out = m.qmp.dump_guest_memory(tmp_path / "core")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF"
    code = prog.elf[pvh.PAGE:pvh.PAGE + 8]
    assert code in data                              # the loaded program is in the dump


def test_shared_ram_file_maps_guest_memory(machine: MachineFactory,
                                           pvh_image: Callable[..., Image]) -> None:
    prog = pvh.watch_loop()
    assert prog.watch_addr is not None
    m = machine(pvh_image(prog), shared_ram=True)
    assert m.ram_path is not None and m.ram_path.stat().st_size == 32 << 20
    with open(m.ram_path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as ram:
        assert ram[pvh.LOAD_ADDR:pvh.LOAD_ADDR + 8] == prog.elf[pvh.PAGE:pvh.PAGE + 8]
        counter = int.from_bytes(ram[prog.watch_addr:prog.watch_addr + 4], "little")
        assert counter == 0                          # paused: the loop has not run
        m.resume()
        deadline = time.monotonic() + 5
        while counter == 0 and time.monotonic() < deadline:
            counter = int.from_bytes(ram[prog.watch_addr:prog.watch_addr + 4], "little")
        assert counter > 0                           # guest stores seen from the host
    ram_dir = m.ram_path.parent
    m.close()
    assert not ram_dir.exists()


def test_shared_ram_memfd(machine: MachineFactory, pvh_image: Callable[..., Image]) -> None:
    m = machine(pvh_image(pvh.watch_loop()), shared_ram="memfd")
    fds = [os.readlink(p) for p in Path(f"/proc/{m.pid}/fd").iterdir()]
    assert any(t.startswith("/memfd:") for t in fds), fds
