"""The ``campaign`` subcommand's arguments (light: imported by the CLI's parser)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from kswgdb.campaign import options as campaign_options


def add_parser(sub: argparse._SubParsersAction, watch_options: Callable[..., None],
               timeout_type: Callable[[str], float]) -> None:
    """The ``campaign`` subcommand: `kswgdb run`'s options plus the campaign's own."""
    p = sub.add_parser("campaign", help="the same watched run in many guests (J at a "
                                        "time, each its own seed) until caught; each "
                                        "distinct hit once")
    watch_options(p, timeout=120.0, timeout_type=timeout_type,
                  timeout_help="end each run after S seconds (default: %(default)g)")
    p._option_string_actions["--log"].help = (      # run's option, refused here
        "not for campaigns: each run's event log is DIR/runs/NNNN/events.jsonl")
    p.add_argument("--allow-unarmed", action="store_true",
                   help="a run whose watch never armed counts as clean")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="J",
                   help="guests running at once on this machine (default: 1)")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help=f"stop after N runs (default {campaign_options.DEFAULT_RUNS} when "
                        "neither --until-hits nor --budget is given)")
    p.add_argument("--until-hits", type=int, default=None, metavar="K",
                   help="stop once K hits were caught (running guests are stopped)")
    p.add_argument("--budget", type=campaign_options.parse_duration, default=None,
                   metavar="DURATION", help="stop after this long: 90s, 15m, 2h")
    p.add_argument("--seed-start", type=int, default=None, metavar="S",
                   help="run i gets seed S+i-1 (default: a random S, in the summary)")
    p.add_argument("--dir", default=None, metavar="PATH",
                   help="the campaign directory, new or empty (default: "
                        "./kswgdb-campaign-DATE-TIME)")
    p.add_argument("--cluster", default=None, metavar="tcp://HOST:PORT",
                   help="run the guests on this Dask scheduler's workers (each needs QEMU; "
                        "the image is shipped by sha256); --jobs runs at once")
    p.add_argument("--cluster-timeout", type=campaign_options.parse_duration, default=5.0,
                   metavar="DURATION", help="how long to wait for the --cluster scheduler "
                                            "to answer (default: 5s)")
