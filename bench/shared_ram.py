"""Does keeping guest RAM in a shared file (as `kswgdb tui` always does) slow the guest?

The live session puts guest RAM in a ``share=on`` file on tmpfs from the start,
so that a physical-memory poll can be added at any moment, and starts an idle
poller (two host threads waiting on an event). This times the same workload
(scenario 6, ``iters=N``, no watch, no gdbstub) from resume to the guest's exit
three ways, interleaved round robin so a noisy neighbour hurts all alike:

- ``anonymous RAM``: QEMU's default private RAM (what `kswgdb run` uses without --poll);
- ``shared RAM file``: ``memory-backend-file,share=on`` on tmpfs;
- ``shared + idle poller``: the same, with the RAM mapped by kswgdb and a poller with
  no polls running, exactly what the live session has when no ``--poll`` was given.

Prints the median seconds and the ratio of each to ``anonymous RAM``.

Usage: python bench/shared_ram.py [--rounds 5] [--iters 30000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.poll.physrun import PhysWatch  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.symbols.program import Program  # noqa: E402

CONFIGS = ("anonymous RAM", "shared RAM file", "shared + idle poller")


def timed(img, program, iters: int, config: str) -> float:
    shared = "file" if config != "anonymous RAM" else False
    with Machine(img, accel="tcg", scenario=6, extra_cmdline=f"iters={iters}",
                 shared_ram=shared, paused=True, gdb=False) as m:
        phys = None
        if config == "shared + idle poller":
            phys = PhysWatch(m, program, [], engine_attached=True)
            phys.start()
        start = time.perf_counter()
        m.resume()
        gone = m.wait_exit(600)
        took = time.perf_counter() - start
        if phys is not None:
            phys.close()
        if gone.code != 0x16:
            raise SystemExit(f"workload run failed ({config}): {gone}")
        return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30000, help="scenario 6 workload size")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    img = load_image(None)
    program = Program.load(img.symbols)
    results: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        for config in CONFIGS:
            results[config].append(timed(img, program, args.iters, config))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = statistics.median(results["anonymous RAM"])
    print(f"guest workload: scenario 6, iters={args.iters}, {args.rounds} rounds interleaved "
          "(median seconds from resume to exit)")
    print(f"  {'guest RAM':<22} {'median s':>9} {'vs anonymous':>13}")
    for config, seconds in results.items():
        med = statistics.median(seconds)
        print(f"  {config:<22} {med:9.3f} {med / base:12.2f}x")
    print(f"host load average (1 min) at start {load_before:.1f}, at end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
