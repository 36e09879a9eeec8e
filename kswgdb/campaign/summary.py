"""The campaign's summary: as JSON (`summary_json`, schema in docs/campaign-summary.md)
and as the rendered table plus each signature's first panel (`render_summary`)."""

from __future__ import annotations

import io
import time
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kswgdb.campaign.options import CampaignOptions
from kswgdb.campaign.replay import replay_line
from kswgdb.campaign.tally import Tally

SCHEMA_VERSION = 1


def summary_json(opts: CampaignOptions, tally: Tally, ending: str, status: int,
                 started_wall: float) -> dict[str, Any]:
    run = opts.run
    return {
        "schema": SCHEMA_VERSION,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_wall)),
        "seconds": round(tally.elapsed, 3),
        "ending": ending,
        "exit_status": status,
        "command": ["kswgdb", *opts.argv],
        "config": {"image": str(run.image) if run.image else None, "scenario": run.scenario,
                   "watches": list(run.watches), "polls": list(run.polls),
                   "cmdline": run.cmdline, "on_hit": run.on_hit, "timeout": run.timeout,
                   "jobs": opts.jobs, "runs": opts.run_limit, "until_hits": opts.until_hits,
                   "budget": opts.budget, "seed_start": opts.seed_start},
        "counts": {"runs": tally.done, "caught": tally.count("caught"),
                   "clean": tally.count("clean"), "unarmed": tally.count("unarmed"),
                   "failed": tally.failed, "stopped": tally.count("stopped"),
                   "calls": tally.calls, "armed": tally.armed, "hits": tally.hits,
                   "signatures": len(tally.findings),
                   "runs_per_minute": round(tally.runs_per_minute, 2)},
        "signatures": [f.to_json() for f in
                       sorted(tally.findings.values(), key=lambda f: -f.count)],
        "runs": [{**{k: v for k, v in o.items() if k != "examples"},
                  "replay": replay_line(run, o["seed"], qemu=opts.qemu)}
                 for o in sorted(tally.outcomes, key=lambda o: o["index"])],
    }


def signature_table(summary: dict[str, Any]) -> Table:
    table = Table(title="distinct signatures", title_justify="left")
    for col in ("id", "writer", "victim", "target", "hits", "runs", "first seed", "vmcore"):
        table.add_column(col, overflow="fold")
    for sig in summary["signatures"]:
        runs = sig["runs"]
        table.add_row(sig["id"], sig["writer"], sig["victim"], sig["target"],
                      str(sig["count"]), f"{len(runs)}: {_short(runs)}",
                      str(sig["first"]["seed"]), sig["vmcore"] or "-")
    return table


def failures_table(summary: dict[str, Any]) -> Table | None:
    bad = [r for r in summary["runs"] if r["status"] in ("fault", "failed", "stopped")]
    if not bad:
        return None
    table = Table(title="runs that did not end normally", title_justify="left")
    for col in ("run", "seed", "status", "reason"):
        table.add_column(col, overflow="fold")
    for r in bad:
        table.add_row(str(r["index"]), str(r["seed"]), r["status"], r["reason"] or "-")
    return table


def counts_line(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    return (f"{c['runs']} runs ({c['caught']} caught, {c['clean']} clean, {c['unarmed']} "
            f"unarmed, {c['failed']} failed, {c['stopped']} stopped); {c['armed']} of "
            f"{c['calls']} calls armed; {c['hits']} hits, {c['signatures']} distinct "
            f"signature(s); {summary['seconds']:.1f}s, {c['runs_per_minute']:.1f} runs/min; "
            f"{summary['ending']}")


def render_summary(summary: dict[str, Any]) -> Group:
    parts: list[Any] = [signature_table(summary)]
    failures = failures_table(summary)
    if failures is not None:
        parts.append(failures)
    parts.append(Text(counts_line(summary)))
    return Group(*parts)


def summary_text(summary: dict[str, Any], width: int = 160) -> str:
    """The table, then each signature's first panel and replay line (summary.txt)."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False)
    console.print(render_summary(summary))
    replays = {r["index"]: r["replay"] for r in summary["runs"]}
    for sig in summary["signatures"]:
        first = sig["first"]
        console.print(f"\nsignature {sig['id']}: {sig['key']}\n"
                      f"first seen in run {first['run']} (seed {first['seed']}); replay:\n"
                      f"  {replays.get(first['run'], '?')}", markup=False)
        out.write(first["panel"])
    return out.getvalue()


def _short(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... (+{len(values) - limit})" if len(values) > limit else "")
