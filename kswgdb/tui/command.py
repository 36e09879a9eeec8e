"""`kswgdb tui`: check everything, then hand a prepared live session to the screen.

Bad input (image, scenario, configs, accelerator, log path, no terminal) is a
one-line error with exit status 2 *before* the screen takes the terminal and
before QEMU starts. After the screen closes, the summary is printed to the
terminal, so the run leaves a record like `kswgdb run` does; the exit status
is 1 if anything was caught, 3 if QEMU or the stub failed, 4 if a watch (not
removed by the user) was never armed, unless ``--allow-unarmed``.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from kswgdb.errors import BadInput
from kswgdb.exitcodes import ExitStatus, status_of_run
from kswgdb.render.hit import value
from kswgdb.render.pollhit import render_poll_summary
from kswgdb.render.summary import render_summary
from kswgdb.run.live import LiveSession
from kswgdb.run.options import options_from_args

#: Hits listed on the terminal after the screen closes (all are in the event log).
SHOWN_HITS = 5


def run_tui(args: argparse.Namespace) -> int:
    session = LiveSession(options_from_args(args))
    session.prepare()
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        session.close()
        raise BadInput("kswgdb tui needs a terminal (use `kswgdb run` in scripts and CI)")
    from kswgdb.tui.app import KswApp

    try:
        session.start()             # QEMU launched from the main thread, before the screen
        if session.error is not None:
            raise session.error     # QEMU would not start: one line, exit 3
        KswApp(session).run()
    finally:
        session.close()
    print_record(session, Console(highlight=False))
    if session.error is not None:
        raise session.error
    return session_status(session)


def session_status(session: LiveSession) -> ExitStatus:
    """The closed session's exit status, as `kswgdb run` decides it; one warning line per
    watch that was never armed (a watch the user removed does not count)."""
    unarmed = session.rig.unarmed if session.rig is not None else []
    for line in unarmed:
        print(f"kswgdb: warning: {line}", file=sys.stderr)
    return status_of_run(len(session.hits()) + len(session.poll_hits()),
                         unarmed=bool(unarmed) and not session.options.allow_unarmed)


def print_record(session: LiveSession, out: Console) -> None:
    """What stays on the terminal after the screen is gone."""
    snap = session.snapshot()
    rows = [{
        "config": r.config + ("" if r.active else " (removed)"), "calls": r.calls,
        "armed": r.armed, "not_armed": r.not_armed, "returns": r.returns, "hits": r.hits,
        "skipped_depth": 0, "refused_pool": 0, "refused_check": 0, "refused_stub": 0,
        **dict(r.not_armed_counts),
    } for r in snap.watches]
    if rows:
        out.print(render_summary(rows))
    polls = session.polls.statuses()
    if polls:
        out.print(render_poll_summary(polls))
    if snap.guest_exit is not None:
        out.print(f"[dim]guest ended: {snap.guest_exit}")
    if session.options.log_path:
        out.print(f"[dim]event log: {session.options.log_path}")
    hits = session.hits()
    for hit in hits[:SHOWN_HITS]:
        out.print(f"hit #{hit.seq}: {hit.writer.symbol} wrote the {hit.what} "
                  f"({hit.owner}) {value(hit.old)} -> {value(hit.new)}", markup=False)
    if len(hits) > SHOWN_HITS:
        out.print(f"[dim]... {len(hits) - SHOWN_HITS} more in the event log")
    poll_hits = session.poll_hits()
    for phit in poll_hits[:SHOWN_HITS]:
        out.print(f"poll hit P{phit.seq}: pa {phit.addr:#x} ({phit.kind}) "
                  f"{value(phit.old)} -> {value(phit.new)} ({phit.config})", markup=False)
    if len(poll_hits) > SHOWN_HITS:
        out.print(f"[dim]... {len(poll_hits) - SHOWN_HITS} more poll hits in the event log")
    total = len(hits) + len(poll_hits)
    out.print(f"[bold {'red' if total else 'green'}]{total} hit(s)")
