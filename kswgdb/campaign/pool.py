"""Up to J runs at once, each in its own child process: `RunPool`.

Children come from a forkserver (a clean single-threaded process with kswgdb
already imported), so a run starts fast and never inherits the campaign's
threads (rich's live view) or locks. Every child is known by its process id:
the campaign interrupts (SIGINT: the run ends cleanly and reports what it
had) or kills (SIGKILL: a hung worker) exactly the runs it started.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from kswgdb.campaign.worker import RunJob, run_one

PRELOAD = ["kswgdb.campaign.worker"]


@dataclass
class Running:
    job: RunJob
    process: Any
    conn: Connection
    started: float = field(default_factory=time.monotonic)
    hits: list[str] = field(default_factory=list)      # signature keys seen live
    interrupted_at: float | None = None
    qemu_pid: int | None = None                         # the run's QEMU, once started
    hung: bool = False                                  # killed for passing its deadline


class RunPool:
    """Start runs, collect their messages, stop them; never leaves a child behind."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self.running: dict[int, Running] = {}       # by run index

    def start(self, job: RunJob) -> Running:
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=run_one, args=(job, child),
                                    name=f"kswgdb-campaign-run-{job.index}", daemon=True)
        process.start()
        child.close()
        entry = self.running[job.index] = Running(job, process, parent)
        return entry

    def poll(self, timeout: float) -> list[tuple[Running, str, Any]]:
        """Messages from the runs (``qemu``, ``hit``, ``outcome``; ``died`` with the exit code)."""
        if not self.running:
            time.sleep(timeout)
            return []
        conns = {r.conn: r for r in self.running.values()}
        sentinels = {r.process.sentinel: r for r in self.running.values()}
        ready = wait(list(conns) + list(sentinels), timeout)
        messages: list[tuple[Running, str, Any]] = []
        for item in ready:
            if item in conns:
                messages.extend(self._drain(conns[item]))
        for item in ready:
            run = sentinels.get(item)
            if run is not None and run.job.index in self.running:
                messages.extend(self._drain(run))   # a last message may trail the exit
                if run.job.index in self.running:
                    run.process.join()
                    self._forget(run)
                    messages.append((run, "died", run.process.exitcode))
        return messages

    def _drain(self, run: Running) -> list[tuple[Running, str, Any]]:
        out: list[tuple[Running, str, Any]] = []
        while run.job.index in self.running:
            try:
                if not run.conn.poll():
                    break
                kind, payload = run.conn.recv()
            except (EOFError, OSError):
                break
            if kind == "hit":
                run.hits.append(payload)
            elif kind == "qemu":
                run.qemu_pid = payload
            out.append((run, kind, payload))
            if kind == "outcome":
                run.process.join(10.0)
                self._forget(run)
        return out

    def _forget(self, run: Running) -> None:
        self.running.pop(run.job.index, None)
        run.conn.close()
        if run.process.is_alive():
            self._signal(run, signal.SIGKILL)
            run.process.join(5.0)

    def interrupt(self, run: Running) -> None:
        """Ask a run to end now (it writes its log's end and reports what it had)."""
        if run.interrupted_at is None:
            run.interrupted_at = time.monotonic()
            self._signal(run, signal.SIGINT)

    def kill(self, run: Running) -> None:
        """A run that does not answer: SIGKILL (its QEMU dies with it: PDEATHSIG)."""
        self._signal(run, signal.SIGKILL)

    @staticmethod
    def _signal(run: Running, signum: int) -> None:
        if run.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.process.pid, signum)

    def close(self, grace: float = 15.0) -> list[tuple[Running, str, Any]]:
        """Interrupt every run, wait ``grace`` seconds for their outcomes, kill the rest."""
        messages: list[tuple[Running, str, Any]] = []
        for run in list(self.running.values()):
            self.interrupt(run)
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            messages.extend(self.poll(0.2))
        for run in list(self.running.values()):
            self.kill(run)
        while self.running:
            messages.extend(self.poll(0.5))
        return messages
