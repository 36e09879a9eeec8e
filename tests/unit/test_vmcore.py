"""The freeze vmcore's description: which command opens it, and the VMCOREINFO it needs."""

from __future__ import annotations

import shlex
import struct
from pathlib import Path
from types import SimpleNamespace

from kswgdb.image import Image
from kswgdb.run.vmcore import describe, has_vmcoreinfo_note, inspect_command
from kswgdb.symbols.slide import KernelSlide

VMCOREINFO = b"OSRELEASE=6.1.0\nPAGESIZE=4096\nKERNELOFFSET=22000000\n"


def _image(tmp_path: Path, guest: str, modules: bool = False) -> Image:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    mods = None
    if modules:
        mods = tmp_path / "mods"
        mods.mkdir()
        for name in ("lkdtm.ko", "qemu_fw_cfg.ko"):
            (mods / name).write_bytes(b"\x7fELF")
    return Image(name="t", path=tmp_path / "t.toml", kernel=kernel, symbols=kernel,
                 guest=guest, modules_dir=mods)


def _core_with_notes(path: Path, notes: list[tuple[bytes, bytes]]) -> Path:
    """A minimal ELF64 core: one PT_NOTE segment holding ``notes`` (name, desc)."""
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    blob = b"".join(struct.pack("<III", len(n) + 1, len(d), 0) + pad(n + b"\0") + pad(d)
                    for n, d in notes)
    ehdr = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
            + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 120, 0, 0, len(blob), len(blob), 0)
    path.write_bytes(ehdr + phdr + blob)
    return path


def test_linux_dump_is_opened_with_drgn_and_every_module_object(tmp_path: Path) -> None:
    image = _image(tmp_path, "linux", modules=True)
    core = tmp_path / "core with space.elf"
    cmd = inspect_command(image, core, KernelSlide(0x22000000, 0x3000000, "entry"))
    mods = tmp_path / "mods"
    assert shlex.split(cmd) == ["drgn", "-c", str(core), "-s", str(image.symbols),
                                "-s", str(mods / "lkdtm.ko"), "-s", str(mods / "qemu_fw_cfg.ko")]
    side = tmp_path / "core.vmcoreinfo"
    assert shlex.split(inspect_command(image, core, None, side))[3:5] == ["--vmcoreinfo",
                                                                          str(side)]


def test_test_kernel_dump_is_opened_with_gdb_moved_by_the_slide(tmp_path: Path) -> None:
    image = _image(tmp_path, "kswtest")
    core = tmp_path / "core.elf"
    assert inspect_command(image, core, None) == f"gdb {image.symbols} {core}"
    assert inspect_command(image, core, KernelSlide(0x200000, None, "entry")) == \
        f"gdb -ex 'symbol-file -o 0x200000 {image.symbols}' {core}"


def test_vmcoreinfo_note_is_found_among_the_cpu_notes(tmp_path: Path) -> None:
    with_note = _core_with_notes(tmp_path / "a.elf", [(b"CORE", b"\0" * 336),
                                                       (b"VMCOREINFO", VMCOREINFO)])
    without = _core_with_notes(tmp_path / "b.elf", [(b"CORE", b"\0" * 336)])
    assert has_vmcoreinfo_note(with_note)
    assert not has_vmcoreinfo_note(without)
    (tmp_path / "junk").write_bytes(b"not an elf")
    assert not has_vmcoreinfo_note(tmp_path / "junk")


class _Memory:
    """A stub target: little-endian words and bytes at guest addresses."""

    def __init__(self, cells: dict[int, bytes]) -> None:
        self.cells = cells

    def read(self, addr: int, length: int) -> bytes:
        return self.cells[addr][:length]


def _rig(image: Image, memory: _Memory | None, symbols: dict[str, int]) -> SimpleNamespace:
    def global_address(name: str) -> int:
        return symbols[name]        # KeyError like a missing symbol
    program = SimpleNamespace(global_address=global_address)
    return SimpleNamespace(plan=SimpleNamespace(image=image), target=memory, layout=None,
                           placement=SimpleNamespace(slide=KernelSlide(), program=program))


def test_linux_dump_without_the_note_gets_the_kernels_vmcoreinfo_beside_it(
        tmp_path: Path) -> None:
    """No vmcoreinfo device (or no fw_cfg driver): the text is read through the stub."""
    image = _image(tmp_path, "linux")
    core = _core_with_notes(tmp_path / "core.elf", [(b"CORE", b"\0" * 336)])
    memory = _Memory({0x1000: (0xFFFF888000100000).to_bytes(8, "little"),
                      0x2000: len(VMCOREINFO).to_bytes(8, "little"),
                      0xFFFF888000100000: VMCOREINFO + b"\0" * 64})
    frozen = describe(_rig(image, memory, {"vmcoreinfo_data": 0x1000,
                                           "vmcoreinfo_size": 0x2000}), core, 42)
    side = tmp_path / "core.elf.vmcoreinfo"
    assert frozen.vmcoreinfo == "file" and frozen.ticks == 42
    assert side.read_bytes() == VMCOREINFO and side.stat().st_mode & 0o777 == 0o600
    assert f"--vmcoreinfo {side}" in frozen.inspect
    # The same dump with the note needs nothing beside it.
    side.unlink()
    noted = _core_with_notes(tmp_path / "noted.elf", [(b"VMCOREINFO", VMCOREINFO)])
    frozen = describe(_rig(image, memory, {}), noted)
    assert frozen.vmcoreinfo == "note" and "--vmcoreinfo" not in frozen.inspect
    # A kernel without vmcoreinfo symbols: nothing written, the hint has no file.
    frozen = describe(_rig(image, memory, {}), core)
    assert frozen.vmcoreinfo is None and not side.exists()


def test_test_kernel_dump_needs_no_vmcoreinfo(tmp_path: Path) -> None:
    image = _image(tmp_path, "kswtest")
    core = _core_with_notes(tmp_path / "core.elf", [(b"CORE", b"\0" * 336)])
    frozen = describe(_rig(image, None, {}), core, 7)
    assert frozen.vmcoreinfo is None and frozen.inspect.startswith("gdb ")
    assert not list(tmp_path.glob("*.vmcoreinfo"))


def test_tui_header_shows_the_frozen_dumps_own_command(tmp_path: Path) -> None:
    """The TUI names drgn for a Linux dump; a snapshot without a command keeps gdb's."""
    from kswgdb.run.livestate import FROZEN, Snapshot
    from kswgdb.tui.view import header

    core = tmp_path / "core.elf"
    linux = Snapshot(state=FROZEN, vmcore=core, inspect=f"drgn -c {core} -s vmlinux")
    text = header("linux", None, None, linux, tmp_path / "vmlinux", None).plain
    assert f"inspect: drgn -c {core} -s vmlinux" in text and "inspect: gdb" not in text
    plain = Snapshot(state=FROZEN, vmcore=core)
    assert f"inspect: gdb {tmp_path / 'k.elf'} {core}" in header(
        "kswtest", None, None, plain, tmp_path / "k.elf", None).plain
