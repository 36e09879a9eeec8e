"""Choosing the QEMU binary, detecting its version once, and the per-version quirks.

Fake QEMUs (shell scripts printing what a real one prints for ``-version`` and
``-L help``) stand in for the binaries; the real 7.2 and 10.0 runs are the
integration suite's (``make test`` runs it against both).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kswgdb.commands import demo_status
from kswgdb.errors import BadInput, InfraError
from kswgdb.exitcodes import ExitStatus
from kswgdb.qemu import binary
from kswgdb.qemu.argv import QBOOT_ROM, bios_path
from kswgdb.qemu.exitstatus import debug_exit_status, decode_exit
from kswgdb.qemu.version import DEBUG_EXIT_VIA_SHUTDOWN, QemuVersion, Quirks, parse_version

BANNER_72 = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
BANNER_10 = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
SHUTDOWN = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}}


def fake_qemu(tmp_path: Path, banner: str, firmware: Path | None = None,
              name: str = "qemu-system-x86_64") -> Path:
    """An executable that answers -version and -L help like a QEMU."""
    firmware = firmware or tmp_path / "share"
    script = tmp_path / name
    script.write_text("#!/bin/sh\n"
                      'if [ "$1" = "-L" ]; then echo ' + str(firmware) + "; exit 0; fi\n"
                      f"echo '{banner}'\necho 'Copyright (c) 2003-2025'\n")
    script.chmod(0o755)
    return script


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(binary.ENV_VAR, raising=False)
    monkeypatch.setattr(binary, "_chosen", None)
    binary.detect.cache_clear()


@pytest.mark.parametrize(("text", "version"), [
    (BANNER_72, (7, 2, 22)),
    (BANNER_10, (10, 0, 2)),
    ("QEMU emulator version 9.0.50 (v9.0.0-1234-gdeadbeef)\n", (9, 0, 50)),
    ("qemu-img version 7.2.0", None),
    ("", None),
])
def test_parse_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == version


def test_versions_compare_as_tuples() -> None:
    assert QemuVersion(10, 0, 2) > QemuVersion(9, 1, 0) > QemuVersion(7, 2, 22)
    assert QemuVersion(9, 1, 0) >= (9, 1)
    assert str(QemuVersion(10, 0, 2)) == "10.0.2"


@pytest.mark.parametrize(("version", "via_shutdown"), [
    ((7, 2, 22), False), ((8, 2, 2), False), ((9, 0, 4), False),
    ((9, 1, 0), True), ((10, 0, 2), True), ((10, 1, 0), True),
])
def test_debug_exit_quirk_by_version(version: tuple[int, int, int], via_shutdown: bool) -> None:
    assert Quirks.of(QemuVersion(*version)).debug_exit_via_shutdown is via_shutdown
    assert (QemuVersion(*version) >= DEBUG_EXIT_VIA_SHUTDOWN) is via_shutdown


def test_debug_exit_through_shutdown_is_a_debug_exit_from_9_1() -> None:
    """QEMU 10.0's isa-debug-exit: SHUTDOWN guest-shutdown and status (code << 1) | 1."""
    status = debug_exit_status(0x13)                  # scenario 3's verdict, status 39
    gone = decode_exit(status, SHUTDOWN, ["KSWTEST verdict"], debug_exit_via_shutdown=True)
    assert (gone.kind, gone.code, gone.status) == ("debug-exit", 0x13, 39)
    assert gone.reason == "isa-debug-exit"


def test_debug_exit_with_a_panic_line_stays_a_debug_exit() -> None:
    """The test kernel's own panic ends in isa-debug-exit too; that is still its code."""
    gone = decode_exit(125, SHUTDOWN, ["Kernel panic - not syncing: x"],
                       debug_exit_via_shutdown=True)
    assert (gone.kind, gone.code) == ("debug-exit", 0x3E)


def test_poweroff_is_still_a_poweroff_on_10() -> None:
    """An ACPI power-off exits 0: the odd status is what tells a debug-exit apart."""
    assert decode_exit(0, SHUTDOWN, debug_exit_via_shutdown=True).kind == "shutdown"


def test_before_9_1_guest_shutdown_is_a_poweroff() -> None:
    """No version check, no reinterpretation: 7.2 never sends this pair for a debug-exit."""
    assert decode_exit(39, SHUTDOWN).kind == "shutdown"


def test_detect_reads_version_banner_and_firmware(tmp_path: Path) -> None:
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "qboot.rom").write_bytes(b"rom")
    found = binary.detect(str(fake_qemu(tmp_path, BANNER_10, fw)))
    assert found.version == (10, 0, 2)
    assert found.banner == BANNER_10
    assert found.quirks.debug_exit_via_shutdown
    assert found.firmware_dirs == (fw,)
    assert found.firmware("qboot.rom") == fw / "qboot.rom"
    assert found.firmware("pvh.bin") is None


def test_detect_runs_each_binary_once(tmp_path: Path) -> None:
    path = str(fake_qemu(tmp_path, BANNER_72))
    assert binary.detect(path) is binary.detect(path)


def test_selection_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert binary.selected_path() == (binary.DEFAULT_BINARY, "")
    env_qemu = fake_qemu(tmp_path, BANNER_72, name="env-qemu")
    monkeypatch.setenv(binary.ENV_VAR, str(env_qemu))
    assert binary.selected_path() == (str(env_qemu), binary.ENV_VAR)
    assert binary.selected().version == (7, 2, 22)
    flag_qemu = fake_qemu(tmp_path, BANNER_10, name="flag-qemu")
    binary.choose(str(flag_qemu))
    assert binary.selected_path() == (str(flag_qemu), "--qemu")
    assert binary.selected().version == (10, 0, 2)


def test_named_qemu_missing_or_not_qemu_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"QEMU not found: /nonexistent/qemu \(--qemu\)"):
        binary.choose("/nonexistent/qemu")
    with pytest.raises(BadInput, match=r"not a QEMU: .*true"):
        binary.choose("/bin/true")
    assert binary.selected_path()[1] == ""             # a refused choice is not kept


def test_default_qemu_missing_is_the_hosts_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary, "DEFAULT_BINARY", "kswgdb-no-such-qemu")
    with pytest.raises(InfraError, match="install qemu-system-x86 or set KSWGDB_QEMU") as err:
        binary.selected()
    assert not isinstance(err.value, BadInput)


def test_qboot_is_the_running_qemus_own(tmp_path: Path) -> None:
    empty, fw = tmp_path / "empty", tmp_path / "fw"
    empty.mkdir()
    fw.mkdir()
    (fw / "qboot.rom").write_bytes(b"rom")
    assert bios_path("qboot", (empty, fw)) == fw / "qboot.rom"
    assert bios_path("qboot", (empty,)) == QBOOT_ROM
    assert bios_path("qboot") == QBOOT_ROM


@pytest.mark.parametrize(("run", "demo"), [(1, 0), (0, ExitStatus.DEMO_MISSED), (3, 3), (2, 2),
                                           (4, 4)])
def test_demo_status(run: int, demo: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_status(run) == demo
    err = capsys.readouterr().err
    assert ("the demo caught nothing" in err) == (demo == ExitStatus.DEMO_MISSED)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_bad_qemu_is_one_line_exit_2(how: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "kswgdb"]
    env = dict(os.environ)
    if how == "flag":
        argv += ["run", "--qemu", "/nonexistent/qemu"]
    else:
        env[binary.ENV_VAR] = "/nonexistent/qemu"
        argv += ["run"]
    argv += ["--scenario", "3", "--watch", "fn=s3_victim fo=0x23"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "kswgdb: error: QEMU not found: /nonexistent/qemu "
        f"({'--qemu' if how == 'flag' else binary.ENV_VAR})"]


@pytest.mark.parametrize(("version", "loops"), [
    ((7, 2, 22), False), ((9, 2, 3), False), ((10, 0, 0), True), ((10, 0, 2), True)])
def test_rep_string_quirk_by_version(version: tuple[int, int, int], loops: bool) -> None:
    """From 10.0 a REP string instruction is one stop; icount makes it one per iteration."""
    quirks = Quirks.of(QemuVersion(*version))
    assert quirks.rep_string_loops is loops
    assert quirks.tcg_args() == (("-icount", "shift=auto") if loops else ())
    assert quirks.tcg_args(gdbstub=False) == ()     # no watchpoint stop to keep exact


def test_version_args_go_on_the_command_line(tmp_path: Path) -> None:
    from kswgdb.image import Image
    from kswgdb.qemu.argv import QemuOptions, build_argv
    from kswgdb.qemu.rundir import RunPaths

    kernel = tmp_path / "k.elf"
    kernel.write_bytes(b"\x7fELF")
    image = Image(name="t", path=tmp_path / "t.toml", kernel=kernel, symbols=kernel,
                  cmdline="", memory="64M", cpus=2, machine="pc", bios=None)
    paths = RunPaths(tmp_path)
    plain = build_argv(image, paths, QemuOptions())
    looped = build_argv(image, paths, QemuOptions(version_args=("-icount", "shift=auto")))
    assert "-icount" not in plain
    at = looped.index("-icount")
    assert looped[at + 1] == "shift=auto"
    assert looped[:at] + looped[at + 2:] == plain
