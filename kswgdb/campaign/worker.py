"""One run of a campaign, in its own child process: `run_one`.

The child is its own process group (a Ctrl-C at the terminal reaches only the
campaign, which then stops every run in order) and dies with its parent
(``PR_SET_PDEATHSIG``); its QEMU dies with it (`kswgdb.qemu.reaper`). A run is
a plain `WatchSession` on the campaign's template with this run's seed and
event log: the same prepare, the same Rig, the same exit status as ``kswgdb
run``. What comes back through the pipe is plain data (`RunOutcome` as a dict):
live ``("hit", signature-key)`` messages, then one ``("outcome", dict)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kswgdb.campaign import signature
from kswgdb.errors import KswError
from kswgdb.exitcodes import ExitStatus, status_of_run, unexpected
from kswgdb.poll.poller import PollHit
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.run.rig import Sink
from kswgdb.watch.hits import Hit

PR_SET_PDEATHSIG = 1


@dataclass
class RunJob:
    """What a child needs to do one run (picklable)."""

    index: int
    seed: int
    options: RunOptions
    log_path: Path
    qemu: str | None = None          # --qemu (process-global in the parent: given again)


@dataclass
class RunOutcome:
    """How one run ended, as the campaign records it (`to_json` is the summary's run entry)."""

    index: int
    seed: int
    status: str                      # caught | clean | unarmed | fault | stopped | failed
    exit_status: int
    reason: str | None = None        # why it failed or stopped (one line)
    seconds: float = 0.0
    log: str = ""
    calls: int = 0                   # watched-function calls seen
    armed: int = 0                   # of them armed
    hits: int = 0
    poll_hits: int = 0
    signatures: dict[str, int] = field(default_factory=dict)      # key -> hits in this run
    examples: dict[str, dict] = field(default_factory=dict)       # key -> first hit + panel
    vmcore: str | None = None
    verdict: str | None = None
    pid: int | None = None           # the worker process
    qemu_pid: int | None = None      # its guest's QEMU (gone when the outcome is sent)
    qemu: str | None = None          # that QEMU's version line (a cluster worker's own QEMU)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("examples")
        return data


class _PipeSink(Sink):
    """A run's hits, as they come, to the campaign (for its live counts)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.session: WatchSession | None = None
        self.qemu_pid: int | None = None

    def status(self, text: str) -> None:
        """The first status after QEMU started: say its pid (tests, the record)."""
        rig = self.session.rig if self.session is not None else None
        if self.qemu_pid is None and rig is not None and rig.machine is not None:
            self.qemu_pid = rig.machine.pid
            if self.qemu_pid is not None:
                self._send(("qemu", self.qemu_pid))

    def _send(self, message: tuple) -> None:
        # OSError: the campaign is gone; the run still ends its log.
        with self._lock, contextlib.suppress(OSError):
            self._conn.send(message)

    def hit(self, hit: Hit) -> None:
        self._send(("hit", signature.of_hit(hit.to_json()).key))

    def poll_hit(self, hit: PollHit) -> None:
        self._send(("hit", signature.of_poll_hit(dataclasses.asdict(hit)).key))


def run_one(job: RunJob, conn: Any) -> None:
    """The child's whole life: one run, one outcome sent, nothing left running."""
    _detach()
    if job.qemu:
        from kswgdb.qemu import binary

        binary.choose(job.qemu)
    outcome = RunOutcome(index=job.index, seed=job.seed, status="failed",
                         exit_status=int(ExitStatus.INFRA), log=str(job.log_path),
                         pid=os.getpid())
    options = dataclasses.replace(job.options, seed=job.seed, log_path=job.log_path)
    sink = _PipeSink(conn)
    session = sink.session = WatchSession(options, sink=sink)
    try:
        _fill(outcome, session.run(), options)
    except (KeyboardInterrupt, SystemExit) as exc:
        report = session.report_so_far()
        if report is not None:
            _fill(outcome, report, options)
        outcome.status, outcome.reason = "stopped", _stopped_by(exc)
        outcome.exit_status = int(ExitStatus.INTERRUPTED)
    except KswError as exc:
        outcome.reason = " ".join(str(exc).split()) or type(exc).__name__
        outcome.exit_status = exc.exit_code
        report = session.report_so_far()
        if report is not None:
            _fill(outcome, report, options, keep_status=True)
    except Exception as exc:  # noqa: BLE001 - one line, the traceback in a debug log
        outcome.reason = unexpected(exc)
    outcome.qemu_pid = sink.qemu_pid
    outcome.qemu = _qemu_banner()
    try:
        conn.send(("outcome", dataclasses.asdict(outcome)))
    finally:
        conn.close()


def _qemu_banner() -> str | None:
    """The version line of the QEMU this run used (detected once, cached), if it had one."""
    from kswgdb.qemu import binary

    try:
        return binary.selected().banner
    except KswError:
        return None


def _detach() -> None:
    """Own process group, default SIGINT, die with the parent; the reaper installed."""
    from kswgdb.qemu import reaper

    os.setpgrp()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    reaper.install()


def _stopped_by(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by the campaign (interrupted)"
    return f"stopped by the campaign (exit status {exc.code})"


def _fill(outcome: RunOutcome, report: RunReport, options: RunOptions,
          keep_status: bool = False) -> None:
    """What the report says, into the outcome; the status is `kswgdb run`'s."""
    outcome.seconds = round(report.seconds, 3)
    outcome.calls = sum(int(w.get("calls", 0)) for w in report.summary)
    outcome.armed = sum(int(w.get("armed", 0)) for w in report.summary)
    outcome.hits = max(report.hit_count, len(report.hits))
    outcome.vmcore = str(report.vmcore) if report.vmcore is not None else None
    outcome.verdict = report.verdict
    outcome.poll_hits = len(report.poll_hits)
    kept = [(signature.of_hit(h.to_json()), h) for h in report.hits]
    kept += [(signature.of_poll_hit(dataclasses.asdict(p)), p) for p in report.poll_hits]
    for sig, hit in kept:
        if sig.key not in outcome.examples:
            outcome.examples[sig.key] = _example(sig, hit)
    # Counted from the event log, which has every hit (the report keeps the latest).
    outcome.signatures = logged_signatures(Path(outcome.log)) or {
        sig.key: sum(1 for s, _h in kept if s == sig) for sig, _h in kept}
    for key in outcome.signatures:
        outcome.examples.setdefault(key, _logged_example(Path(outcome.log), key))
    if keep_status:
        outcome.status = "fault"
        return
    status = status_of_run(outcome.hits + outcome.poll_hits, report.fault,
                           unarmed=bool(report.unarmed) and not options.allow_unarmed)
    outcome.exit_status = int(status)
    outcome.status = {ExitStatus.HIT: "caught", ExitStatus.OK: "clean",
                      ExitStatus.UNARMED: "unarmed"}.get(status, "fault")
    outcome.reason = report.fault or ("; ".join(report.unarmed) or None)


def logged_signatures(log: Path) -> dict[str, int]:
    """Every hit's signature in a run's event log, counted."""
    counts: dict[str, int] = {}
    for event in _events(log):
        kind = event.get("event")
        if kind in ("hit", "poll-hit"):
            sig = signature.of_hit(event) if kind == "hit" else signature.of_poll_hit(event)
            counts[sig.key] = counts.get(sig.key, 0) + 1
    return counts


def _logged_example(log: Path, key: str) -> dict:
    """A signature whose hits were no longer kept in memory: its first logged hit."""
    for event in _events(log):
        if event.get("event") == "hit" and signature.of_hit(event).key == key:
            return {"signature": signature.of_hit(event).to_json(), "hit": event,
                    "panel": f"(panel not kept: hit #{event.get('seq')} in {log})\n"}
        if event.get("event") == "poll-hit" and signature.of_poll_hit(event).key == key:
            return {"signature": signature.of_poll_hit(event).to_json(), "hit": event,
                    "panel": f"(panel not kept: poll hit in {log})\n"}
    return {"signature": {"key": key}, "hit": {}, "panel": ""}


def _events(log: Path) -> list[dict]:
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def _example(sig: signature.Signature, hit: Hit | PollHit) -> dict:
    """The first hit of a signature: its event-log JSON and its panel as text."""
    from kswgdb.campaign.panel import panel_text

    data = hit.to_json() if isinstance(hit, Hit) else dataclasses.asdict(hit)
    return {"signature": sig.to_json(), "hit": data, "panel": panel_text(hit)}
