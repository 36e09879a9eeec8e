"""Hit storm: how fast hits are taken on 2 vCPUs, and what they cost in memory.

Runs the test kernel's scenario 14 (two victim/poker pairs; every poke is a
write into a watched local, so every poke is a hit, on either vCPU) under TCG,
watching ``s14_victim``'s ``box`` with frame-pointer backtraces (no gdb), in
this process, and prints:

* hits per second, from the first hit to the last (the guest's own work
  between pokes is small, so this is the cost of a hit stop);
* the tool's peak RSS (``VmHWM``) and its RSS sampled as hits arrive: flat
  means per-hit state is released once the hit is written to the event log;
* whether QEMU stayed up and every poke was caught (pokes= of the verdict).

Usage: python bench/hit_storm.py [--hits 100000] [--pairs 2] [--pokes 500]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.watch.hits import Hit  # noqa: E402
from kswgdb.watch.session import RunOptions, WatchSession  # noqa: E402

WATCH = "fn=s14_victim fo=0x1d var=box"
POKES = re.compile(r"KSWTEST verdict scenario=14 .* pokes=(\d+)")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=100_000, help="pokes to drive (all hits)")
    ap.add_argument("--pairs", type=int, default=2, help="victim/poker pairs")
    ap.add_argument("--pokes", type=int, default=500, help="pokes per victim call")
    args = ap.parse_args(argv)
    runs = max(1, args.hits // (args.pairs * args.pokes))
    total = runs * args.pairs * args.pokes
    stamps: list[float] = []
    samples: list[tuple[int, int]] = []
    step = max(1, total // 8)

    def on_hit(hit: Hit) -> None:
        if not stamps:
            stamps.append(time.monotonic())
        if hit.seq % step == 0:
            samples.append((hit.seq, status_kib("VmRSS")))
        stamps[1:] = [time.monotonic()]

    start_rss = status_kib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        report = WatchSession(RunOptions(
            scenario=14, watches=[WATCH], accel="tcg", timeout=7200.0, backtrace="fp",
            cmdline=f"workers={args.pairs} runs={runs} iters={args.pokes}",
            log_path=Path(tmp) / "events.jsonl"), on_hit=on_hit).run()
        log_mib = (Path(tmp) / "events.jsonl").stat().st_size / 2**20
    verdict = next((POKES.search(ln) for ln in report.console_log if POKES.search(ln)), None)
    pokes = int(verdict.group(1)) if verdict else None
    seconds = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    print(f"hit storm: {args.pairs} pairs x {runs} calls x {args.pokes} pokes = {total} writes, "
          "2 vCPUs, TCG, backtraces fp")
    print(f"  hits caught        {report.hit_count} (guest says pokes={pokes})")
    print(f"  QEMU               {'alive to the end' if report.fault is None else report.fault}"
          f"; lost stops collected {report.lost_stops}")
    if seconds:
        print(f"  hits per second    {(report.hit_count - 1) / seconds:.0f}  "
              f"({seconds:.1f} s first hit to last; run {report.seconds:.1f} s)")
    print(f"  RSS kswgdb         start {start_rss / 1024:.1f} MiB, peak (VmHWM) "
          f"{status_kib('VmHWM') / 1024:.1f} MiB")
    print("  RSS as hits come   " + ", ".join(f"{seq}: {kib / 1024:.1f}" for seq, kib in samples)
          + " MiB")
    print(f"  event log          {log_mib:.1f} MiB")
    ok = report.fault is None and pokes == report.hit_count == total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
