"""Soak: the clean scenario under armed watches for N minutes; nothing may leak or lie.

Runs the test kernel's clean workload (scenario 6: 3 tasks calling the watched
``s3_victim`` with preemption and migration, nothing corrupted) again and again,
each run a fresh QEMU with ``iters=`` calls, in this one process, until the time
is up. Reports what a long debugging session depends on:

* armed calls (the watch really armed and disarmed that often);
* false positives: hits in a run where nothing is corrupted (must be 0);
* the tool's RSS and open file descriptors at the start, after the first run
  (imports and caches warm), and at the end: flat means no leak per run;
* QEMU restarts (runs - 1) and any run that did not end cleanly;
* the median armed calls per second and seconds per run.

Usage: python bench/soak.py [--minutes 30] [--iters 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb import image as image_mod  # noqa: E402
from kswgdb.run.oneshot import WatchSession  # noqa: E402
from kswgdb.run.options import RunOptions  # noqa: E402
from kswgdb.watch.scenarios import scenario_watch  # noqa: E402

CLEAN = 6


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--iters", type=int, default=10000, help="calls per guest run")
    args = ap.parse_args(argv)

    img = image_mod.load(None)
    watch = scenario_watch(img, CLEAN)
    start_rss, start_fds = rss_kib(), open_fds()
    warm: tuple[int, int] | None = None
    armed = calls = false_positives = not_armed = runs = bad_runs = 0
    rates: list[float] = []
    durations: list[float] = []
    began = time.monotonic()
    deadline = began + args.minutes * 60
    print(f"soak: scenario {CLEAN} (clean), watch {watch!r}, {args.iters} calls per run, "
          f"{args.minutes:g} min; RSS {start_rss} KiB, {start_fds} fds at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="kswgdb-soak-") as tmp:
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            log = Path(tmp) / "events.jsonl"
            t0 = time.monotonic()
            report = WatchSession(RunOptions(
                scenario=CLEAN, watches=[watch], accel="tcg", cmdline=f"iters={args.iters}",
                timeout=max(left, 5.0), log_path=log)).run()
            took = time.monotonic() - t0
            log.unlink(missing_ok=True)
            runs += 1
            row = report.summary[0]
            armed += row["armed"]
            calls += row["calls"]
            not_armed += row["not_armed"]
            false_positives += len(report.hits)
            clean = (report.fault is None and report.guest_exit is not None
                     and report.verdict is not None and "result=clean" in report.verdict)
            if report.result.reason == "deadline":
                clean = True           # cut short by the soak's own end
            elif clean:
                rates.append(row["armed"] / took)
                durations.append(took)
            if not clean:
                bad_runs += 1
                print(f"  run {runs}: NOT clean: fault={report.fault} exit={report.guest_exit} "
                      f"verdict={report.verdict}", flush=True)
            if warm is None:
                warm = (rss_kib(), open_fds())
            print(f"  run {runs}: {row['armed']} armed, {len(report.hits)} hits, "
                  f"{took:.1f}s, RSS {rss_kib()} KiB, {open_fds()} fds", flush=True)
    end_rss, end_fds = rss_kib(), open_fds()
    assert warm is not None
    minutes = (time.monotonic() - began) / 60
    print()
    print(f"soak result ({minutes:.1f} min, {runs} runs, {runs - 1} QEMU restarts):")
    print(f"  armed calls          {armed}  (calls {calls}, not armed {not_armed})")
    print(f"  false positives      {false_positives}")
    print(f"  runs not clean       {bad_runs}")
    if rates:
        print(f"  median armed calls/s {statistics.median(rates):.0f}  "
              f"(median run {statistics.median(durations):.1f}s, {len(rates)} full runs)")
    print(f"  RSS KiB              start {start_rss}, after run 1 {warm[0]}, end {end_rss}")
    print(f"  open fds             start {start_fds}, after run 1 {warm[1]}, end {end_fds}")
    ok = false_positives == 0 and bad_runs == 0 and end_fds <= warm[1]
    print("  verdict              " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
