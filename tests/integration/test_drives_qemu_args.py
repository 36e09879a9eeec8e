"""``--drive`` and ``--qemu-arg`` on the test kernel: what QEMU really got, and the
user's image bytes unchanged after a guest-side write (cheap: no Linux boot).

The test kernel has no block driver, so the writes are made the way a guest's
would reach the disk, by QEMU's own block layer (HMP ``qemu-io`` on the drive):
through the overlay they succeed and land in the overlay; on a read-only drive
QEMU refuses them. The run is built by `prepare` and `Rig` from `RunOptions`, the
path `kswgdb run` takes; one more run goes through the command line itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kswgdb.image import IMAGES_DIR
from kswgdb.image import load as load_image
from kswgdb.qemu.drives import qemu_img_for
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import prepare
from kswgdb.run.rig import Rig
from kswgdb.watch.scenarios import scenario_watch

#: virtio-rng-pci: Red Hat's virtio vendor id, the entropy device (legacy or modern id).
VIRTIO_VENDOR, RNG_DEVICES = 0x1AF4, {0x1005, 0x1044}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def disks(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "user disk.img"
    raw.write_bytes(bytes(range(256)) * 1024)
    qcow = tmp_path / "user.qcow2"
    subprocess.run([qemu_img_for(), "create", "-q", "-f", "qcow2", str(qcow), "1M"],
                   check=True)
    return raw, qcow


def _hmp(machine, line: str) -> str:
    return str(machine.qmp.execute("human-monitor-command", {"command-line": line}))


def test_drives_and_qemu_args_reach_qemu_and_the_images_stay_unchanged(
        disks: tuple[Path, Path], tmp_path: Path) -> None:
    raw, qcow = disks
    before = {p: _sha256(p) for p in disks}
    plan = prepare(RunOptions(
        scenario=3, accel="tcg", log_path=tmp_path / "events.jsonl",
        drives=[str(raw), f"{qcow},overlay"],
        qemu_args=["-device", "virtio-rng-pci,id=kswrng"]), require_watch=False)
    rig = Rig(plan, stub=False)
    overlay = None
    try:
        rig.launch()
        machine = rig.machine
        assert machine is not None
        pci = machine.qmp.execute("query-pci")
        devices = [d for bus in pci for d in bus["devices"]]
        assert any(d["id"]["vendor"] == VIRTIO_VENDOR and d["id"]["device"] in RNG_DEVICES
                   for d in devices), devices
        block = {b["device"]: b for b in machine.qmp.execute("query-block")}
        assert block["kswdrive0"]["inserted"]["ro"] is True
        assert block["kswdrive0"]["inserted"]["file"] == str(raw.resolve())
        inserted = block["kswdrive1"]["inserted"]
        assert inserted["ro"] is False
        overlay = Path(inserted["file"])
        assert overlay.parent == machine.run_dir.paths.root
        assert inserted["backing_file"] == str(qcow.resolve())
        # A write through the overlay succeeds; one on the read-only drive is refused.
        # (qemu-io prints on QEMU's own stdout, kept in its log.)
        _hmp(machine, 'qemu-io kswdrive1 "write -P 0x55 0 65536"')
        _hmp(machine, 'qemu-io kswdrive1 "read -P 0x55 0 65536"')
        refused = _hmp(machine, 'qemu-io kswdrive0 "write -P 0x55 0 4096"')
        said = "\n".join(machine.qemu_log_tail())
        assert "wrote 65536/65536 bytes" in said and "read 65536/65536 bytes" in said, said
        assert said.count("wrote ") == 1, said          # not a byte on the read-only drive
        assert "read-only" in (refused + said).lower(), (refused, said)
    finally:
        rig.close()
    assert {p: _sha256(p) for p in disks} == before
    assert overlay is not None and not overlay.exists()      # thrown away with the run


@pytest.mark.one_qemu       # the argv itself is checked on both QEMUs by the test above
def test_a_run_with_a_drive_and_a_qemu_arg_catches_as_before(
        disks: tuple[Path, Path], tmp_path: Path) -> None:
    """The whole command line: scenario 3 caught, exit 1, the image untouched."""
    raw, _ = disks
    before = _sha256(raw)
    watch = scenario_watch(load_image(IMAGES_DIR / "kswtest.toml"), 3)
    log = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", "--scenario", "3", "--accel", "tcg",
         "--watch", watch, "--drive", f"{raw},overlay", "--qemu-arg=-device",
         "--qemu-arg=virtio-rng-pci", "--log", str(log), "--timeout", "120"],
        capture_output=True, text=True, timeout=200)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"drive vda: {raw.resolve()} (raw, throw-away overlay)" in proc.stderr
    assert "extra QEMU arguments: -device virtio-rng-pci" in proc.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events].count("hit") >= 1
    start = events[0]
    assert start["event"] == "start"
    assert start["drives"] == [{"path": str(raw.resolve()), "mode": "overlay", "format": "raw"}]
    assert start["qemu_args"] == ["-device", "virtio-rng-pci"]
    assert _sha256(raw) == before
