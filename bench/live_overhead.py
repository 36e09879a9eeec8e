"""Does watching through the live driver (`kswgdb tui`) cost more than `kswgdb run`?

The same clean workload (scenario 6: armed calls of s3_victim, no corruption)
is watched to its end by `WatchSession.run` (the CLI's loop) and by
`LiveSession` (the TUI's worker thread, with nobody sending it commands),
interleaved, so a noisy neighbour hurts both alike. The clock runs from the
guest's start to its exit, boot included; the figure is per armed call.

Usage: python bench/live_overhead.py [--reps 5] [--iters 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb import image as image_mod  # noqa: E402
from kswgdb.run.live import EXITED, FAILED, LiveSession  # noqa: E402
from kswgdb.run.oneshot import WatchSession  # noqa: E402
from kswgdb.run.options import RunOptions  # noqa: E402
from kswgdb.watch.scenarios import scenario_watch  # noqa: E402


def options(watch: str, iters: int) -> RunOptions:
    return RunOptions(scenario=6, watches=[watch], accel="tcg", timeout=0,
                      cmdline=f"iters={iters}", log_path=None)


def run_cli(watch: str, iters: int) -> tuple[float, int]:
    opts = options(watch, iters)
    opts.timeout = 600
    session = WatchSession(opts)
    session.prepare()                   # symbols loaded outside the clock, as for LiveSession
    started = time.monotonic()
    report = session.run()
    assert report.result.reason == "exit", report.result
    return time.monotonic() - started, report.summary[0]["armed"]


def run_live(watch: str, iters: int) -> tuple[float, int]:
    session = LiveSession(options(watch, iters))
    session.prepare()
    started = time.monotonic()
    session.start()
    try:
        while session.snapshot().state not in (EXITED, FAILED):
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        snap = session.snapshot()
        assert snap.state == EXITED, snap
        return elapsed, snap.watches[0].armed
    finally:
        session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--iters", type=int, default=300)
    args = parser.parse_args()
    watch = scenario_watch(image_mod.load(None), 6)
    per_call: dict[str, list[float]] = {"run (WatchSession)": [], "tui (LiveSession)": []}
    for rep in range(args.reps):
        for label, fn in (("run (WatchSession)", run_cli), ("tui (LiveSession)", run_live)):
            seconds, armed = fn(watch, args.iters)
            per_call[label].append(seconds / armed * 1e6)
            print(f"rep {rep} {label}: {seconds:.2f}s, {armed} armed calls", file=sys.stderr)
    medians = {label: statistics.median(v) for label, v in per_call.items()}
    base = medians["run (WatchSession)"]
    print(f"scenario 6, iters={args.iters}, {args.reps} interleaved reps, boot included")
    print("| loop | µs per armed call (median) | vs run |")
    print("|---|---|---|")
    for label, med in medians.items():
        print(f"| {label} | {med:.0f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
