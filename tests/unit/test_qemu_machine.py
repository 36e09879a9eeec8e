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
