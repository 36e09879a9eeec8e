"""Runs on a Dask cluster (``--cluster tcp://SCHEDULER:8786``): `ClusterPool`.

Why Dask: measured on this machine (README, "Campaigns on a cluster"), Dask's
``distributed`` installs in a fifth of Ray's size, starts a local cluster in a
quarter of its time with a quarter of its memory; its larger per-task latency
(~12 ms against ~2 ms) is nothing beside a run of seconds.

The image travels by content hash (`kswgdb.campaign.shipping`): shipped once
per campaign to the workers that lack it, cached on each by sha256; a worker
that joins later fills its cache when it joins (`kswgdb.campaign.joiner`, a Dask
worker plugin), from what was sent or from a worker that holds it. Each run is
one Dask task (`run_on_worker`): on the worker it materializes the image from
that cache, starts the run as a child process (`kswgdb.campaign.child`),
publishes each hit as it happens (a Dask structured event on the campaign's
topic, so ``--until-hits`` counts runs in flight), relays an interrupt from the
campaign (a Dask `Event`), and returns the outcome and the run's event log,
which the campaign writes into its own directory. The run's ``--module`` and
``--drive`` files travel with the image. A frozen run's vmcore stays on its
worker until the campaign fetches it, only for a signature that has none yet
(`kswgdb.campaign.cores`). A worker lost mid-run is retried elsewhere by the
scheduler (its ``allowed-failures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kswgdb.campaign import cores
from kswgdb.campaign.shipping import ImageParcel, ShipError, ship, worker_options
from kswgdb.campaign.worker import RunJob
from kswgdb.errors import BadInput
from kswgdb.exitcodes import ExitStatus

#: A run's temporary directory on a worker: PREFIX + the worker's pid + "-" + random.
RUN_DIR_PREFIX = "kswgdb-cluster-run-"
#: How often a worker looks for the campaign's stop event.
STOP_POLL = 0.5
#: Seconds a run may take to end after its interrupt before the worker kills it
#: (before the campaign gives it up, 20 s, so the outcome still comes back).
KILL_AFTER = 15.0
#: How long the campaign waits for a scheduler to answer (``--cluster-timeout``).
CONNECT_TIMEOUT = 5.0


def run_on_worker(job: RunJob, parcel: ImageParcel, stop_events: list[str],
                  topic: str | None = None) -> dict:
    """The Dask task: one run on this worker; the outcome dict plus ``log_text``."""
    from distributed import Event

    stop = _AnyEvent([Event(name) for name in stop_events])
    if stop.is_set():                  # queued behind other runs while the campaign ended
        return {**_failed(job, "stopped before it started"), "status": "stopped",
                "exit_status": int(ExitStatus.INTERRUPTED)}
    try:
        options = worker_options(parcel, job.options)
    except (ShipError, OSError) as exc:
        return _failed(job, f"the image on the worker: {exc}")
    sweep_lost_runs()
    publisher = _HitPublisher(topic, job.index)
    with tempfile.TemporaryDirectory(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-") as tmp:
        local = replace(job, log_path=Path(tmp) / "events.jsonl", options=options)
        outcome = _run_child(local, stop, publisher)
        outcome["log_text"] = _read(local.log_path)
        outcome["worker"] = os.uname().nodename
        if outcome.get("vmcore") and publisher.worker is not None:
            try:
                outcome["vmcore_remote"] = cores.keep(
                    Path(outcome["vmcore"]), Path(tempfile.mkdtemp(
                        prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-{core_tag(topic)}")),
                    publisher.worker.address)
            except OSError as exc:                # a full disk: the run stands, its dump not
                outcome["vmcore"], outcome["vmcore_lost"] = None, f"kept on the worker: {exc}"
        return outcome


def core_tag(topic: str | None) -> str:
    """The name part of a campaign's vmcores kept on a worker (its hit topic's random part)."""
    return f"core-{(topic or 'none').rsplit('-', 1)[-1]}-"


def drop_kept_cores(tag: str) -> None:
    """On a worker: delete the vmcores a campaign left there (runs it never collected)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-{tag}*"):
        cores.drop(str(path))


def _failed(job: RunJob, reason: str) -> dict:
    import dataclasses

    from kswgdb.campaign.worker import RunOutcome

    return {**dataclasses.asdict(RunOutcome(job.index, job.seed, "failed", 3, reason=reason)),
            "log_text": ""}


class _HitPublisher:
    """A run's hits, as they come, to the campaign: Dask structured events on its topic.

    ``attempt`` tells a retried run's hits (on another worker) from those of the
    attempt that was lost: the campaign counts only the latest attempt's.
    """

    def __init__(self, topic: str | None, index: int) -> None:
        self.topic, self.index, self.attempt = topic, index, uuid.uuid4().hex
        self.worker = None
        if topic is not None:
            from distributed import get_worker

            with contextlib.suppress(ValueError):   # not in a worker (a unit test)
                self.worker = get_worker()

    def hit(self, key: str) -> None:
        if self.worker is not None:
            self.worker.log_event(self.topic, {"run": self.index, "attempt": self.attempt,
                                               "key": key})


class _AnyEvent:
    """Set when any of the events is: the campaign's (stop all) or this run's."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def _run_child(job: RunJob, stop: Any, hits: _HitPublisher) -> dict:
    rfd, wfd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "kswgdb.campaign.child", str(wfd)],
                            stdin=subprocess.PIPE, pass_fds=(wfd,))
    os.close(wfd)
    conn = Connection(rfd, writable=False)
    try:
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(job))
        proc.stdin.close()
        interrupted: float | None = None
        next_look = time.monotonic() + STOP_POLL
        while True:
            if conn.poll(STOP_POLL):
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    break
                if kind == "outcome":
                    return payload
                if kind == "hit":
                    hits.hit(payload)
            # Looked at on time even while hits stream in (a storm never starves a stop).
            now = time.monotonic()
            if interrupted is None and now >= next_look:
                next_look = now + STOP_POLL
                if stop.is_set():
                    interrupted = now
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGINT)
            elif interrupted is not None and now - interrupted > KILL_AFTER:
                proc.kill()                 # deaf to the interrupt: its QEMU dies with it
            if proc.poll() is not None and not conn.poll(0):
                break
        code = proc.wait()
        outcome = _failed(job, f"the run's process on the worker died (exit status {code})")
        outcome.pop("log_text")
        return outcome
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
    hits: list[str] = field(default_factory=list)     # signature keys seen live
    attempt: str | None = None                        # the task attempt they came from
    qemu_pid: int | None = None
    interrupted_at: float | None = None
    hung: bool = False


class ClusterPool:
    """`RunPool`'s interface over a Dask scheduler."""

    def __init__(self, address: str, parcel: ImageParcel,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect (`BadInput` within ``connect_timeout`` if nothing answers) and ship the image."""
        self.client = connect(address, connect_timeout)
        from distributed import Event

        self.parcel = parcel
        try:
            self.shipment = ship(self.client, parcel)
            from kswgdb.campaign import joiner

            self.cache_fill = joiner.register(self.client, parcel)   # workers now and later
        except BaseException:
            self.client.close()
            raise
        self.stop_name = f"kswgdb-campaign-stop-{uuid.uuid4().hex}"
        self.topic = f"kswgdb-campaign-hits-{uuid.uuid4().hex}"
        self.stop = Event(self.stop_name, client=self.client)
        self.running: dict[int, _Remote] = {}
        self._vmcores: set[str] = set()     # signature keys whose vmcore was brought back
        self._hits: deque[dict] = deque()
        self.client.subscribe_topic(self.topic, lambda event: self._hits.append(event[1]))

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def start(self, job: RunJob) -> _Remote:
        stops = [self.stop_name, f"{self.stop_name}-{job.index}"]
        future = self.client.submit(run_on_worker, job, self.parcel, stops, self.topic,
                                    pure=False, key=f"kswgdb-run-{job.index}-{uuid.uuid4().hex}")
        run = self.running[job.index] = _Remote(job, future)
        return run

    def poll(self, timeout: float) -> list[tuple[Any, str, Any]]:
        """Hits published by runs in flight, then the outcomes of the runs that ended."""
        time.sleep(timeout)
        messages: list[tuple[Any, str, Any]] = self._live_hits()
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
            remote = outcome.pop("vmcore_remote", None)
            if remote is not None:
                log_text = self._bring_vmcore(run, outcome, remote, log_text)
            with open(run.job.log_path, "w", encoding="utf-8") as fh:
                fh.write(log_text)
            outcome["log"] = str(run.job.log_path)
            messages.append((run, "outcome", outcome))
        return messages

    def _bring_vmcore(self, run: _Remote, outcome: dict, remote: dict, log_text: str) -> str:
        """The run's vmcore into its directory if its signature has none yet (the log's
        path rewritten to where it is); else left on the worker, which deletes it."""
        worker_path = outcome["vmcore"]
        local = run.job.log_path.parent / Path(worker_path).name
        first = next(iter(outcome.get("signatures", {})), None)
        try:
            if first is None or first not in self._vmcores:
                try:
                    local = cores.fetch(self.client, remote, run.job.log_path.parent)
                    self._vmcores.update(outcome.get("signatures", {}))
                except cores.CoreError as exc:
                    outcome["vmcore"], outcome["vmcore_lost"] = None, str(exc)
                    return log_text
            # Not fetched: the tally marks it dropped, as a local campaign deletes it.
            outcome["vmcore"] = str(local)
            return log_text.replace(json.dumps(worker_path)[1:-1], json.dumps(str(local))[1:-1])
        finally:
            with contextlib.suppress(Exception):    # a worker gone took the copy with it
                self.client.run(cores.drop, remote["dir"], workers=[remote["worker"]])

    def _live_hits(self) -> list[tuple[Any, str, Any]]:
        messages: list[tuple[Any, str, Any]] = []
        while self._hits:
            hit = self._hits.popleft()
            run = self.running.get(hit.get("run"))
            if run is None:
                continue                        # its outcome is in: counted from there
            if run.attempt != hit.get("attempt"):
                run.attempt, run.hits = hit.get("attempt"), []
            run.hits.append(hit["key"])
            messages.append((run, "hit", hit["key"]))
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
        with contextlib.suppress(Exception):    # a worker gone took its copies with it
            self.client.run(drop_kept_cores, core_tag(self.topic))
        with contextlib.suppress(ValueError):
            self.client.unsubscribe_topic(self.topic)
        with contextlib.suppress(Exception):    # the scheduler may be gone already
            from kswgdb.campaign import joiner

            joiner.unregister(self.client, self.cache_fill)
        self.shipment.release()
        self.client.close()
        return messages


def connect(address: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A Dask client of the scheduler at ``address``, with at least one worker; else `BadInput`.

    Every step is bounded by ``timeout``: Dask's own client waits forever for a
    peer that accepts the connection and never answers.
    """
    try:
        from distributed import Client
    except ImportError:
        raise BadInput("--cluster needs Dask's distributed package "
                       "(pip install 'kswgdb[cluster]')") from None
    refused = _refused(address, timeout)
    if refused is not None:
        raise BadInput(f"--cluster {address}: no Dask scheduler there ({refused})")
    try:
        identity = asyncio.run(asyncio.wait_for(_identity(address, timeout), timeout))
    except ValueError as exc:
        raise BadInput(f"--cluster {address}: not a Dask scheduler address "
                       f"({' '.join(str(exc).split())})") from None
    except (OSError, TimeoutError) as exc:
        why = " ".join(str(exc).split()) or "no answer"
        raise BadInput(f"--cluster {address}: no Dask scheduler answered within "
                       f"{timeout:g} s ({why})") from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise BadInput(f"--cluster {address}: something answers there, not a Dask scheduler")
    if not identity.get("workers"):
        raise BadInput(f"--cluster {address}: the scheduler has no workers "
                       f"(start some: dask worker {address})")
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise BadInput(f"--cluster {address}: {' '.join(str(exc).split())}") from None


async def _identity(address: str, timeout: float) -> Any:
    """The peer's answer to Dask's ``identity`` request (a scheduler says who it is)."""
    from distributed.comm import connect as dask_connect

    comm = await dask_connect(address, timeout=timeout)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def _refused(address: str, timeout: float) -> str | None:
    """Why nothing can listen at a TCP ``address`` (refused, no such host), found at once.

    Dask's own connect retries a refused connection until its timeout (a
    scheduler may be starting); a campaign asked for a scheduler that is up.
    """
    import socket

    from distributed.comm.addressing import get_address_host_port

    try:
        if not address.startswith(("tcp://", "tls://")) and "://" in address:
            return None                     # another transport: Dask's connect decides
        host, port = get_address_host_port(address)
    except (ValueError, TypeError) as exc:
        return f"not a scheduler address: {exc}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"nothing listens on {host}:{port}"
    except socket.gaierror as exc:
        return f"no such host {host!r}: {exc.strerror or exc}"
    except OSError:
        return None                         # unreachable or slow: Dask's timeout says so
