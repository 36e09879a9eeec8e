"""Cost of one armed call: the TCG plugin engine against the gdbstub engine, one run.

Usage: python3 bench/plugin.py [--reps 5] [--iters 50000] [--gdb-iters 1000]
       python3 bench/plugin.py --linux [--reps 3] [--iters 300] [--gdb-iters 20]
           [--func do_sys_openat2]

Test kernel (default): scenario 6 ("clean": 3 tasks call s3_victim ``iters``
times, no corruption). Debian kernel (``--linux``, images/linux.toml, built by
``make image-linux``): busybox's init runs ``iters`` rounds of (``cat
/proc/self/stat``, ``ls /``, ``uname -a``), the issue's W1, with a watch on
``--func`` at the fo kswgdb suggests. All under TCG, the modes interleaved rep
by rep (order rotating; the machine is shared and noisy):

  alone     QEMU 7.2 (the system's), no debugger
  alone10   QEMU 10.0 (kswgdb.qemu.fetch), no plugin
  plugin    QEMU 10.0 + kswplugin.so with the watch: every call probed, armed,
            its stores checked, released, all inside QEMU
  unarmed   the plugin with the same watch at ``dp=5``: every call probed and
            released, none armed (the store check's fast path only)
  noregs    EXPERIMENT: plugin with stores=1: the store callback without
            register sync (what the exact RSP and registers at a hit cost)
  nostores  EXPERIMENT: plugin with stores=0: probes and releases only, no
            store checked (what instrumenting every store costs; catches nothing)
  gdbstub   kswgdb's default engine (WatchSession, QEMU 7.2 gdbstub), same watch

The gdbstub engine costs milliseconds per call, the plugin microseconds: the
QEMU 10 modes run ``--iters``, ``alone`` and ``gdbstub`` ``--gdb-iters``, each
against the guest alone at the same count.

Time of a run: host wall time between two console lines (test kernel:
``KSWTEST start`` -> ``KSWTEST verdict``; Linux: ``KSWGDB-INIT ready`` ->
``KSWGDB-INIT done``), stamped as bench/armed_call.py does. Per call =
(median T_mode - median T_baseline) / armed calls. QEMU's CPU time (user +
system, all its threads) is shown too, per call against the same baseline: the
guest's wall time depends on how its tasks get scheduled on a shared host,
QEMU's CPU time less so. "work cpu" is QEMU's CPU between the two timing lines
(read from /proc at each line): the workload without the boot. A run with a
hit (neither workload corrupts anything), a missing end line or a bad verdict
is reported as failed, never averaged in.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import armed_call as ac  # noqa: E402  (its console stamping applies to every Machine)
import stamps as bench_stamps  # noqa: E402

from kswgdb import image as image_mod  # noqa: E402
from kswgdb.plugin.build import build  # noqa: E402
from kswgdb.qemu import binary  # noqa: E402
from kswgdb.qemu.fetch import Qemu10, fetch  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.run.oneshot import WatchSession  # noqa: E402
from kswgdb.run.options import RunOptions  # noqa: E402
from kswgdb.symbols.listing import build_listing  # noqa: E402
from kswgdb.symbols.program import Program  # noqa: E402
from kswgdb.watch.scenarios import scenario_watch  # noqa: E402

MODES = ("alone", "alone10", "plugin", "unarmed", "gdbstub", "noregs", "nostores")
DEFAULT_MODES = MODES[:5]
BASELINE = {"alone": None, "alone10": None, "plugin": "alone10", "unarmed": "alone10",
            "gdbstub": "alone", "noregs": "alone10", "nostores": "alone10"}
PLUGIN_EXTRA = {"noregs": ("stores=1",), "nostores": ("stores=0",)}
LINUX_ROUND = "cat /proc/self/stat >/dev/null; ls / >/dev/null; uname -a >/dev/null"
# bench/stamps.py stamps these lines too, with QEMU's CPU seconds at each (``bench_cpu``):
# the workload's own CPU between the two leaves out the boot.
bench_stamps.stamp_lines("KSWGDB-INIT ready", "KSWGDB-INIT done")


@dataclass(frozen=True)
class Workload:
    """What the guest runs and which two console lines time it."""

    image: image_mod.Image
    watch: str
    scenario: int | None
    start: str
    end: str
    linux: bool

    def cmdline(self, iters: int) -> str:
        if not self.linux:
            return f"iters={iters}"
        return f"-- i=0; while [ $i -lt {iters} ]; do {LINUX_ROUND}; i=$((i+1)); done"

    def options(self, iters: int, watch: str, timeout: float) -> RunOptions:
        return RunOptions(image=self.image.path, scenario=self.scenario, watches=[watch],
                          accel="tcg", timeout=timeout, cmdline=self.cmdline(iters))

    def fill(self, run: ac.Run, console) -> None:
        stamps = ac._stamps(console)
        start, end = stamps.get(self.start), stamps.get(self.end)
        if start and end:
            run.seconds = end[0] - start[0]
        cpu = getattr(console, "bench_cpu", {}) if console is not None else {}
        if cpu.get(self.start) is not None and cpu.get(self.end) is not None:
            run.extra["workload_cpu"] = cpu[self.end] - cpu[self.start]
        else:
            run.failed = run.failed or f"no {self.end!r} line"
        if end and not self.linux and "result=clean" not in end[1]:
            run.failed = run.failed or "verdict not clean"
        if end and self.linux and "status=0" not in end[1]:
            run.failed = run.failed or end[1].strip()


def test_kernel() -> Workload:
    image = image_mod.load(None)
    return Workload(image, scenario_watch(image, ac.SCENARIO), ac.SCENARIO, "KSWTEST start",
                    "KSWTEST verdict", linux=False)


def linux_kernel(func: str) -> Workload:
    image = image_mod.load(ROOT / "images" / "linux.toml")
    watch = build_listing(Program.load(image.symbols), func).suggested_config
    if not watch:
        raise SystemExit(f"kswgdb suggests no watch for {func}")
    return Workload(image, watch, None, "KSWGDB-INIT ready", "KSWGDB-INIT done", linux=True)


def run_alone(work: Workload, qemu: Qemu10 | None, iters: int, timeout: float) -> ac.Run:
    """The guest with no debugger, on QEMU 7.2 (``qemu`` None) or QEMU 10."""
    run = ac.Run("alone" if qemu is None else "alone10")
    extra = {} if qemu is None else {"qemu_binary": str(qemu.binary)}
    c0 = ac._children_cpu()
    with Machine(work.image, accel="tcg", scenario=work.scenario,
                 extra_cmdline=work.cmdline(iters), paused=False, gdb=False, **extra) as m:
        try:
            m.wait_for("^" + work.end, timeout)
        except Exception as exc:  # noqa: BLE001 - reported as a failed run
            run.failed = f"no end line: {exc}".splitlines()[0]
        m.wait_exit(10)
        console = m.console
    run.cpu_qemu = ac._children_cpu() - c0
    work.fill(run, console)
    run.calls = iters
    return run


def run_plugin(work: Workload, qemu: Qemu10, watch: str, iters: int, timeout: float,
               mode: str) -> ac.Run:
    """`kswgdb run --engine plugin` on QEMU 10 (``mode``'s extra plugin arguments)."""
    run = ac.Run(mode)
    ac._LAST_MACHINE.clear()
    c0 = ac._children_cpu()
    with binary.using(str(qemu.binary)):
        report = WatchSession(replace(work.options(iters, watch, timeout), engine="plugin"),
                              rig_options={"plugin_extra": PLUGIN_EXTRA.get(mode, ())}).run()
    run.cpu_qemu = ac._children_cpu() - c0
    work.fill(run, ac._LAST_MACHINE[0].console if ac._LAST_MACHINE else None)
    s = report.summary[0] if report.summary else {}
    run.calls = s.get("calls", 0) if mode == "unarmed" else s.get("armed", 0)
    run.hits = len(report.hits)
    run.extra.update(returns=s.get("returns"), stale=s.get("stale"))
    if report.fault or not report.summary:
        run.failed = run.failed or report.fault or "no counters from the plugin"
    if run.hits:
        run.failed = run.failed or f"{run.hits} hits where nothing is corrupted"
    return run


def run_gdbstub(work: Workload, iters: int, timeout: float) -> ac.Run:
    run = ac.Run("gdbstub")
    ac._LAST_MACHINE.clear()
    c0 = ac._children_cpu()
    report = WatchSession(replace(work.options(iters, work.watch, timeout),
                                  engine="gdbstub")).run()
    run.cpu_qemu = ac._children_cpu() - c0
    work.fill(run, ac._LAST_MACHINE[0].console if ac._LAST_MACHINE else None)
    s = report.summary[0]
    run.calls, run.hits = s["armed"], len(report.hits)
    if report.fault:
        run.failed = run.failed or report.fault
    if run.hits:
        run.failed = run.failed or f"{run.hits} hits where nothing is corrupted"
    return run


def report(runs: dict[str, list[ac.Run]], title: str) -> None:
    print(f"\n{ac.machine_facts()}")
    print(f"{title}; times in s, medians of good runs\n")
    medians: dict[str, float] = {}
    cpu: dict[str, float] = {}
    wcpu: dict[str, float] = {}
    per_call: dict[str, float] = {}
    for mode, rs in runs.items():
        good = [r for r in rs if r.seconds is not None and not r.failed]
        if good:
            medians[mode] = statistics.median(r.seconds for r in good)
            cpu[mode] = statistics.median(r.cpu_qemu for r in good)
            loads = [r.extra["workload_cpu"] for r in good if "workload_cpu" in r.extra]
            if loads:
                wcpu[mode] = statistics.median(loads)
    print(f"{'mode':9} {'runs':>5} {'failed':>6} {'median s':>9} {'calls':>6} "
          f"{'per call':>11} {'QEMU cpu s':>10} {'cpu/call':>11} {'work cpu s':>10} "
          f"{'wcpu/call':>11}  baseline")
    for mode, rs in runs.items():
        failed = sum(1 for r in rs if r.failed)
        calls = statistics.median([r.calls for r in rs if not r.failed] or [0])
        base = BASELINE[mode]
        per = cpu_per = wcpu_per = "-"
        if base and mode in medians and base in medians and calls:
            per_call[mode] = (medians[mode] - medians[base]) / calls
            per = f"{per_call[mode] * 1e6:.1f} us"
            cpu_per = f"{(cpu[mode] - cpu[base]) / calls * 1e6:.1f} us"
        if base and mode in wcpu and base in wcpu and calls:
            wcpu_per = f"{(wcpu[mode] - wcpu[base]) / calls * 1e6:.1f} us"
        med = f"{medians[mode]:.3f}" if mode in medians else "-"
        cpu_s = f"{cpu[mode]:.2f}" if mode in cpu else "-"
        wcpu_s = f"{wcpu[mode]:.2f}" if mode in wcpu else "-"
        print(f"{mode:9} {len(rs):>5} {failed:>6} {med:>9} {calls:>6.0f} {per:>11} "
              f"{cpu_s:>10} {cpu_per:>11} {wcpu_s:>10} {wcpu_per:>11}  {base or ''}")
        for r in rs:
            if r.failed:
                print(f"    failed run: {r.failed}")
    if "plugin" in medians and "alone10" in medians:
        print(f"\nplugin slowdown of the whole guest: "
              f"{medians['plugin'] / medians['alone10']:.2f}x (QEMU 10 alone = 1)")
    if per_call.get("plugin", 0) > 0 and "gdbstub" in per_call:
        print(f"gdbstub engine / plugin engine, per armed call: "
              f"{per_call['gdbstub'] / per_call['plugin']:.0f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--linux", action="store_true")
    parser.add_argument("--func", default="do_sys_openat2", help="--linux: function to watch")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--gdb-iters", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"unknown mode(s): {', '.join(bad)} (known: {', '.join(MODES)})", file=sys.stderr)
        return 2
    iters = args.iters or (300 if args.linux else 50000)
    gdb_iters = args.gdb_iters or (20 if args.linux else 1000)
    work = linux_kernel(args.func) if args.linux else test_kernel()
    qemu = fetch()
    build(qemu)
    unarmed = f"{work.watch} dp=5"
    runs: dict[str, list[ac.Run]] = {m: [] for m in modes}
    for rep in range(args.reps):
        order = modes[rep % len(modes):] + modes[:rep % len(modes)]
        for mode in order:
            t0 = time.monotonic()
            if mode == "alone":
                r = run_alone(work, None, gdb_iters, args.timeout)
            elif mode == "alone10":
                r = run_alone(work, qemu, iters, args.timeout)
            elif mode == "gdbstub":
                r = run_gdbstub(work, gdb_iters, args.timeout)
            else:
                r = run_plugin(work, qemu, unarmed if mode == "unarmed" else work.watch,
                               iters, args.timeout, mode)
            runs[mode].append(r)
            secs = f"{r.seconds:.3f}s" if r.seconds is not None else "-"
            print(f"rep {rep} {mode:8} {secs:>9} calls={r.calls} hits={r.hits} "
                  f"{r.failed or 'ok'} ({time.monotonic() - t0:.1f}s wall)", flush=True)
    what = (f"Debian kernel, W1 x{iters} (QEMU 10) / x{gdb_iters} (7.2), watch {work.watch}"
            if work.linux else
            f"test kernel scenario 6, iters={iters} (QEMU 10) / {gdb_iters} (7.2), "
            f"watch {work.watch}")
    report(runs, what)
    return 0


if __name__ == "__main__":
    sys.exit(main())
