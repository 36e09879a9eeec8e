"""`kswgdb attach` against a QEMU the test starts by hand, as a virtme-ng or libvirt user has it.

One QEMU for the module: the test kernel's scenario 3 repeated (``runs=100000``:
a stale-pointer write into a dead frame's canary every few milliseconds, for
minutes), with ``-gdb unix:...,server=on,wait=off`` and ``-qmp unix:...`` in a
private 0700 directory, its serial port in a file. Every attach must leave it
running: QMP ``query-status`` says so, the serial file keeps growing, and a fresh
debugger that continues the guest is not stopped by anything kswgdb left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from kswgdb import cli
from kswgdb.gdbstub.attach import connect_existing
from kswgdb.gdbstub.errors import StubTimeout
from kswgdb.image import IMAGES_DIR
from kswgdb.qemu import binary
from kswgdb.qemu.argv import bios_path
from kswgdb.qemu.qmp import Qmp

WATCH = "fn=s3_victim fo=0x23"          # scenario 3's victim canary (images/kswtest.toml)
LEDGER_WATCH = "fn=s3_victim fo=0x4c var=ledger[6]"   # `kswgdb disasm s3_victim --var ...`
WRITER = "s3_corrupt_write"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class UserQemu:
    """The QEMU a user started: its sockets, its serial file, and its process."""

    dir: Path
    proc: subprocess.Popen
    gdb: str
    qmp: str
    serial: Path

    def status(self) -> str:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(self.qmp.removeprefix("unix:"))
        qmp = Qmp(sock, timeout=10)
        try:
            return qmp.status()
        finally:
            qmp.close()

    def serial_lines(self) -> int:
        return len(self.serial.read_bytes().splitlines())

    def keeps_running(self) -> None:
        """QMP says running and the guest's console grows."""
        assert self.proc.poll() is None
        assert self.status() == "running"
        before = self.serial_lines()
        deadline = time.monotonic() + 20
        while self.serial_lines() == before:
            assert time.monotonic() < deadline, "the guest's console stopped growing"
            time.sleep(0.1)


def start_user_qemu(home: Path, *extra: str, gdb: str | None = None) -> UserQemu:
    """QEMU as a user starts it: the test kernel's scenario 3 repeated, our two sockets
    (``gdb``: another gdbstub address, e.g. ``tcp:127.0.0.1:PORT`` as ``-s`` has it)."""
    gdb = gdb or f"unix:{home}/gdb.sock,server=on,wait=off"
    qemu = binary.selected()
    bios = bios_path("qboot", qemu.firmware_dirs)
    argv = [qemu.path, "-accel", "tcg,thread=single", "-smp", "2", "-m", "64M",
            "-machine", "pc", *(["-bios", str(bios)] if bios else []),
            "-kernel", str(IMAGES_DIR / "kswtest.elf"), "-append", "scenario=3 runs=100000",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-serial", f"file:{home}/serial.log",
            "-gdb", gdb,
            "-qmp", f"unix:{home}/qmp.sock,server=on,wait=off", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = gdb.split(",")[0].removeprefix("tcp:") if gdb.startswith("tcp:") else \
        f"unix:{home}/gdb.sock"
    guest = UserQemu(home, proc, address, f"unix:{home}/qmp.sock", home / "serial.log")
    deadline = time.monotonic() + 30
    while not Path(guest.qmp.removeprefix("unix:")).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
        time.sleep(0.02)
    return guest


@contextmanager
def user_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="kswgdb-attach-test-"))
    os.chmod(home, 0o700)
    try:
        yield home
    finally:
        for name in ("gdb.sock", "qmp.sock", "serial.log"):
            (home / name).unlink(missing_ok=True)
        home.rmdir()


@pytest.fixture(scope="module")
def user_qemu() -> Iterator[UserQemu]:
    with user_home() as home:
        guest = start_user_qemu(home)
        try:
            deadline = time.monotonic() + 30
            while not (guest.serial.exists()
                       and b"KSWTEST corrupt" in guest.serial.read_bytes()):
                assert guest.proc.poll() is None and time.monotonic() < deadline, \
                    "QEMU did not boot"
                time.sleep(0.05)
            yield guest
        finally:
            guest.proc.kill()       # the test's own QEMU: the test ends it, never kswgdb
            guest.proc.wait(10)


def attach(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(["attach", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_attach_catches_detaches_and_leaves_the_guest_running(user_qemu, tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    status, out, err = attach(capsys, user_qemu.gdb, "--qmp", user_qemu.qmp,
                              "--vmlinux", str(IMAGES_DIR / "kswtest.elf"), "--watch", WATCH,
                              "--on-hit", "detach", "--backtrace", "fp", "--log", str(log))
    assert status == 1, err
    assert f"{WRITER}+" in out and "detached at the first hit" in out
    logged = events(log)
    start = logged[0]
    assert start["attached"] == user_qemu.gdb and start["state_before"] == "running"
    hits = [e for e in logged if e["event"] == "hit"]
    assert len(hits) == 1 and hits[0]["writer"]["function"] == WRITER
    detach = next(e for e in logged if e["event"] == "detach")
    assert detach["resumed"] and detach["breakpoints"] >= 1 and detach["watchpoints"] == 1
    user_qemu.keeps_running()
    # A fresh debugger: the stub is free, and continuing the guest for 2 s (s3_victim
    # runs every few ms) stops nowhere: no breakpoint or watchpoint of ours is left.
    client = connect_existing(user_qemu.gdb)
    try:
        client.cont()
        with pytest.raises(StubTimeout):
            client.wait_stop(2.0)
        client.interrupt()
        assert client.wait_stop(5.0).signal == 2        # our interrupt, nothing else
        client.detach()
    finally:
        client.close()
    user_qemu.keeps_running()


def test_second_attach_without_qmp_until_timeout(user_qemu, tmp_path, capsys):
    """Another watch (a local array element, not the canary), no QMP (a plain ``-s``-style
    setup: the run state is unknown), ended by --timeout: the rest works the same."""
    log = tmp_path / "events.jsonl"
    status, out, err = attach(capsys, user_qemu.gdb, "--image", "kswtest",
                              "--watch", LEDGER_WATCH, "--timeout", "2", "--backtrace", "fp",
                              "--log", str(log))
    assert status == 1, err
    assert "stopped after --timeout 2s" in out
    hits = [e for e in events(log) if e["event"] == "hit"]
    assert hits and {h["writer"]["function"] for h in hits} == {WRITER}
    detach = next(e for e in events(log) if e["event"] == "detach")
    assert detach["resumed"] and detach["watchpoints"] <= 1
    user_qemu.keeps_running()


def test_ctrl_c_detaches(user_qemu, tmp_path):
    """Ended by Ctrl-C in the middle of a hit storm: detached all the same (status 130)."""
    log = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kswgdb", "attach", user_qemu.gdb, "--image", "kswtest",
         "--watch", WATCH, "--backtrace", "fp", "--log", str(log), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while not (log.exists() and '"hit"' in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "no hit"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 130
    logged = events(log)
    assert any(e["event"] == "detach" and e["resumed"] for e in logged)
    assert logged[-1]["event"] == "end"
    user_qemu.keeps_running()


def test_nothing_listening_is_bad_input_at_once(tmp_path, capsys):
    started = time.monotonic()
    status, _, err = attach(capsys, f"unix:{tmp_path}/none.sock", "--image", "kswtest",
                            "--watch", WATCH, "--log", str(tmp_path / "e.jsonl"))
    assert status == 2 and "nothing is listening at gdbstub address" in err
    assert time.monotonic() - started < 5


def test_busy_stub_is_refused_untouched(user_qemu, tmp_path, capsys):
    holder = connect_existing(user_qemu.gdb)        # another debugger holds the stub
    try:
        for extra in (["--qmp", user_qemu.qmp], []):
            status, _, err = attach(capsys, user_qemu.gdb, *extra, "--image", "kswtest",
                                    "--watch", WATCH, "--log", str(tmp_path / "e.jsonl"))
            assert status == 2 and "is in use: another debugger is attached" in err
        holder.detach()
    finally:
        holder.close()
    user_qemu.keeps_running()       # nothing of ours was queued to pause it later


def test_wrong_symbols_are_refused_and_the_guest_resumed(user_qemu, tmp_path, capsys):
    """A rebuilt kernel (one byte of s3_victim differs): one line, exit 2, guest running."""
    data = bytearray((IMAGES_DIR / "kswtest.elf").read_bytes())
    from kswgdb.symbols.program import Program

    func = Program.load(IMAGES_DIR / "kswtest.elf").function("s3_victim")
    from elftools.elf.elffile import ELFFile

    with open(IMAGES_DIR / "kswtest.elf", "rb") as fh:
        seg = next(s for s in ELFFile(fh).iter_segments() if s["p_type"] == "PT_LOAD"
                   and s["p_vaddr"] <= func.addr < s["p_vaddr"] + s["p_filesz"])
        offset = seg["p_offset"] + func.addr - seg["p_vaddr"]
    data[offset + 5] ^= 0xFF
    other = tmp_path / "other.elf"
    other.write_bytes(data)
    status, _, err = attach(capsys, user_qemu.gdb, "--qmp", user_qemu.qmp,
                            "--vmlinux", str(other), "--watch", WATCH,
                            "--log", str(tmp_path / "e.jsonl"))
    assert status == 2 and "the symbols do not match the running kernel" in err
    assert "s3_victim" in err.splitlines()[-1]
    user_qemu.keeps_running()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_guest_stopped_at_s_is_started_and_left_running(tmp_path, capsys):
    """``-s -S`` style (TCP gdbstub, stopped at reset), no --qmp: the reset vector says so;
    kswgdb starts the guest, watches it from its first instruction and leaves it running.
    Then a debugger holds that TCP stub: the kernel's socket table says it is busy."""
    port = _free_port()
    with user_home() as home:
        guest = start_user_qemu(home, "-S", gdb=f"tcp:127.0.0.1:{port},server=on,wait=off")
        try:
            assert guest.status() == "prelaunch" and guest.gdb == f"127.0.0.1:{port}"
            log = tmp_path / "events.jsonl"
            status, out, err = attach(capsys, f"localhost:{port}", "--image", "kswtest",
                                      "--watch", WATCH, "--on-hit", "detach",
                                      "--backtrace", "fp", "--log", str(log))
            assert status == 1, err
            assert "stopped before its first instruction (-S): kswgdb starts it" in err
            assert f"{WRITER}+" in out
            guest.keeps_running()
            holder = connect_existing(guest.gdb)
            try:
                status, _, err = attach(capsys, guest.gdb, "--image", "kswtest",
                                        "--watch", WATCH, "--log", str(tmp_path / "e.jsonl"))
                assert status == 2 and "is in use: another debugger is attached" in err
                holder.detach()
            finally:
                holder.close()
            guest.keeps_running()
        finally:
            guest.proc.kill()
            guest.proc.wait(10)
