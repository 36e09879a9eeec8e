"""Runs on a Dask cluster (``--cluster tcp://SCHEDULER:8786``): `ClusterPool`.

Why Dask: measured on this machine (README, "Campaigns on a cluster"), Dask's
``distributed`` installs in a fifth of Ray's size, starts a local cluster in a
quarter of its time with a quarter of its memory; its larger per-task latency
(~12 ms against ~2 ms) is nothing beside a run of seconds.

Each run is one Dask task (`run_on_worker`): on the worker it checks the image
by content hash (the same files at the same paths: a shared or identically
installed tree; a mismatch is that run's failure, never a wrong answer), starts
the run as a child process (`kswgdb.campaign.child`), relays an interrupt from
the campaign (a Dask `Event`), and returns the outcome and the run's event log,
which the campaign writes into its own directory. A worker lost mid-run is
retried elsewhere by the scheduler (its ``allowed-failures``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kswgdb.campaign.worker import RunJob
from kswgdb.errors import BadInput

#: A run's temporary directory on a worker: PREFIX + the worker's pid + "-" + random.
RUN_DIR_PREFIX = "kswgdb-cluster-run-"
#: How often a worker looks for the campaign's stop event.
STOP_POLL = 0.5


def image_digests(paths: list[Path]) -> dict[str, str]:
    """sha256 of each image file (kernel, symbols, initrd, description)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def check_digests(digests: dict[str, str]) -> str | None:
    """On the worker: why its image differs from the campaign's, or None."""
    for path, digest in digests.items():
        try:
            found = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            return f"the worker has no {path} ({exc.strerror or exc})"
        if found != digest:
            return f"the worker's {path} differs (sha256 {found[:12]}, not {digest[:12]})"
    return None


def run_on_worker(job: RunJob, digests: dict[str, str], stop_events: list[str]) -> dict:
    """The Dask task: one run on this worker; the outcome dict plus ``log_text``."""
    from distributed import Event

    from kswgdb.campaign.worker import RunOutcome

    problem = check_digests(digests)
    if problem is not None:
        import dataclasses

        return {**dataclasses.asdict(RunOutcome(job.index, job.seed, "failed", 3,
                                                reason=problem)), "log_text": ""}
    stop = _AnyEvent([Event(name) for name in stop_events])
    sweep_lost_runs()
    with tempfile.TemporaryDirectory(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-") as tmp:
        local = replace(job, log_path=Path(tmp) / "events.jsonl")
        outcome = _run_child(local, stop)
        outcome["log_text"] = _read(local.log_path)
        outcome["worker"] = os.uname().nodename
        return outcome


class _AnyEvent:
    """Set when any of the events is: the campaign's (stop all) or this run's."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def _run_child(job: RunJob, stop: Any) -> dict:
    rfd, wfd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "kswgdb.campaign.child", str(wfd)],
                            stdin=subprocess.PIPE, pass_fds=(wfd,))
    os.close(wfd)
    conn = Connection(rfd, writable=False)
    try:
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(job))
        proc.stdin.close()
        interrupted = False
        while True:
            if conn.poll(STOP_POLL):
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    break
                if kind == "outcome":
                    return payload
            elif not interrupted and stop.is_set():
                interrupted = True
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
            if proc.poll() is not None and not conn.poll(0):
                break
        code = proc.wait()
        import dataclasses

        from kswgdb.campaign.worker import RunOutcome

        return dataclasses.asdict(RunOutcome(
            job.index, job.seed, "failed", 3,
            reason=f"the run's process on the worker died (exit status {code})"))
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sweep_lost_runs() -> None:
    """Remove the run directories of worker processes that died mid-run (SIGKILL)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = path.name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


@dataclass
class _Remote:
    """A run in flight on the cluster (the `pool.Running` shape the campaign reads)."""

    job: RunJob
    future: Any
    process: Any = None
    started: float = field(default_factory=time.monotonic)
    hits: list[str] = field(default_factory=list)
    qemu_pid: int | None = None
    interrupted_at: float | None = None
    hung: bool = False


class ClusterPool:
    """`RunPool`'s interface over a Dask scheduler."""

    def __init__(self, address: str, digests: dict[str, str]) -> None:
        try:
            from distributed import Client, Event
        except ImportError:
            raise BadInput("--cluster needs Dask's distributed package "
                           "(pip install 'kswgdb[cluster]')") from None
        try:
            self.client = Client(address, timeout=20)
        except (OSError, TimeoutError) as exc:
            raise BadInput(f"--cluster {address}: no Dask scheduler there ({exc})") from None
        self.digests = digests
        self.stop_name = f"kswgdb-campaign-stop-{uuid.uuid4().hex}"
        self.stop = Event(self.stop_name, client=self.client)
        self.running: dict[int, _Remote] = {}

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def start(self, job: RunJob) -> _Remote:
        stops = [self.stop_name, f"{self.stop_name}-{job.index}"]
        future = self.client.submit(run_on_worker, job, self.digests, stops,
                                    pure=False, key=f"kswgdb-run-{job.index}-{uuid.uuid4().hex}")
        run = self.running[job.index] = _Remote(job, future)
        return run

    def poll(self, timeout: float) -> list[tuple[Any, str, Any]]:
        time.sleep(timeout)
        messages: list[tuple[Any, str, Any]] = []
        for run in list(self.running.values()):
            if not run.future.done():
                continue
            self.running.pop(run.job.index)
            try:
                outcome = run.future.result()
            except Exception as exc:  # noqa: BLE001 - the task failed: recorded, not raised
                messages.append((run, "died", f"the cluster task failed: {exc}"))
                continue
            log_text = outcome.pop("log_text", "")
            with open(run.job.log_path, "w", encoding="utf-8") as fh:
                fh.write(log_text)
            outcome["log"] = str(run.job.log_path)
            messages.append((run, "outcome", outcome))
        return messages

    def interrupt(self, run: Any) -> None:
        from distributed import Event

        if run.interrupted_at is None:
            run.interrupted_at = time.monotonic()
            Event(f"{self.stop_name}-{run.job.index}", client=self.client).set()

    def kill(self, run: Any) -> None:
        run.future.cancel()

    def close(self, grace: float = 30.0) -> list[tuple[Any, str, Any]]:
        messages: list[tuple[Any, str, Any]] = []
        if self.running:
            self.stop.set()
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            messages.extend(self.poll(0.2))
        for run in list(self.running.values()):
            run.future.cancel()
            self.running.pop(run.job.index)
            messages.append((run, "died", "cancelled: no answer from the cluster"))
        self.client.close()
        return messages
