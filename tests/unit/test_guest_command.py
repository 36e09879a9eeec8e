"""A Linux guest's command travels in the initramfs, never on the kernel command line."""

from __future__ import annotations

import gzip
from pathlib import Path

from kswgdb.qemu import guestcmd
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.watch.faults import exit_fault, normal_exits


def test_split_keeps_kernel_words_and_the_whole_command():
    assert guestcmd.split_command("quiet -- echo a -- b") == ("quiet", "echo a -- b")
    assert guestcmd.split_command("-- ls") == ("", "ls")
    assert guestcmd.split_command("quiet loglevel=3") == ("quiet loglevel=3", None)


def test_the_command_is_appended_as_a_newc_archive(tmp_path: Path):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(gzip.compress(b"07070100 fake base archive"))
    command = " ".join(f"w{i}" for i in range(200))     # far past the kernel's 32 words
    kernel, dest = guestcmd.prepare("linux", initrd, f"nokaslr -- {command}", tmp_path)
    assert kernel == "nokaslr" and dest is not None
    data = dest.read_bytes()
    base = initrd.read_bytes()
    assert data.startswith(base)
    start = len(base) + (-len(base) % 4)
    assert data[len(base):start] == b"\0" * (start - len(base))
    assert data[start:start + 6] == b"070701"
    name_len = int(data[start + 94:start + 102], 16)
    size = int(data[start + 54:start + 62], 16)
    name_end = start + 110 + name_len
    assert data[start + 110:name_end - 1] == b"kswgdb-command"
    body = name_end + (-name_end % 4)
    assert data[body:body + size] == command.encode() + b"\n"
    assert b"TRAILER!!!" in data[body + size:]


def test_other_images_keep_their_command_line(tmp_path: Path):
    assert guestcmd.prepare("kswtest", None, "runs=3", tmp_path) == ("runs=3", None)
    assert guestcmd.prepare("linux", tmp_path / "x", "quiet", tmp_path) == ("quiet", None)


def test_a_panic_from_too_many_boot_words_is_a_fault_not_an_ending():
    panic = "Kernel panic - not syncing: Too many boot init vars at `w33'"
    ended = GuestExit(kind="panic", status=0, reason="guest-reset", panic=panic)
    fault = exit_fault(ended, "", normal_exits("linux"))
    assert fault is not None and "command line is too long" in fault and "w33" in fault
    smashed = "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted"
    other = GuestExit(kind="panic", status=0, reason="guest-reset", panic=smashed)
    assert exit_fault(other, "", normal_exits("linux")) is None
