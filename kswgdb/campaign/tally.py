"""A campaign's counts and its deduplicated findings: `Tally`.

Every run's outcome is folded in as it comes; each signature is kept once, with
its hit count, the runs and seeds it appeared in, and its first example (the
hit's event-log JSON and its panel). With ``--on-hit freeze`` the first vmcore
of a signature is kept and a later run's vmcore of the same signature deleted
(`dedup_vmcore`): one vmcore per signature.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kswgdb.exitcodes import ExitStatus

#: The file a Linux dump may have beside it (`kswgdb.run.vmcore`): deleted with it.
VMCOREINFO_SUFFIX = ".vmcoreinfo"
#: The run statuses that count as failures in the progress view.
FAILED = ("fault", "failed")


@dataclass
class Finding:
    """One signature: everything the campaign knows about it."""

    key: str
    example: dict                     # {"signature", "hit", "panel", "run", "seed"}
    count: int = 0
    runs: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    vmcore: str | None = None

    def to_json(self) -> dict[str, Any]:
        sig = dict(self.example["signature"])
        return {**sig, "count": self.count, "runs": self.runs, "seeds": self.seeds,
                "first": {"run": self.example["run"], "seed": self.example["seed"],
                          "hit": self.example["hit"], "panel": self.example["panel"]},
                "vmcore": self.vmcore}


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    outcomes: list[dict] = field(default_factory=list)       # RunOutcome dicts, in end order
    findings: dict[str, Finding] = field(default_factory=dict)
    live_hits: int = 0                # hits seen live from runs still going
    running: int = 0

    def add(self, outcome: dict) -> None:
        self.outcomes.append(outcome)
        for key, count in outcome.get("signatures", {}).items():
            finding = self.findings.get(key)
            if finding is None:
                example = {**outcome["examples"][key], "run": outcome["index"],
                           "seed": outcome["seed"]}
                finding = self.findings[key] = Finding(key, example)
            finding.count += count
            finding.runs.append(outcome["index"])
            finding.seeds.append(outcome["seed"])
            self.dedup_vmcore(finding, outcome)

    @staticmethod
    def dedup_vmcore(finding: Finding, outcome: dict) -> None:
        core = outcome.get("vmcore")
        if not core:
            return
        if finding.vmcore is None:
            finding.vmcore = core
        elif core != finding.vmcore and _only_signature(outcome, finding.key):
            for path in (Path(core), Path(core + VMCOREINFO_SUFFIX)):   # and its companion
                with contextlib.suppress(OSError):
                    path.unlink()        # the same bug's first vmcore is kept
            outcome["vmcore_dropped"] = f"same signature as run {finding.runs[0]}"

    # ----------------------------------------------------------- counts
    def count(self, *statuses: str) -> int:
        return sum(1 for o in self.outcomes if o["status"] in statuses)

    @property
    def done(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> int:
        return self.count(*FAILED)

    @property
    def hits(self) -> int:
        return sum(o["hits"] + o["poll_hits"] for o in self.outcomes)

    @property
    def armed(self) -> int:
        return sum(o["armed"] for o in self.outcomes)

    @property
    def calls(self) -> int:
        return sum(o["calls"] for o in self.outcomes)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def runs_per_minute(self) -> float:
        return 60.0 * self.done / self.elapsed if self.elapsed > 0 else 0.0

    def status(self, watches: bool, signalled: int | None = None) -> int:
        """1 if anything was caught; else 4 if the campaign watched functions
        (``watches``) and no run ever armed one (runs that never started
        included); else 0. Ended by a signal: its status (Ctrl-C 130, SIGTERM
        143) whatever was caught (the summary says what)."""
        if signalled is not None:
            return signalled
        if self.hits:
            return ExitStatus.HIT
        if watches and self.armed == 0:
            return ExitStatus.UNARMED
        return ExitStatus.OK


def _only_signature(outcome: dict, key: str) -> bool:
    """A frozen run stops at its first hit: its vmcore belongs to that hit's signature."""
    return next(iter(outcome.get("signatures", {})), None) == key
