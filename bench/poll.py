"""Physical-memory poll benchmark: interval achieved, guest slowdown, detection latency.

Three measurements, side by side in one run, on the bundled test kernel (TCG):

1. Guest slowdown. A fixed workload (scenario 6, ``iters=N`` victim calls with
   preemption and migrations) is timed from resume to the guest's exit, with
   no poll, with one DRAM poll at ``--interval`` (kswgdb's poller, reading the
   shared RAM file; below 0.5 ms it busy-waits on a host core), with one DRAM
   poll at 1 ms (it sleeps between samples), and with one MMIO poll (the HPET counter, read through
   QEMU's monitor every 1 ms). The three configurations run interleaved, round
   robin, so a noisy neighbour hurts all alike. Medians and ratios to "off".
2. Achieved interval: the median gap between two samples of the DRAM poll
   during those runs (and of the MMIO poll).
3. Detection latency: while the guest runs, the benchmark writes a new value
   into a guest RAM word from outside the CPUs (through the shared RAM file,
   as a DMA engine would) at random moments, ``--changes`` times. Two
   observers watch the same word at once: kswgdb's poller at ``--interval``,
   and a timer-style poll that samples every 30 ms like the in-kernel timer
   watchpoint (a thread sleeping 30 ms between samples). Latency = the moment
   an observer saw the new value minus the moment it was written; medians
   and their ratio.

Usage: python bench/poll.py [--rounds 5] [--iters 100000] [--changes 30] [--interval 10us]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.poll.config import format_interval, parse_poll  # noqa: E402
from kswgdb.poll.physrun import PhysWatch  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.symbols.program import Program  # noqa: E402

HPET_COUNTER = 0xFED000F0     # HPET main counter (pc machine): an always-present MMIO word
TIMER_STYLE_PERIOD = 0.030    # the real case's in-kernel timer period


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)


def timed_workload(img, program, iters: int, poll: str | None) -> tuple[float, float | None]:
    """Seconds from resume to guest exit for scenario 6, and the poll's median gap."""
    with Machine(img, accel="tcg", scenario=6, extra_cmdline=f"iters={iters}",
                 shared_ram="file", paused=True, gdb=False) as m:
        phys = PhysWatch(m, program, [parse_poll(poll)] if poll else [],
                         engine_attached=True)
        phys.start()
        if poll:
            while not any(s.samples > 1 for s in phys.poller.polls()):
                time.sleep(0.001)
        start = time.perf_counter()
        m.resume()
        gone = m.wait_exit(300)
        took = time.perf_counter() - start
        phys.close()
        if gone.code != 0x16:
            raise SystemExit(f"workload run failed: {gone}")
        gaps = [s.median_interval for s in phys.poller.polls() if s.median_interval]
        return took, (gaps[0] if gaps else None)


def latency_run(img, program, changes: int, interval: str) -> tuple[list[float], list[float]]:
    """Write `changes` new values into guest RAM; latencies of both observers."""
    addr = program.global_address("s8_zero_page") + 0x100   # a word nobody touches
    with Machine(img, accel="tcg", scenario=6, extra_cmdline="iters=1000000",
                 shared_ram="file", paused=True, gdb=False) as m:
        assert m.ram_path is not None
        seen_fast: dict[int, float] = {}
        phys = PhysWatch(m, program, [], engine_attached=True)
        region = phys.memory.memory_map.find(addr, 8)
        assert region is not None
        offset = region.offset + addr - region.start
        got = threading.Event()

        def on_hit(hit) -> None:
            seen_fast[int.from_bytes(bytes.fromhex(hit.new), "little")] = time.perf_counter()
            got.set()

        phys.poller.on_hit = on_hit
        phys.poller.context = None          # measure detection, not the vCPU snapshot
        phys.poller.start()
        phys.poller.add_poll(f"pa={addr:#x} len=8 any=1 once=0 interval={interval}")

        seen_slow: dict[int, float] = {}
        stop = threading.Event()
        view = phys.memory.view

        def timer_style() -> None:
            last = bytes(view[offset:offset + 8])
            while not stop.is_set():
                time.sleep(TIMER_STYLE_PERIOD)
                cur = bytes(view[offset:offset + 8])
                if cur != last:
                    seen_slow[int.from_bytes(cur, "little")] = time.perf_counter()
                    last = cur

        slow = threading.Thread(target=timer_style, daemon=True)
        slow.start()
        m.resume()
        m.wait_for("KSWTEST start scenario=6", 30)
        rng = random.Random(1)
        written: dict[int, float] = {}
        with open(m.ram_path, "r+b") as fh:
            ram = mmap.mmap(fh.fileno(), 0)
            try:
                for value in range(1, changes + 1):
                    time.sleep(rng.uniform(0.035, 0.080))   # > 30 ms: one change per tick
                    ram[offset:offset + 8] = value.to_bytes(8, "little")
                    written[value] = time.perf_counter()
                time.sleep(2 * TIMER_STYLE_PERIOD)
            finally:
                ram.close()
        stop.set()
        slow.join()
        phys.close()
        fast = [seen_fast[v] - t for v, t in written.items() if v in seen_fast]
        slow_l = [seen_slow[v] - t for v, t in written.items() if v in seen_slow]
        missed = changes - len(fast), changes - len(slow_l)
        if any(missed):
            print(f"note: missed changes: poller {missed[0]}, timer-style {missed[1]}")
        return fast, slow_l


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=100000, help="scenario 6 workload size")
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--interval", default="10us", help="kswgdb's DRAM poll interval")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    img = load_image(None)
    program = Program.load(img.symbols)
    word = program.global_address("s8_zero_page") + 0x100
    configs = {
        "off": None,
        f"DRAM poll {args.interval}": f"pa={word:#x} len=8 any=1 once=0 interval={args.interval}",
        "DRAM poll 1ms": f"pa={word:#x} len=8 any=1 once=0 interval=1ms",
        "MMIO poll 1ms": f"pa={HPET_COUNTER:#x} len=4 any=1 once=0 interval=1ms",
    }
    results = {name: Sample() for name in configs}
    for r in range(args.rounds):
        for name, poll in configs.items():
            took, gap = timed_workload(img, program, args.iters, poll)
            results[name].seconds.append(took)
            if gap is not None:
                results[name].gaps.append(gap)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    base = statistics.median(results["off"].seconds)
    print(f"guest workload: scenario 6, iters={args.iters}, {args.rounds} rounds interleaved "
          "(median seconds from resume to exit)")
    print(f"  {'configuration':<22} {'median s':>9} {'vs off':>7} {'median interval':>16}")
    for name, sample in results.items():
        med = statistics.median(sample.seconds)
        gap = format_interval(statistics.median(sample.gaps)) if sample.gaps else "-"
        print(f"  {name:<22} {med:9.3f} {med / base:6.2f}x {gap:>16}")

    fast, slow = latency_run(img, program, args.changes, args.interval)
    fm, sm = statistics.median(fast), statistics.median(slow)
    print(f"detection latency of an out-of-CPU write into guest RAM "
          f"({len(fast)}/{args.changes} changes, median):")
    print(f"  kswgdb poller ({args.interval}):   {fm * 1e6:10.0f} us")
    print(f"  timer-style poll (30 ms): {sm * 1e6:10.0f} us")
    print(f"  ratio timer-style / kswgdb: {sm / fm:.0f}x")
    print(f"host load average (1 min) at start {load_before:.1f}, at end {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores: the poller competes with QEMU for them")


if __name__ == "__main__":
    main()
