"""A campaign's progress: a rich live view on a terminal, plain lines in a pipe.

Both show runs done/running/failed, calls armed, hits, distinct signatures,
runs per minute and time left (budget, or the remaining runs at the current
rate). The plain view prints one line per finished run and never redraws.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from kswgdb.campaign.runner import Campaign


def time_left(campaign: Campaign) -> str:
    opts, tally = campaign.opts, campaign.tally
    if opts.budget is not None:
        return f"{max(0.0, opts.budget - tally.elapsed):.0f}s"
    limit = opts.run_limit
    if limit is None:
        return "until hits"
    if tally.done == 0:
        return "?"
    return f"{(limit - tally.done) * tally.elapsed / tally.done:.0f}s"


def progress_fields(campaign: Campaign) -> list[tuple[str, str]]:
    tally, limit = campaign.tally, campaign.opts.run_limit
    return [
        ("runs done", f"{tally.done}" + (f"/{limit}" if limit else "")),
        ("running", str(len(campaign.pool.running))),
        ("failed", str(tally.failed)),
        ("calls armed", f"{tally.armed}/{tally.calls}"),
        ("hits", str(campaign.hits_seen)),
        ("signatures", str(len(tally.findings))),
        ("runs/min", f"{tally.runs_per_minute:.1f}"),
        ("time left", time_left(campaign)),
    ]


def run_line(outcome: dict) -> str:
    why = f": {outcome['reason']}" if outcome.get("reason") else ""
    return (f"run {outcome['index']} seed {outcome['seed']}: {outcome['status']}, "
            f"{outcome['hits'] + outcome['poll_hits']} hit(s), {outcome['armed']}/"
            f"{outcome['calls']} armed, {outcome['seconds']:.1f}s{why}")


class PlainView:
    """One line per finished run, then the counts: for pipes and logs."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.campaign: Campaign | None = None

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *_exc: Any) -> None:
        pass

    def progress(self, campaign: Campaign) -> None:
        self.campaign = campaign

    def run_ended(self, outcome: dict) -> None:
        line = run_line(outcome)
        if self.campaign is not None:
            line += " | " + ", ".join(f"{k} {v}" for k, v in progress_fields(self.campaign))
        print(line, file=self.out, flush=True)


class LiveView:
    """A table redrawn in place on the terminal, finished runs printed above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = Live(Table(), console=console, refresh_per_second=4, transient=True)
        self.campaign: Campaign | None = None

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def progress(self, campaign: Campaign) -> None:
        self.campaign = campaign
        table = Table(title="kswgdb campaign", title_justify="left", show_header=True)
        fields = progress_fields(campaign)
        for name, _value in fields:
            table.add_column(name, justify="right")
        table.add_row(*(value for _name, value in fields))
        self.live.update(table)

    def run_ended(self, outcome: dict) -> None:
        style = {"caught": "bold red", "fault": "yellow", "failed": "yellow"}.get(
            outcome["status"], "dim")
        self.live.console.print(run_line(outcome), style=style, markup=False,
                                highlight=False)
