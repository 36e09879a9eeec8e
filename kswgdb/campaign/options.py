"""What a campaign was asked for: the run template, how many at once, when to stop.

`campaign_options_from_args` fills a `CampaignOptions` from `kswgdb campaign`'s
arguments (the run options are the same `RunOptions` `kswgdb run` uses);
`check` finds bad input (exit 2) before any guest starts. Without ``--runs``,
``--until-hits`` or ``--budget`` a campaign does `DEFAULT_RUNS` runs.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from pathlib import Path

from kswgdb.errors import BadInput
from kswgdb.run.options import RunOptions, options_from_args

DEFAULT_RUNS = 10
#: Grace, beyond a run's own --timeout, before the campaign kills a silent worker.
HARD_DEADLINE_SLACK = 60.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass
class CampaignOptions:
    run: RunOptions                     # the template: every run is this, with its own seed
    jobs: int = 1
    runs: int | None = None
    until_hits: int | None = None
    budget: float | None = None         # seconds
    seed_start: int = 1
    directory: Path | None = None       # None: kswgdb-campaign-DATE-TIME in the cwd
    argv: tuple[str, ...] = ()          # the campaign's own command line, kept in the directory
    qemu: str | None = None             # --qemu, repeated in replay lines
    cluster: str | None = None          # a Dask scheduler's address: runs go there
    cluster_timeout: float = 5.0        # seconds to wait for that scheduler to answer

    @property
    def run_limit(self) -> int | None:
        """At most this many runs (None: until a hit count or the budget stops it)."""
        if self.runs is None and self.until_hits is None and self.budget is None:
            return DEFAULT_RUNS
        return self.runs

    @property
    def hard_deadline(self) -> float:
        """Seconds after which a run still without a result is killed as hung."""
        return self.run.timeout + HARD_DEADLINE_SLACK


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` or ``1h30m`` -> seconds (argparse type)."""
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[smhd]?\s*)+)", text or "")
    if not parts:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h)")
    total = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text))
    if total <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, not {text!r}")
    return total


def campaign_options_from_args(args: argparse.Namespace, argv: tuple[str, ...] = ()
                               ) -> CampaignOptions:
    if args.log:
        raise BadInput("--log is not for campaigns: each run's event log is in the "
                       "campaign directory (--dir)")
    run = options_from_args(args)
    run.log_path = None                 # each run's log is in the campaign directory
    seed = args.seed_start if args.seed_start is not None else random.randrange(1, 2**31)
    return CampaignOptions(
        run=run, jobs=args.jobs, runs=args.runs, until_hits=args.until_hits,
        budget=args.budget, seed_start=seed,
        directory=Path(args.dir) if args.dir else None, argv=argv,
        qemu=getattr(args, "qemu", None), cluster=getattr(args, "cluster", None),
        cluster_timeout=getattr(args, "cluster_timeout", 5.0))


def check(opts: CampaignOptions) -> None:
    """Campaign-level bad input (the run template is checked by `kswgdb.run.prepare`)."""
    if opts.jobs < 1:
        raise BadInput(f"--jobs must be at least 1, not {opts.jobs}")
    if opts.runs is not None and opts.runs < 1:
        raise BadInput(f"--runs must be at least 1, not {opts.runs}")
    if opts.until_hits is not None and opts.until_hits < 1:
        raise BadInput(f"--until-hits must be at least 1, not {opts.until_hits}")
    if not 0 <= opts.seed_start < 2**63:
        raise BadInput(f"--seed-start must be between 0 and 2**63-1, not {opts.seed_start}")
    if opts.run.gdb_listen is not None:
        raise BadInput("--gdb-listen is not for campaigns: replay the run with "
                       "`kswgdb run ... --seed S --gdb-listen ...`")
    if opts.run.seed is not None:
        raise BadInput("--seed is not for campaigns: each run gets its own "
                       "(--seed-start S gives S, S+1, ...)")
    if opts.cluster_timeout <= 0:
        raise BadInput(f"--cluster-timeout must be more than 0 seconds, not "
                       f"{opts.cluster_timeout:g}")
    if opts.run.timeout <= 0:
        raise BadInput("a campaign's runs need a --timeout (seconds, more than 0)")
