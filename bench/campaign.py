"""Campaign throughput on this machine: runs per minute for J = 1 and 2, the overhead
per run against a bare ``kswgdb run``, and the scaling efficiency.

Usage: python3 bench/campaign.py [--runs 6] [--cmdline runs=2] [--jobs 1 2]

Scenario 4 of the test kernel under TCG, watched as `kswgdb demo`-style
(``fn=s3_victim`` at its suggested fo, ``--backtrace fp``), each run its own seed:

  bare       ``python -m kswgdb run ... --seed S`` one after the other, timed from
             process start to exit (what a user's shell loop would cost)
  J=1, J=2   ``python -m kswgdb campaign ... --jobs J --runs N``, timed from
             process start to exit; runs/min = 60 * N / wall

overhead per run = wall(J=1) / N - mean(bare); scaling efficiency =
rate(J=2) / (2 * rate(J=1)). The machine is shared (2 cores, other users' guests):
the figures are for the moment they were taken, printed with the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATCH = "fn=s3_victim fo=0x23"
COMMON = ["--scenario", "4", "--watch", WATCH, "--accel", "tcg", "--backtrace", "fp",
          "--timeout", "120"]


def kswgdb(args: list[str], cwd: Path) -> tuple[float, int]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kswgdb", *args], cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1800)
    if done.returncode not in (0, 1):
        raise SystemExit(f"kswgdb {' '.join(args[:1])} failed ({done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    return time.monotonic() - started, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="runs per measurement")
    parser.add_argument("--cmdline", default="", help="extra test-kernel words (runs=R...)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    extra = ["--cmdline", args.cmdline] if args.cmdline else []
    with tempfile.TemporaryDirectory(prefix="kswgdb-bench-campaign-") as tmp:
        work = Path(tmp)
        bare = []
        for i in range(args.runs):
            seconds, _ = kswgdb(["run", *COMMON, *extra, "--seed", str(1000 + i),
                                 "--log", str(work / f"bare-{i}.jsonl")], work)
            bare.append(seconds)
        mean_bare = sum(bare) / len(bare)
        print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs per row; "
              f"scenario 4, TCG, --backtrace fp {args.cmdline}".rstrip())
        print(f"bare kswgdb run      {mean_bare:6.2f} s/run   "
              f"{60 / mean_bare:6.1f} runs/min (one after the other)")
        rates = {}
        for jobs in args.jobs:
            wall, _ = kswgdb(["campaign", *COMMON, *extra, "--jobs", str(jobs),
                              "--runs", str(args.runs), "--seed-start", "1000",
                              "--dir", str(work / f"c{jobs}")], work)
            rates[jobs] = 60 * args.runs / wall
            print(f"campaign --jobs {jobs}    {wall / args.runs:6.2f} s/run   "
                  f"{rates[jobs]:6.1f} runs/min")
        if 1 in rates:
            per_run = 60 / rates[1]
            print(f"overhead per run (J=1 vs bare): {per_run - mean_bare:+.2f} s "
                  f"({100 * (per_run - mean_bare) / mean_bare:+.0f}%)")
        for jobs in args.jobs:
            if jobs > 1 and 1 in rates:
                print(f"scaling efficiency J={jobs}: "
                      f"{100 * rates[jobs] / (jobs * rates[1]):.0f}% "
                      f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
