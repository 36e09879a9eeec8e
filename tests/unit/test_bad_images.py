"""Bad images and impossible watches: a clear one-line error, exit 2, before QEMU starts.

Each case builds the bad file itself (a copy of the test kernel with its ELF header
or code changed, a stripped copy, a text file) and runs ``kswgdb run`` in-process
with QEMU's launch replaced by a sentinel that fails the test if it is reached.
Two cases also run as a real process, to see exactly what a user sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kswgdb import cli
from kswgdb.image import IMAGES_DIR
from kswgdb.image import load as load_image
from kswgdb.symbols.elf import SymbolTable
from kswgdb.symbols.program import Program
from kswgdb.watch.checks import check_alignment, with_alignment_warning
from kswgdb.watch.config import parse_watch
from kswgdb.watch.resolve import resolve_watch
from tests.unit.conftest import QemuReached

KERNEL = IMAGES_DIR / "kswtest.elf"
WATCH = "fn=s3_victim fo=0x23"


def _toml(tmp: Path, kernel: str, symbols: str | None = None) -> Path:
    path = tmp / "image.toml"
    extra = f'symbols = "{symbols}"\n' if symbols else ""
    path.write_text(f'kernel = "{kernel}"\n{extra}machine = "pc"\nguest = "kswtest"\n')
    return path


def _patched_header(tmp: Path, name: str, edits: dict[int, bytes]) -> str:
    data = bytearray(KERNEL.read_bytes())
    for offset, value in edits.items():
        data[offset:offset + len(value)] = value
    (tmp / name).write_bytes(bytes(data))
    return name


def _code_changed(tmp: Path) -> str:
    """The kernel with one byte of s3_victim changed: "another build" of the same source."""
    table = SymbolTable.load(KERNEL)
    func = table.function("s3_victim")
    data = bytearray(KERNEL.read_bytes())
    original = table.read_bytes(func.addr, func.size)
    at = bytes(data).find(original)
    assert at > 0
    data[at + 5] ^= 0xFF
    (tmp / "other.elf").write_bytes(bytes(data))
    return "other.elf"


def _stripped(tmp: Path) -> str:
    subprocess.run(["objcopy", "--strip-all", str(KERNEL), str(tmp / "stripped.elf")],
                   check=True)
    return "stripped.elf"


def _run_error(capsys, argv: list[str]) -> str:
    status = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert status == 2, err
    assert err[-1].startswith("kswgdb: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("make,fragment", [
    (lambda t: "missing.elf", "kernel file missing"),
    (lambda t: (t / "notelf.elf").write_text("not a kernel\n") and "notelf.elf",
     "is not an ELF file"),
    (lambda t: _patched_header(t, "arm.elf", {18: (183).to_bytes(2, "little")}),
     "wrong architecture"),
    (lambda t: _patched_header(t, "i386.elf", {4: b"\x01", 18: (3).to_bytes(2, "little")}),
     "wrong architecture"),
    (_stripped, "has no symbols"),
], ids=["missing", "not-elf", "aarch64", "i386", "stripped"])
def test_bad_kernel_file(tmp_path, capsys, no_guest, make, fragment) -> None:
    image = _toml(tmp_path, make(tmp_path))
    assert fragment in _run_error(capsys, ["run", str(image), "--watch", WATCH])


def test_symbols_from_another_build_are_refused(tmp_path, capsys, no_guest) -> None:
    image = _toml(tmp_path, _code_changed(tmp_path), symbols=str(KERNEL))
    line = _run_error(capsys, ["run", str(image), "--watch", WATCH])
    assert "does not match kernel" in line and "s3_victim" in line


def test_stripped_kernel_with_matching_symbols_is_accepted(tmp_path, capsys,
                                                           no_guest) -> None:
    image = _toml(tmp_path, _stripped(tmp_path), symbols=str(KERNEL))
    with pytest.raises(QemuReached):
        cli.main(["run", str(image), "--watch", WATCH, "--accel", "tcg"])


@pytest.mark.parametrize("watch,fragment", [
    ("fn=s3_victim fo=0x23 so=0x4000 wl=8", "reaches outside the task's stack"),
    ("fn=s3_victim fo=0x23 so=-0x4000 wl=8", "reaches outside the task's stack"),
    ("fn=s3_victim fo=0x23 so=0x3ffc wl=8", "reaches outside the task's stack"),
    ("fn=no_such_function fo=0x10", "no_such_function"),
    ("fn=s3_victim fo=0x24", "not an instruction boundary"),
    ("fn=s3_victim fo=0x2000", "past the end"),
], ids=["so-above", "so-below", "wl-crosses-top", "no-function", "mid-insn", "outside-fn"])
def test_impossible_watch(capsys, no_guest, watch, fragment) -> None:
    assert fragment in _run_error(capsys, ["run", "--watch", watch, "--accel", "tcg"])


def test_misaligned_watch_kvm_error_tcg_warning() -> None:
    program = Program.load(load_image(None).symbols)
    resolved = resolve_watch(parse_watch("fn=s3_victim fo=0x23 so=0x13 wl=8"), program)
    with pytest.raises(Exception, match="natural alignment under KVM"):
        check_alignment(resolved, "kvm")
    check_alignment(resolved, "tcg")
    warned = with_alignment_warning(resolved)
    assert any("not naturally aligned" in w for w in warned.warnings)
    aligned = resolve_watch(parse_watch("fn=s3_victim fo=0x23 so=0x10 wl=8"), program)
    check_alignment(aligned, "kvm")
    assert with_alignment_warning(aligned) is aligned


def test_misaligned_watch_warns_on_the_command_line(capsys, no_guest) -> None:
    with pytest.raises(QemuReached):
        cli.main(["run", "--watch", "fn=s3_victim fo=0x23 so=0x12 wl=4", "--accel", "tcg"])
    assert "not naturally aligned" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["0.0.0.0:1234", "192.168.1.1:1234", "[::]:1234",
                                     "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_gdb_listen_is_loopback_only(capsys, no_guest, address) -> None:
    line = _run_error(capsys, ["run", "--watch", WATCH, "--gdb-listen", address])
    assert "--gdb-listen" in line


@pytest.mark.parametrize("argv,fragment", [
    (["run", "/dev/null/x.toml", "--watch", WATCH], "image not found"),
    (["run", "--watch", WATCH, "--gdb-listen", "0.0.0.0:1234"], "only 127.0.0.1"),
])
def test_as_a_real_process(tmp_path, argv, fragment) -> None:
    proc = subprocess.run([sys.executable, "-m", "kswgdb", *argv], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir()), "nothing may be created on bad input"


def test_copy_is_still_the_same_kernel(tmp_path) -> None:
    """Sanity for the cases above: an unchanged copy with separate symbols passes."""
    shutil.copyfile(KERNEL, tmp_path / "copy.elf")
    from kswgdb.symbols.match import check_kernel_matches

    check_kernel_matches(tmp_path / "copy.elf", KERNEL, ["s3_victim", "s0_victim"])
