"""QEMU command lines: built as lists, sockets in the private run dir, options honoured."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kswgdb.image import Image
from kswgdb.qemu.argv import (
    KVM_CPU,
    QBOOT_ROM,
    QemuOptions,
    bios_path,
    build_argv,
    parse_size,
)
from kswgdb.qemu.errors import MachineStartError
from kswgdb.qemu.rundir import RunDir, RunPaths, owned_tempdir, sweep_stale


def _image(tmp_path: Path, **kw: object) -> Image:
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(b"\x7fELF")
    base: dict[str, object] = dict(name="t", path=tmp_path / "t.toml", kernel=kernel,
                                   symbols=kernel, cmdline="console=ttyS0", memory="128M",
                                   cpus=2, machine="pc", bios="qboot")
    base.update(kw)
    return Image(**base)  # type: ignore[arg-type]


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.fixture
def paths(tmp_path: Path) -> RunPaths:
    return RunPaths(tmp_path / "run")


def test_default_kswtest_like_image(tmp_path: Path, paths: RunPaths) -> None:
    argv = build_argv(_image(tmp_path), paths, QemuOptions(scenario=3))
    assert argv[0] == "qemu-system-x86_64"
    assert all(isinstance(a, str) for a in argv)
    assert _value(argv, "-accel") == "tcg,thread=single"
    assert "-cpu" not in argv                       # QEMU's default model under TCG
    assert _value(argv, "-smp") == "2"
    assert _value(argv, "-m") == "128M"
    assert _value(argv, "-machine") == "pc"
    assert _value(argv, "-bios") == str(QBOOT_ROM)
    assert _value(argv, "-kernel") == str(tmp_path / "k.elf")
    assert _value(argv, "-append") == "console=ttyS0 scenario=3"
    for flag in ("-nodefaults", "-no-reboot", "-S"):
        assert flag in argv
    assert _value(argv, "-display") == "none"
    assert "isa-debug-exit,iobase=0xf4,iosize=0x04" in _values(argv, "-device")
    assert _value(argv, "-serial") == "chardev:con0"
    assert _value(argv, "-gdb") == "chardev:gdb0"
    assert _value(argv, "-mon") == "chardev=qmp0,mode=control"


def test_a_linux_guest_gets_the_vmcoreinfo_device_and_the_test_kernel_not(
        tmp_path: Path, paths: RunPaths) -> None:
    """Only a Linux kernel fills QEMU's vmcoreinfo (the note a dump needs for drgn/crash)."""
    assert "vmcoreinfo" in _values(build_argv(_image(tmp_path, guest="linux"), paths), "-device")
    assert "vmcoreinfo" not in _values(build_argv(_image(tmp_path), paths), "-device")


def test_sockets_live_in_the_run_dir(tmp_path: Path, paths: RunPaths) -> None:
    argv = build_argv(_image(tmp_path), paths)
    chardevs = _values(argv, "-chardev")
    assert chardevs == [
        f"socket,id=con0,path={paths.root}/console.sock,server=off",
        f"socket,id=qmp0,path={paths.root}/qmp.sock,server=off",
        f"socket,id=gdb0,path={paths.root}/gdb.sock,server=on,wait=off",
    ]
    for sock in paths.sockets():
        assert sock.parent == paths.root


def test_cmdline_with_spaces_is_one_argument(tmp_path: Path, paths: RunPaths) -> None:
    img = _image(tmp_path, cmdline="a=1 b='x y'; rm -rf /")
    argv = build_argv(img, paths, QemuOptions(extra_cmdline="seed=7 -S"))
    assert _value(argv, "-append") == "a=1 b='x y'; rm -rf / seed=7 -S"
    assert argv.count("-S") == 1


def test_no_append_when_cmdline_empty(tmp_path: Path, paths: RunPaths) -> None:
    argv = build_argv(_image(tmp_path, cmdline=""), paths)
    assert "-append" not in argv


def test_q35_seabios_no_bios_flag(tmp_path: Path, paths: RunPaths) -> None:
    argv = build_argv(_image(tmp_path, machine="q35", bios=None), paths)
    assert _value(argv, "-machine") == "q35"
    assert "-bios" not in argv


def test_overrides_for_benchmarks(tmp_path: Path, paths: RunPaths) -> None:
    opts = QemuOptions(machine="microvm", bios=None, smp=1, memory="64M", name="bench")
    argv = build_argv(_image(tmp_path), paths, opts)
    assert _value(argv, "-machine") == "microvm"
    assert "-bios" not in argv
    assert _value(argv, "-smp") == "1"
    assert _value(argv, "-m") == "64M"
    assert _value(argv, "-name").startswith("kswgdb-bench")


def test_kvm_uses_host_cpu_without_arch_capabilities(tmp_path: Path, paths: RunPaths) -> None:
    argv = build_argv(_image(tmp_path), paths, QemuOptions(accel="kvm"))
    assert _value(argv, "-accel") == "kvm"
    assert _value(argv, "-cpu") == KVM_CPU == "host,-arch-capabilities"


def test_explicit_cpu(tmp_path: Path, paths: RunPaths) -> None:
    argv = build_argv(_image(tmp_path), paths, QemuOptions(cpu="max"))
    assert _value(argv, "-cpu") == "max"


def test_initrd(tmp_path: Path, paths: RunPaths) -> None:
    initrd = tmp_path / "initrd.cpio"
    argv = build_argv(_image(tmp_path, initrd=initrd, guest="linux"), paths)
    assert _value(argv, "-initrd") == str(initrd)


def test_not_paused_no_gdb_extra_args(tmp_path: Path, paths: RunPaths) -> None:
    opts = QemuOptions(paused=False, gdb=False, extra_args=("-d", "int"))
    argv = build_argv(_image(tmp_path), paths, opts)
    assert "-S" not in argv
    assert "-gdb" not in argv
    assert "gdb0" not in " ".join(argv)
    assert argv[-2:] == ["-d", "int"]


def test_shared_ram_memfd(tmp_path: Path, paths: RunPaths) -> None:
    argv = build_argv(_image(tmp_path, machine="q35"), paths, QemuOptions(shared_ram="memfd"))
    assert _value(argv, "-object") == (
        f"memory-backend-memfd,id=ram0,size={128 << 20},share=on"
    )
    assert _value(argv, "-machine") == "q35,memory-backend=ram0"
    assert _value(argv, "-m") == "128M"


def test_shared_ram_file(tmp_path: Path, paths: RunPaths) -> None:
    ram = tmp_path / "shm" / "guest-ram"
    opts = QemuOptions(shared_ram="file", ram_file=ram, memory="1G")
    argv = build_argv(_image(tmp_path), paths, opts)
    assert _value(argv, "-object") == (
        f"memory-backend-file,id=ram0,size={1 << 30},mem-path={ram},share=on"
    )
    assert _value(argv, "-machine") == "pc,memory-backend=ram0"


def test_shared_ram_file_needs_a_path(tmp_path: Path, paths: RunPaths) -> None:
    with pytest.raises(ValueError):
        build_argv(_image(tmp_path), paths, QemuOptions(shared_ram="file"))


def test_comma_in_path_is_escaped(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "a,b")
    argv = build_argv(_image(tmp_path), paths)
    assert f"path={tmp_path}/a,,b/console.sock,server=off" in _values(argv, "-chardev")[0]


@pytest.mark.parametrize("text,size", [("128M", 128 << 20), ("1G", 1 << 30), ("512", 512 << 20),
                                       ("64MiB", 64 << 20), ("2048k", 2 << 20), (256, 256 << 20)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_size("lots")


def test_bios_path() -> None:
    assert bios_path(None) is None
    assert bios_path("qboot") == QBOOT_ROM
    assert bios_path("/x/y.bin") == Path("/x/y.bin")


def test_private_run_dir_is_0700_and_removed() -> None:
    rd = RunDir()
    root = rd.root
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert root.name.startswith("kswgdb-")
    ram = rd.shared_ram_file()
    assert stat.S_IMODE(os.stat(ram.parent).st_mode) == 0o700
    rd.remove()
    assert not root.exists()
    assert not ram.parent.exists()
    rd.remove()  # idempotent


def test_given_run_dir_is_kept_but_sockets_go(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "mine")
    assert stat.S_IMODE(os.stat(rd.root).st_mode) == 0o700
    rd.paths.console_log.write_text("x")
    rd.paths.gdb_sock.write_text("")
    rd.remove()
    assert rd.paths.console_log.exists()
    assert not rd.paths.gdb_sock.exists()


def test_given_run_dir_removed_when_keep_false(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "mine", keep=False)
    rd.remove()
    assert not (tmp_path / "mine").exists()


def test_run_dir_too_long_for_sockets(tmp_path: Path) -> None:
    with pytest.raises(MachineStartError, match="too long"):
        RunDir(tmp_path / ("x" * 120))


def test_sweep_stale_removes_only_dead_owners(tmp_path: Path) -> None:
    gone_pid = _dead_pid()
    stale = tmp_path / "kswgdb-stale"
    live = tmp_path / "kswgdb-live"
    foreign = tmp_path / "kswgdb-noowner"
    other = tmp_path / "other-dir"
    for d in (stale, live, foreign, other):
        d.mkdir()
    (stale / "owner.pid").write_text(f"{gone_pid}\n")
    (live / "owner.pid").write_text(f"{os.getpid()}\n")
    (other / "owner.pid").write_text(f"{gone_pid}\n")
    assert sweep_stale([tmp_path]) == [stale]
    assert not stale.exists() and live.exists() and foreign.exists() and other.exists()


def test_owned_tempdir_is_private_marked_and_swept_once_its_owner_is_gone() -> None:
    d = owned_tempdir("kswgdb-relay-")
    try:
        assert d.name.startswith("kswgdb-relay-") and (d.stat().st_mode & 0o777) == 0o700
        assert (d / "owner.pid").read_text() == f"{os.getpid()}\n"
        assert d not in sweep_stale([d.parent])          # we are alive: kept
        (d / "owner.pid").write_text(f"{_dead_pid()}\n")
        assert d in sweep_stale([d.parent]) and not d.exists()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    with pytest.raises(ValueError):
        owned_tempdir("relay-")                          # a prefix the sweep would not see


def test_private_run_dir_has_owner_file() -> None:
    rd = RunDir()
    try:
        assert (rd.root / "owner.pid").read_text() == f"{os.getpid()}\n"
    finally:
        rd.remove()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
