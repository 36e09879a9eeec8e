"""The suite's own out-of-tree module, caught through ``--module`` on Debian's kernel.

tests/fixtures/modules/kswbug is a real use-after-return bug, not LKDTM: one
function keeps the address of its local past its return, a later call writes
through it into another function's live frame. It is compiled here against the
image's own headers (images/linux/build.py --external-module, a few seconds),
never committed as a .ko. Two Linux boots: the catch, through the command line as
a user runs it; and Debian's own virtio-blk modules given with ``--module`` so that
the guest itself reads and writes ``--drive`` disks. The vermagic check needs no boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kswgdb.image import IMAGES_DIR
from kswgdb.image import load as load_image
from kswgdb.qemu.drives import qemu_img_for
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.modinfo import read_module
from kswgdb.symbols.module import load_module

ROOT = IMAGES_DIR.parent
LINUX_TOML = IMAGES_DIR / "linux.toml"
SOURCE = ROOT / "tests" / "fixtures" / "modules" / "kswbug"
TRIGGER = "echo 1 > /sys/kernel/debug/kswbug/trigger"


@pytest.fixture(scope="module")
def image():
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        pytest.fail("the Debian image is not built: run `make image-linux` (make test-linux does)")
    return load_image(LINUX_TOML)


@pytest.fixture(scope="module")
def kswbug_ko(image, tmp_path_factory) -> Path:
    """kswbug.ko, built for the image's kernel from its headers packages (by `make
    image-linux` into out/test-modules, else here)."""
    built = IMAGES_DIR / "linux" / "out" / "test-modules" / "kswbug.ko"
    if built.is_file() and built.stat().st_mtime >= max(
            f.stat().st_mtime for f in SOURCE.iterdir()):
        return built
    dest = tmp_path_factory.mktemp("kswbug") / "kswbug.ko"
    proc = subprocess.run([sys.executable, str(IMAGES_DIR / "linux" / "build.py"),
                           "--external-module", str(SOURCE), "--module-out", str(dest)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and dest.is_file(), proc.stdout + proc.stderr
    return dest


def _kswgdb(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kswgdb", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})


def test_kswbug_frames_line_up(kswbug_ko: Path) -> None:
    """The bug needs kswbug_stash's scratch[] where kswbug_victim's guard[] is (same CFA
    offset): a compiler that lays them out differently fails here, not as "0 hits"."""
    program = load_module(kswbug_ko)
    where = {}
    for func, var in (("kswbug_stash", "scratch"), ("kswbug_victim", "guard")):
        listing = build_listing(program, func)
        where[func] = next(v.cfa_offset for v in listing.locals if v.name == var)
    assert where["kswbug_stash"] == where["kswbug_victim"] is not None, where


def test_kswbug_stale_write_caught_with_the_writer_named(image, kswbug_ko: Path,
                                                         tmp_path: Path) -> None:
    # The watch `kswgdb disasm kswbug_victim --module kswbug.ko --var guard[5]` suggests.
    suggested = _kswgdb("disasm", "kswbug_victim", "--image", str(LINUX_TOML), "--module",
                        str(kswbug_ko), "--var", "guard[5]", timeout=120)
    assert suggested.returncode == 0, suggested.stderr
    watch = re.search(r"suggested watch: (.+)", suggested.stdout).group(1).strip()
    assert watch.startswith("fn=kswbug_victim fo=") and watch.endswith("var=guard[5]"), watch
    log = tmp_path / "events.jsonl"
    t0 = time.monotonic()
    proc = _kswgdb("run", str(LINUX_TOML), "--module", str(kswbug_ko), "--watch", watch,
                   "--accel", "tcg", "--cmdline", f"-- {TRIGGER}", "--log", str(log))
    seconds = time.monotonic() - t0
    print(f"\nkswbug via --module: {watch}: {seconds:.1f} s")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"module kswbug: {kswbug_ko}" in proc.stderr
    assert "module kswbug loaded: kswbug_victim at 0x" in proc.stderr
    out = proc.stdout
    assert re.search(r"kswbug_writer\+0x[0-9a-f]+/0x[0-9a-f]+ \[kswbug\] corrupted the local "
                     r"guard\[5\] of kswbug_victim", out), out[-3000:]
    assert "0x6b6b6b6b00000005 -> 0xbadc0ffee0ddf00d" in out
    events = [json.loads(line) for line in log.read_text().splitlines()]
    hits = [e for e in events if e["event"] == "hit"]
    assert len(hits) == 1, [e["event"] for e in events]
    hit = hits[0]
    assert hit["writer"]["function"] == "kswbug_writer"
    assert hit["writer"]["symbol"].endswith("[kswbug]")
    assert hit["writer"]["source"]["file"].endswith("kswbug.c")
    assert hit["what"] == "local guard[5] of kswbug_victim"
    names = [f["symbol"].split("+")[0] for f in hit["backtrace"]]
    assert names[:3] == ["kswbug_writer", "kswbug_victim", "kswbug_trigger"], names
    assert "vfs_write" in names
    assert events[0]["modules"] == [{"name": "kswbug", "path": str(kswbug_ko.resolve()),
                                     "vermagic": read_module(kswbug_ko).vermagic}]
    end = events[-1]
    assert end["event"] == "end" and not end["fault"], end


def test_a_module_built_for_another_kernel_is_refused_before_boot(image, kswbug_ko: Path,
                                                                  tmp_path: Path) -> None:
    info = read_module(kswbug_ko)
    # The same module as if built for the next ABI (6.1.0-57-cloud-amd64 -> 6.1.0-58-...).
    abi = re.search(r"-(\d+)-", info.release)
    assert abi is not None, info.release
    other = info.release.replace(f"-{abi.group(1)}-", f"-{int(abi.group(1)) + 1}-", 1)
    assert other != info.release and len(other) == len(info.release)
    data = kswbug_ko.read_bytes()
    wrong = tmp_path / "kswbug-other.ko"
    wrong.write_bytes(data.replace(f"vermagic={info.release}".encode(),
                                   f"vermagic={other}".encode()))
    assert read_module(wrong).release == other
    t0 = time.monotonic()
    proc = _kswgdb("run", str(LINUX_TOML), "--module", str(wrong), "--watch",
                   "fn=kswbug_victim fo=0x10", "--accel", "tcg", "--cmdline", f"-- {TRIGGER}",
                   "--log", str(tmp_path / "e.jsonl"), timeout=120)
    seconds = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (f"kswgdb: error: --module {wrong}: built for kernel {other}, the image "
                        f"runs {info.release} (rebuild it against this kernel's headers)")
    assert not (tmp_path / "e.jsonl").exists()       # nothing started, not even the log
    assert seconds < 60


def test_debian_virtio_modules_let_the_guest_use_drives_never_modified(image,
                                                                       tmp_path: Path) -> None:
    """The guest reads a disk, writes through its overlay and reads the write back, and
    is refused on a read-only qcow2 one; both files keep their bytes. The six modules are
    given in an order insmod would refuse: kswgdb loads them by their dependencies."""
    virtio = IMAGES_DIR / "linux" / "out" / "test-modules" / "virtio"
    order = ["virtio_blk", "virtio_pci", "virtio", "virtio_pci_modern_dev",
             "virtio_pci_legacy_dev", "virtio_ring"]
    missing = [m for m in order if not (virtio / f"{m}.ko").is_file()]
    assert not missing, f"run `make image-linux`: {missing} not in {virtio}"
    raw = tmp_path / "disk.img"
    raw.write_bytes(b"kswgdb-disk-A\n".ljust(1 << 20, b"\0"))
    plain = tmp_path / "ro.raw"
    plain.write_bytes(b"kswgdb-disk-RO\n".ljust(1 << 20, b"\0"))
    qcow = tmp_path / "ro.qcow2"
    subprocess.run([qemu_img_for(), "convert", "-q", "-O", "qcow2", str(plain), str(qcow)],
                   check=True)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (raw, qcow)}
    command = ("head -n 1 /dev/vda; echo guest-wrote-B | dd of=/dev/vda conv=fsync "
               "2>/dev/null; head -n 1 /dev/vda; head -n 1 /dev/vdb; "
               "echo x | dd of=/dev/vdb conv=fsync 2>&1 | grep -o 'Operation not permitted'")
    argv = ["boot", str(LINUX_TOML), "--accel", "tcg", "--drive", f"{raw},overlay",
            "--drive", str(qcow), "--cmdline", f"-- {command}"]
    for name in order:
        argv += ["--module", str(virtio / f"{name}.ko")]
    proc = _kswgdb(*argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    loaded = re.findall(r"KSWGDB-INIT loaded \d+-(\w+)\.ko", out)
    assert sorted(loaded) == sorted(order) and loaded.index("virtio_ring") < loaded.index(
        "virtio") < loaded.index("virtio_blk"), out[-3000:]
    assert "failed to load" not in out
    lines = out.splitlines()
    at = lines.index("kswgdb-disk-A")
    assert lines[at + 1:at + 4] == ["guest-wrote-B", "kswgdb-disk-RO",
                                    "Operation not permitted"], lines[at:at + 6]
    assert f"drive vda: {raw} (raw, throw-away overlay)" in proc.stderr
    assert f"drive vdb: {qcow} (qcow2, read-only)" in proc.stderr
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (raw, qcow)} == before
