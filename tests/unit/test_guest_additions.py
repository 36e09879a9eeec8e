"""``--module``, ``--drive`` and ``--qemu-arg``: every check before boot, and what the
guest is given (the initramfs archive, QEMU's argv, the overlay), without QEMU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kswgdb.errors import BadInput
from kswgdb.image import IMAGES_DIR
from kswgdb.qemu import guestcmd
from kswgdb.qemu.cpio import Entry, append_archive
from kswgdb.qemu.drives import Drive, check_drives, drive_args, parse_drive, qemu_img_for
from kswgdb.qemu.userargs import check_qemu_args
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import prepare
from kswgdb.symbols.modinfo import check_vermagic, parse_modinfo, read_module

VERMAGIC = "6.1.0-57-cloud-amd64 SMP preempt mod_unload modversions "


def _ko(directory: Path, name: str = "mymod", vermagic: str = VERMAGIC,
        this_module: bool = True) -> Path:
    """A relocatable object shaped like a kbuild module: .modinfo and this_module."""
    src = directory / f"{name}.c"
    src.write_text(
        f'__attribute__((section(".modinfo"), used)) static const char v[] = '
        f'"vermagic={vermagic}";\n'
        f'__attribute__((section(".modinfo"), used)) static const char n[] = "name={name}";\n'
        + ('__attribute__((section(".gnu.linkonce.this_module"), used)) '
           'static char m[64];\n' if this_module else "")
        + "int entry(int x) { return x + 1; }\n")
    ko = directory / f"{name}.ko"
    subprocess.run(["gcc", "-O2", "-c", "-o", str(ko), str(src)], check=True)
    return ko


def _entries(data: bytes) -> dict[str, bytes]:
    """name -> bytes of every record of a newc archive."""
    out, at = {}, 0
    while at < len(data):
        assert data[at:at + 6] == b"070701", data[at:at + 16]
        size = int(data[at + 54:at + 62], 16)
        name_len = int(data[at + 94:at + 102], 16)
        name = data[at + 110:at + 110 + name_len - 1].decode()
        body = at + 110 + name_len
        body += -body % 4
        out[name] = data[body:body + size]
        at = body + size + (-size % 4)
        if name == "TRAILER!!!":
            break
    return out


# -- modules -----------------------------------------------------------------------


def test_a_module_says_its_name_and_vermagic(tmp_path: Path) -> None:
    info = read_module(_ko(tmp_path))
    assert (info.name, info.vermagic, info.release) == ("mymod", VERMAGIC, "6.1.0-57-cloud-amd64")
    check_vermagic(info, VERMAGIC)          # the same kernel: nothing said


def test_a_module_for_another_kernel_is_refused_in_one_line(tmp_path: Path) -> None:
    info = read_module(_ko(tmp_path, vermagic="6.1.0-99-cloud-amd64 SMP preempt mod_unload "))
    with pytest.raises(BadInput, match=r"built for kernel 6\.1\.0-99-cloud-amd64, the image "
                                       r"runs 6\.1\.0-57-cloud-amd64"):
        check_vermagic(info, VERMAGIC)
    same_release = read_module(_ko(tmp_path, "other", "6.1.0-57-cloud-amd64 SMP mod_unload "))
    with pytest.raises(BadInput, match="vermagic .* differs from the kernel's"):
        check_vermagic(same_release, VERMAGIC)


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda d: d / "missing.ko", "no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "t.ko").write_text("hello") and d / "t.ko", "not an ELF file"),
    (lambda d: Path(sys.executable).resolve(), "not a relocatable .ko"),
    (lambda d: _ko(d, "plain", this_module=False), "not a kernel module"),
    (lambda d: _ko(d, "novermagic", vermagic="") and d / "novermagic.ko", "vermagic"),
])
def test_what_is_not_a_module_is_one_line(tmp_path: Path, make, fragment: str) -> None:
    with pytest.raises(BadInput, match=fragment):
        read_module(make(tmp_path))


def test_modinfo_strings_are_split_on_nul_and_alignment_padding() -> None:
    raw = b"license=GPL\0\0\0depends=a,b\0name=x\0vermagic=1 SMP \0"
    assert parse_modinfo(raw) == {"license": ["GPL"], "depends": ["a,b"], "name": ["x"],
                                  "vermagic": ["1 SMP "]}


def test_modules_travel_in_the_initramfs_in_order_with_the_command(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"base archive, 21 bytes")
    a, b = tmp_path / "b.ko", tmp_path / "a.ko"
    a.write_bytes(b"first module")
    b.write_bytes(b"second module")
    kernel, dest = guestcmd.prepare("linux", initrd, "quiet -- echo 1", tmp_path, [a, b])
    assert kernel == "quiet" and dest is not None
    data = dest.read_bytes()
    base = initrd.read_bytes()
    assert data.startswith(base)
    entries = _entries(data[len(base) + (-len(base) % 4):])
    assert entries["kswgdb-command"] == b"echo 1\n"
    assert "kswgdb-modules" in entries
    assert entries["kswgdb-modules/01-b.ko"] == b"first module"
    assert entries["kswgdb-modules/02-a.ko"] == b"second module"
    # Modules without a command: the kernel's words stay as they are.
    kernel, dest = guestcmd.prepare("linux", initrd, "quiet", tmp_path, [a])
    assert kernel == "quiet" and dest is not None
    assert "kswgdb-command" not in _entries(dest.read_bytes()[24:])


def test_images_init_loads_every_module_given() -> None:
    init = (IMAGES_DIR / "linux" / "init").read_text()
    assert f"/{guestcmd.MODULES_DIR}/*.ko" in init
    loop = init.index(f"for module in /{guestcmd.MODULES_DIR}/")
    assert init.index("insmod /lib/modules/lkdtm.ko") < loop \
        < init.index("echo \"KSWGDB-INIT ready")


def test_append_archive_pads_to_four_bytes(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.write_bytes(b"12345")
    append_archive(base, [Entry("x", 0o100644, b"y")], tmp_path / "out")
    data = (tmp_path / "out").read_bytes()
    assert data[:8] == b"12345\0\0\0" and data[8:14] == b"070701"


def test_module_on_an_image_that_cannot_load_it_is_bad_input(tmp_path: Path) -> None:
    ko = _ko(tmp_path)
    with pytest.raises(BadInput, match="not a Linux image with an initramfs"):
        prepare(RunOptions(watches=["fn=s3_victim fo=0x23"], modules=[str(ko)]))


# -- QEMU arguments ---------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["-gdb", "tcp::1234"], ["-s"], ["-S"], ["--qmp", "unix:/tmp/q"], ["-monitor", "stdio"],
    ["-daemonize"], ["-nographic"], ["-serial", "stdio"], ["-serial", "mon:stdio"],
    ["-chardev", "stdio,id=x"], ["-chardev", "socket,id=gdb0,path=/tmp/x"],
    ["-enable-kvm"], ["-accel", "kvm"], ["-m", "4G"], ["-kernel", "x"], ["-append", "x"],
    ["-device"],
])
def test_qemu_args_that_would_break_the_wiring_are_refused(argv: list[str]) -> None:
    with pytest.raises(BadInput, match=r"^--qemu-arg "):
        check_qemu_args(argv)


def test_qemu_args_pass_through_as_argv_elements() -> None:
    args = ["-device", "virtio-rng-pci", "-rtc", "base=2001-01-01", "-serial", "file:/tmp/x y"]
    assert check_qemu_args(args) == tuple(args)


# -- drives ------------------------------------------------------------------------


def test_drive_syntax() -> None:
    assert parse_drive("disk.img") == (Path("disk.img"), "ro")
    assert parse_drive("disk.img,overlay") == (Path("disk.img"), "overlay")
    assert parse_drive("a,b.img") == (Path("a,b.img"), "ro")
    with pytest.raises(BadInput):
        parse_drive(",overlay")


def test_a_missing_or_unreadable_drive_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        check_drives([str(tmp_path / "none.img")])
    with pytest.raises(BadInput, match="is a directory"):
        check_drives([str(tmp_path)])
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * 4096)
    with pytest.raises(BadInput, match="given twice"):
        check_drives([str(disk), f"{disk},overlay"])


def test_drives_become_virtio_disks_and_overlays_never_touch_the_image(tmp_path: Path) -> None:
    raw = tmp_path / "raw, with comma.img"
    raw.write_bytes(b"\x5a" * 65536)
    qcow = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img_for(), "create", "-q", "-f", "qcow2", str(qcow), "1M"],
                   check=True)
    drives = check_drives([str(raw), f"{qcow},overlay"])
    assert drives == [Drive(raw.resolve(), "ro", "raw"), Drive(qcow.resolve(), "overlay",
                                                                "qcow2")]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    argv = drive_args(drives, run_dir)
    escaped = str(raw.resolve()).replace(",", ",,")
    assert argv[:2] == ["-drive", f"file={escaped},format=raw,readonly=on,if=virtio,"
                                  "id=kswdrive0"]
    overlay = run_dir / "kswdrive1-overlay.qcow2"
    assert argv[2:] == ["-drive", f"file={overlay},format=qcow2,if=virtio,id=kswdrive1"]
    info = json.loads(subprocess.run([qemu_img_for(), "info", "--output=json", str(overlay)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(qcow.resolve())
    assert info["backing-filename-format"] == "qcow2"


def test_modules_are_loaded_after_the_given_modules_they_depend_on(tmp_path: Path) -> None:
    from kswgdb.run.additions import load_order
    from kswgdb.symbols.modinfo import ModuleInfo

    def mod(name: str, *depends: str) -> ModuleInfo:
        return ModuleInfo(tmp_path / f"{name}.ko", name, VERMAGIC, depends)

    given = [mod("blk", "virtio", "ring"), mod("virtio", "ring"), mod("ring"),
             mod("other", "builtin_elsewhere")]
    assert [m.name for m in load_order(given)] == ["ring", "virtio", "blk", "other"]
    cycle = [mod("a", "b"), mod("b", "a")]
    assert [m.name for m in load_order(cycle)] == ["a", "b"]
