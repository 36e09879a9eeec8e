"""`kswgdb campaign --cluster` on a real local Dask cluster (two worker processes).

The cluster is Dask's own `LocalCluster` (a scheduler and two nanny-managed worker
processes on 127.0.0.1), not a mock: the campaign connects by address, each run
is a task that checks the image by sha256 and runs the guest on a worker, and the
outcomes and event logs come back into the campaign directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers.cli_run import ROOT
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
def scheduler() -> Iterator[str]:
    os.environ["PYTHONPATH"] = str(ROOT)      # the workers' runs import this tree
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def campaign(tmp_path: Path, address: str, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "kswgdb", "campaign", "--scenario", "4", "--watch", WATCH,
            "--accel", "tcg", "--backtrace", "fp", "--cluster", address,
            "--dir", str(tmp_path / "c"), *args]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_small_campaign_runs_on_the_cluster(tmp_path: Path, scheduler: str) -> None:
    done = campaign(tmp_path, scheduler, "--jobs", "2", "--runs", "3", "--seed-start", "51000")
    assert done.returncode == 1, done.stderr
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["caught"] * 3
    assert all(r.get("worker") for r in summary["runs"])       # ran as cluster tasks
    [sig] = summary["signatures"]
    assert sig["writer"].startswith("s3_corrupt_write+0x") and sig["target"] == "canary"
    for r in summary["runs"]:
        assert r["log"].startswith(str(tmp_path / "c" / "runs"))
        events = [json.loads(ln) for ln in Path(r["log"]).read_text().splitlines()]
        assert events[-1]["event"] == "end"
        assert len([e for e in events if e["event"] == "hit"]) == r["hits"] > 0


def _run_children() -> list[tuple[int, int]]:
    """(pid, parent pid) of every ``kswgdb.campaign.child`` process (a run on a worker)."""
    return [(pid, ppid) for pid, ppid, argv in processes()
            if b"kswgdb.campaign.child" in argv]


def test_a_worker_lost_mid_run_is_retried_elsewhere(tmp_path: Path, scheduler: str) -> None:
    import signal
    import time

    argv = [sys.executable, "-m", "kswgdb", "campaign", "--scenario", "4", "--watch", WATCH,
            "--accel", "tcg", "--backtrace", "fp", "--cluster", scheduler, "--jobs", "1",
            "--runs", "2", "--seed-start", "53000", "--cmdline", "runs=30",
            "--dir", str(tmp_path / "c")]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
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
