"""`kswgdb campaign --cluster` on a real local Dask cluster (two worker processes).

The cluster is Dask's own `LocalCluster` (a scheduler and two nanny-managed worker
processes on 127.0.0.1, with their own cache directory), not a mock: the campaign
connects by address and ships the image by sha256 (the source copy is deleted once
shipped: the workers run on the bytes they got), each run is a task that runs the
guest on a worker and publishes its hits as they come (``--until-hits`` stops runs
in flight), and the outcomes and event logs come back into the campaign directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.integration.helpers.cli_run import ROOT, alive
from tests.integration.helpers.procs import processes

try:
    import distributed
except ImportError:   # a failure, not a skip: a missing engine must never turn the suite green
    pytest.fail("Dask's distributed is not installed: pip install -e '.[dev]' (make setup)",
                pytrace=False)

WATCH = "fn=s3_victim fo=0x23"
#: The cluster's plumbing does not depend on the QEMU version (test_campaign.py runs on both).
pytestmark = pytest.mark.one_qemu


@pytest.fixture(scope="module")
def worker_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workers' own kswgdb cache (where shipped images land), not the campaign's."""
    return tmp_path_factory.mktemp("worker-cache")


@pytest.fixture(scope="module")
def scheduler(worker_cache: Path) -> Iterator[str]:
    os.environ["PYTHONPATH"] = str(ROOT)      # the workers import this tree (read at their start)
    env = {"KSWGDB_CACHE_DIR": str(worker_cache)}
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1", env=env)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def argv(tmp_path: Path, address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "kswgdb", "campaign", "--scenario", "4", "--watch", WATCH,
            "--accel", "tcg", "--backtrace", "fp", "--cluster", address,
            "--dir", str(tmp_path / "c"), *args]


def start(tmp_path: Path, address: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(argv(tmp_path, address, *args), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def shipped_copy(tmp_path: Path) -> Path:
    """The test kernel's image, copied; its description made unique to this test."""
    src = tmp_path / "image"
    src.mkdir()
    shutil.copy(ROOT / "images" / "kswtest.elf", src)
    text = (ROOT / "images" / "kswtest.toml").read_text()
    (src / "kswtest.toml").write_text(f"{text}\n# shipped copy {tmp_path}\n")
    return src / "kswtest.toml"


def test_a_small_campaign_runs_on_the_cluster_with_the_image_it_shipped(
        tmp_path: Path, scheduler: str, worker_cache: Path) -> None:
    """The image and a --drive travel by sha256; each signature's vmcore comes back."""
    image = shipped_copy(tmp_path)
    drive = image.parent / "disk.raw"
    drive.write_bytes(os.urandom(1 << 20))          # unique: never in a worker's cache yet
    drive_sha = hashlib.sha256(drive.read_bytes()).hexdigest()
    proc = start(tmp_path, scheduler, str(image), "--jobs", "2", "--runs", "3",
                 "--seed-start", "51000", "--on-hit", "freeze", "--drive", str(drive))
    assert proc.stderr is not None
    shipped = ""
    for line in proc.stderr:
        if "sent to the cluster" in line:
            shipped = line
            break
    assert re.search(r"image kswtest: 3 file\(s\) by sha256, [23] sent", shipped), shipped
    shutil.rmtree(image.parent)            # the workers now have only what was shipped
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["caught"] * 3
    assert all(r.get("worker") for r in summary["runs"])       # ran as cluster tasks
    assert all(r["qemu"].startswith("QEMU emulator version") for r in summary["runs"])
    [sig] = summary["signatures"]
    assert sig["writer"].startswith("s3_corrupt_write+0x") and sig["target"] == "canary"
    for r in summary["runs"]:
        assert r["log"].startswith(str(tmp_path / "c" / "runs"))
        events = [json.loads(ln) for ln in Path(r["log"]).read_text().splitlines()]
        assert events[-1]["event"] == "end"
        assert len([e for e in events if e["event"] == "hit"]) == r["hits"] > 0
        [start_event] = [e for e in events if e["event"] == "start"]
        cached = Path(start_event["image"])           # the description, in the worker's cache
        assert cached.parent.parent == worker_cache / "images" and cached.is_file()
        assert cached.read_text().endswith(f"# shipped copy {tmp_path}\n")
        [attached] = start_event["drives"]            # the worker's cached copy, read-only
        assert Path(attached["path"]) == worker_cache / "images" / drive_sha / "disk.raw"
        assert attached["mode"] == "ro"
        assert hashlib.sha256(Path(attached["path"]).read_bytes()).hexdigest() == drive_sha
        assert Path(attached["path"]).stat().st_mode & 0o222 == 0
    assert summary["config"]["image"] == str(image)   # the replay lines name the source
    # One vmcore per signature, in the campaign directory, a readable ELF core.
    kept = Path(sig["vmcore"])
    [first] = [r for r in summary["runs"] if r["index"] == sig["first"]["run"]]
    assert kept.parent == Path(first["log"]).parent and first["vmcore"] == str(kept)
    with open(kept, "rb") as fh:
        core = ELFFile(fh)
        assert core.header["e_type"] == "ET_CORE"
        assert any(seg["p_type"] == "PT_LOAD" and seg["p_filesz"] > 0
                   for seg in core.iter_segments())
    # gdb opens it (the test kernel's inspect command): the clock there is the hit's.
    ticks = first_hit_ticks(Path(first["log"]))
    proc = subprocess.run(["gdb", "-nx", "-batch", str(ROOT / "images" / "kswtest.elf"),
                           str(kept), "-ex", "p jiffies"], capture_output=True, text=True,
                          timeout=60)
    assert re.search(rf"^\$1 = {ticks}$", proc.stdout, re.MULTILINE), proc.stdout + proc.stderr
    others = [r for r in summary["runs"] if r["index"] != sig["first"]["run"]]
    for r in others:
        assert r["vmcore_dropped"] == f"same signature as run {sig['first']['run']}"
        assert not Path(r["vmcore"]).exists()
    assert sorted(p.name for p in (tmp_path / "c" / "runs").rglob("*.elf")) == [kept.name]
    assert not list(Path(tempfile.gettempdir()).glob("kswgdb-cluster-run-*-core-*"))


def first_hit_ticks(log: Path) -> int:
    """The guest's tick counter at a frozen run's hit (read through the stub)."""
    [hit] = [json.loads(ln) for ln in log.read_text().splitlines() if '"hit"' in ln
             and json.loads(ln)["event"] == "hit"]
    assert hit["guest_time"] is not None
    return hit["guest_time"]


def test_until_hits_counts_the_hits_of_runs_in_flight(tmp_path: Path, scheduler: str,
                                                     worker_cache: Path) -> None:
    files = [ROOT / "images" / "kswtest.toml", ROOT / "images" / "kswtest.elf"]
    missing = [f for f in files if not (worker_cache / "images" / hashlib.sha256(
        f.read_bytes()).hexdigest()).is_dir()]    # the ELF is there if another test shipped it
    # Each run (runs=300) lasts far longer than it takes to the first hit: only a
    # hit counted while its run is still going can stop the campaign in time. Three
    # runs on two single-thread workers: the third waits its turn and never starts.
    proc = start(tmp_path, scheduler, "--jobs", "3", "--until-hits", "1",
                 "--cmdline", "runs=300", "--seed-start", "54000")
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert f"2 file(s) by sha256, {len(missing)} sent to the cluster" in err   # no re-send
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["ending"] == "--until-hits 1 reached"
    assert summary["counts"]["hits"] >= 1
    assert {r["status"] for r in summary["runs"]} == {"stopped"}, summary["runs"]
    assert not any(r["verdict"] for r in summary["runs"])     # no guest ran to its end
    assert len(summary["runs"]) == 3
    [queued] = [r for r in summary["runs"] if r["qemu"] is None]   # its guest never started
    assert queued["calls"] == queued["hits"] == 0
    _assert_nothing_left(range(54000, 54010))


def _assert_nothing_left(seeds: range) -> None:
    """No run of the campaign (child process or QEMU) is still there."""
    words = {f"seed={s}".encode() for s in seeds}

    def ours() -> list[int]:
        return [pid for pid, _ppid, argv in processes() if alive(pid) and (
            any(b"kswgdb.campaign.child" in a for a in argv)
            or (any(a.startswith(b"kswgdb-kswtest") for a in argv)
                and any(w in words for a in argv for w in a.split())))]

    deadline = time.monotonic() + 10
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ours(), "a run or its QEMU outlived the campaign"


def test_a_scheduler_address_where_nothing_listens_is_bad_input(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    started = time.monotonic()
    done = subprocess.run(argv(tmp_path, f"tcp://127.0.0.1:{port}"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"kswgdb: error: --cluster tcp://127.0.0.1:{port}: no Dask scheduler there "
        f"(nothing listens on 127.0.0.1:{port})"]
    assert took < 5 + 10, took            # the interpreter's start under load, plus 5 s at most
    assert not (tmp_path / "c").exists()


def _run_children() -> list[tuple[int, int]]:
    """(pid, parent pid) of every ``kswgdb.campaign.child`` process (a run on a worker)
    of this test's cluster: its workers descend from this process (another suite's
    cluster on the same machine has runs too)."""
    table = list(processes())
    parent = {pid: ppid for pid, ppid, _ in table}

    def ours(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid == os.getpid():
                return True
            seen.add(pid)
            pid = parent.get(pid, 0)
        return False

    return [(pid, ppid) for pid, ppid, argv in table
            if b"kswgdb.campaign.child" in argv and ours(pid)]


def test_a_worker_lost_mid_run_is_retried_elsewhere(tmp_path: Path, scheduler: str) -> None:
    proc = start(tmp_path, scheduler, "--jobs", "1", "--runs", "2", "--seed-start", "53000",
                 "--cmdline", "runs=30")
    deadline = time.monotonic() + 120
    while not _run_children() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    [(child, worker)] = _run_children()
    time.sleep(0.5)
    os.kill(worker, signal.SIGKILL)                 # the worker process dies mid-run
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["caught", "caught"], summary["runs"]
    deadline = time.monotonic() + 10
    while _run_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _run_children(), "a run outlived its worker"


def test_a_worker_that_joins_later_gets_the_files_and_catches(tmp_path: Path) -> None:
    """A worker that joins after the campaign shipped fills its own cache when it joins
    (the campaign's worker plugin): the image the campaign sent, and a drive it never
    sent (every worker held it then) from the worker that holds it; its runs catch.

    Its own small cluster: one worker, kept busy by a task of the test's own, so the
    campaign's runs wait there; once the joiner has the files, that worker is retired
    and every run goes to the joiner."""
    first, late = tmp_path / "first-cache", tmp_path / "late-cache"
    image = shipped_copy(tmp_path)
    drive = image.parent / "disk.raw"
    drive.write_bytes(os.urandom(1 << 20))
    drive_sha = hashlib.sha256(drive.read_bytes()).hexdigest()
    held = first / "images" / drive_sha / "disk.raw"     # the first worker has it already
    held.parent.mkdir(parents=True)
    shutil.copy(drive, held)
    held.chmod(0o444)
    os.environ["PYTHONPATH"] = str(ROOT)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", host="127.0.0.1",
                                       env={"KSWGDB_CACHE_DIR": str(first)})
    client = distributed.Client(cluster.scheduler_address, timeout=30)
    release = distributed.Event(f"kswgdb-test-{os.getpid()}", client=client)
    joiner: subprocess.Popen | None = None
    busy = None
    try:
        address = cluster.scheduler_address
        [earlier] = client.scheduler_info()["workers"]
        busy = client.submit(release.wait, workers=[earlier], pure=False)
        proc = start(tmp_path, address, str(image), "--jobs", "2", "--runs", "2",
                     "--seed-start", "55000", "--drive", str(drive))
        assert proc.stderr is not None
        shipped = next((ln for ln in proc.stderr if "sent to the cluster" in ln), "")
        assert "image kswtest: 3 file(s) by sha256, 2 sent" in shipped, shipped  # not the drive
        shutil.rmtree(image.parent)           # nothing left to send from the campaign's host
        joiner = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", "late",
             "--nthreads", "2", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "KSWGDB_CACHE_DIR": str(late), "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 120
        while len(_cached(late)) < 3 and time.monotonic() < deadline:
            assert joiner.poll() is None and proc.poll() is None, "ended too soon"
            time.sleep(0.1)
        assert _cached(late) == _cached(first)       # filled when it joined, all of it
        client.retire_workers([earlier])           # the runs waiting there go to the joiner
        release.set()
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, err
        summary = json.loads((tmp_path / "c" / "summary.json").read_text())
        assert [r["status"] for r in summary["runs"]] == ["caught"] * 2, summary["runs"]
        for r in summary["runs"]:
            events = [json.loads(ln) for ln in Path(r["log"]).read_text().splitlines()]
            assert len([e for e in events if e["event"] == "hit"]) == r["hits"] > 0
            [begin] = [e for e in events if e["event"] == "start"]
            assert Path(begin["image"]).parent.parent == late / "images"   # on the joiner
            [attached] = begin["drives"]
            assert Path(attached["path"]) == late / "images" / drive_sha / "disk.raw"
        copy = late / "images" / drive_sha / "disk.raw"
        assert copy.stat().st_mode & 0o222 == 0
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == drive_sha
    finally:
        release.set()
        if busy is not None:
            busy.cancel()
        client.close()
        if joiner is not None:
            joiner.terminate()
            try:
                joiner.wait(timeout=30)
            except subprocess.TimeoutExpired:
                joiner.kill()
                joiner.wait()
        cluster.close()
    _assert_nothing_left(range(55000, 55010))


def _cached(cache: Path) -> list[str]:
    """The files in a worker's cache, by sha256 and name (dot-files are being written)."""
    return sorted(f"{p.parent.name}/{p.name}" for p in (cache / "images").glob("*/*")
                  if not p.name.startswith("."))
