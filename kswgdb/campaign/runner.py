"""The campaign loop: `Campaign.run` keeps J runs going until a stop condition.

Stops: ``--runs N`` launched and finished, ``--until-hits K`` hits seen (live,
from the runs' pipes), ``--budget`` elapsed, or Ctrl-C / SIGTERM. On every stop
the runs still going are interrupted (they end cleanly and report what they
had), a worker that does not answer is killed, and the summary is written.
A run whose worker dies, or that has no result long after its own
``--timeout``, is recorded with that reason and the campaign goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from kswgdb.campaign.directory import CampaignDir
from kswgdb.campaign.options import CampaignOptions
from kswgdb.campaign.pool import Running, RunPool
from kswgdb.campaign.replay import replay_line
from kswgdb.campaign.summary import summary_json, summary_text
from kswgdb.campaign.tally import Tally
from kswgdb.campaign.worker import RunJob, RunOutcome
from kswgdb.exitcodes import ExitStatus

POLL_SECONDS = 0.25


class Campaign:
    """One campaign: options checked, directory made (`kswgdb.campaign.command` does both)."""

    def __init__(self, opts: CampaignOptions, directory: CampaignDir,
                 on_progress: Callable[[Campaign], None] | None = None,
                 on_run_end: Callable[[dict], None] | None = None,
                 pool: RunPool | None = None) -> None:
        """``pool``: where runs run (tests give a fake one)."""
        self.opts = opts
        self.dir = directory
        self.tally = Tally()
        self.pool = pool or RunPool()
        self.on_progress = on_progress or (lambda _c: None)
        self.on_run_end = on_run_end or (lambda _o: None)
        self.launched = 0
        self.ending = "running"
        self.started_wall = time.time()
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------ loop
    def run(self) -> int:
        """Run to a stop; the summary is written however it ends (Ctrl-C included)."""
        interrupted = False
        try:
            self._loop()
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted = True
            if isinstance(exc, KeyboardInterrupt):
                self.ending, signalled = "interrupted (SIGINT)", int(ExitStatus.INTERRUPTED)
            else:
                self.ending = f"terminated (exit status {exc.code})"
                signalled = exc.code if isinstance(exc.code, int) else int(ExitStatus.INFRA)
            self._absorb(self.pool.close())
            self.write_summary(signalled)
            raise
        except Exception as exc:
            # Not a run's failure (those are recorded) but the campaign's own: every
            # guest is stopped and what was found so far is still written, then it goes up.
            interrupted = True
            self.ending = f"failed: {' '.join(str(exc).split()) or type(exc).__name__}"
            self._absorb(self.pool.close())
            self.write_summary(int(ExitStatus.INFRA))
            raise
        finally:
            if not interrupted:
                self._absorb(self.pool.close())
        return self.write_summary()

    def _loop(self) -> None:
        while True:
            reason = self.stop_reason()
            if reason is not None:
                self.ending = reason
                return
            while len(self.pool.running) < self.opts.jobs and self._may_launch():
                self._launch()
            self._absorb(self.pool.poll(POLL_SECONDS))
            self._kill_hung()
            self.on_progress(self)

    def stop_reason(self) -> str | None:
        opts, tally = self.opts, self.tally
        if opts.until_hits is not None and self.hits_seen >= opts.until_hits:
            return f"--until-hits {opts.until_hits} reached"
        if opts.budget is not None and tally.elapsed >= opts.budget:
            return f"--budget {opts.budget:g}s spent"
        limit = opts.run_limit
        if limit is not None and tally.done >= limit and not self.pool.running:
            return f"{limit} runs done"
        return None

    def _may_launch(self) -> bool:
        limit = self.opts.run_limit
        return limit is None or self.launched < limit

    def _launch(self) -> None:
        index = self.launched + 1
        seed = self.opts.seed_start + self.launched
        log = self.dir.log_path(index)
        self.dir.add_replay(index, seed, replay_line(self.opts.run, seed, qemu=self.opts.qemu))
        self.pool.start(RunJob(index=index, seed=seed, options=self.opts.run, log_path=log,
                              qemu=self.opts.qemu))
        self.launched += 1

    def _kill_hung(self) -> None:
        now = time.monotonic()
        for run in list(self.pool.running.values()):
            if now - run.started > self.opts.hard_deadline:
                self.pool.interrupt(run)
                run.hung = True
            if run.interrupted_at is not None and now - run.interrupted_at > 20.0:
                self.pool.kill(run)

    # --------------------------------------------------------- results
    @property
    def hits_seen(self) -> int:
        """Hits of finished runs plus those seen live from the running ones."""
        return self.tally.hits + sum(len(r.hits) for r in self.pool.running.values())

    def _absorb(self, messages: list[tuple[Running, str, Any]]) -> None:
        for run, kind, payload in messages:
            if kind == "outcome":
                self._record(run, payload)
            elif kind == "died":
                self._record(run, self._lost(run, payload))

    def _lost(self, run: Running, exitcode: int | str | None) -> dict:
        """A run without an outcome: its process died (exit code) or its task failed (text)."""
        how = (f"killed by signal {-exitcode}" if isinstance(exitcode, int) and exitcode < 0
               else f"exit code {exitcode}")
        why = (f"hung: no result {self.opts.hard_deadline:g}s after start" if run.hung
               else exitcode if isinstance(exitcode, str)
               else f"the run's worker process died ({how})")
        outcome = RunOutcome(index=run.job.index, seed=run.job.seed, status="failed",
                             exit_status=int(ExitStatus.INFRA), reason=why,
                             seconds=round(time.monotonic() - run.started, 3),
                             log=str(run.job.log_path),
                             pid=run.process.pid if run.process is not None else None)
        return dataclasses.asdict(outcome)

    def _record(self, run: Running, outcome: dict) -> None:
        if run.hung and outcome["status"] == "stopped":
            outcome["status"] = "failed"
            outcome["reason"] = f"hung: no result {self.opts.hard_deadline:g}s after start"
        elif outcome["status"] == "stopped" and self.ending != "running":
            outcome["reason"] = f"stopped: {self.ending}"
        self.tally.add(outcome)
        self.on_run_end(outcome)

    def write_summary(self, signalled: int | None = None) -> int:
        """Write summary.json/.txt (again: each call has the latest); the exit status."""
        status = self.tally.status(watches=bool(self.opts.run.watches), signalled=signalled)
        self.summary = summary_json(self.opts, self.tally, self.ending, int(status),
                                    self.started_wall)
        self.dir.write_summary(self.summary, summary_text(self.summary))
        return status
