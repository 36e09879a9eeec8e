"""Watching hot paths of Debian's kernel under TCG: guest alone, kswgdb, a plain gdb script.

Usage: python3 bench/linux_hot.py [--reps 3] [--full] [--rows never,openat,statx,stores]
           [--modes alone,kswgdb,gdb,alone10,plugin,plugin0,nostore] [--icount SHIFT]

Each row is one busybox workload, run by the initramfs as the command after
``--`` on the kernel command line (images/linux.toml, with ``nokaslr``: the gdb
script breaks at the file's addresses), in up to five modes interleaved rep by
rep (the machine is shared and noisy: only figures of one run, side by side,
are compared):

  alone   no debugger (Machine(paused=False)), the QEMU on PATH (7.2)
  kswgdb  `WatchSession` watching the function's canary at the ``fo`` that
          `kswgdb disasm` suggests, ``--engine gdbstub`` (the QEMU on PATH)
  kswgdb-bp / kswgdb-chk  kswgdb with ``RunOptions.release_by_check`` off / on:
          release-point breakpoints, or the canary check's read of an access
          watchpoint (`kswgdb.watch.checkrelease`), whatever the default
  alone10 no debugger, QEMU 10 (`kswgdb.qemu.fetch`): the plugin's baseline;
          like the plugin engine it runs without a gdbstub and so without the
          ``-icount shift=auto`` that only the gdbstub engine gets on QEMU 10
  plugin  the same watch, ``--engine plugin`` on QEMU 10 (no breakpoint stop)
  plugin0 the plugin with the same watch at ``dp=5``: every call probed and
          released, none armed, every store instrumented: what the plugin costs
          a workload whatever it arms, so ``plugin`` against it is the armed call
  nostore the plugin with the same watch, armed as in ``plugin``, but no store
          instrumented (it catches nothing): ``plugin`` against it is what the
          store check costs, the rest of ``plugin`` what probing and arming cost
  gdb     gdb in batch mode on the same QEMU command line, running the script a
          user would write by hand: a breakpoint at the same probe whose
          ``stop()`` reads the slot, compares it with the per-CPU canary
          (``%gs:0x28``), sets a write watchpoint on the word at its address
          (``watch -l``) and a breakpoint at each release point of the
          function (the same ones kswgdb uses); the release
          breakpoint returns True and the script's loop deletes the watchpoint
          (gdb crashes if ``stop()`` deletes breakpoints). gdb loads the vmlinux
          (its type names the watched word) before the guest starts: not timed.

Rows (``--full``: the sizes of issue 13's table):

  never   W1 = N x (cat /proc/self/stat, ls /, uname -a), watching __sys_connect,
          which nothing in it calls: what a watch that never fires costs
  openat  W1, watching do_sys_openat2 (a hot syscall path)
  statx   3 x ``ls -l /`` (``--full``: 3 x ``ls -l /bin``), watching vfs_statx
  stores  (not in the default rows) dd of 512 MiB (``--full``: 2 GiB) from
          /dev/zero: nearly all its QEMU CPU is kernel stores, few calls; plugin0
          against nostore prices one store callback of the plugin

How the plugin engine's per-armed-call cost is resolved. The aim is 50 us of
added QEMU CPU per armed call; on W1 x300 that is 75 ms in a run whose guest
alone takes 4-8 s of QEMU CPU, and on this shared 2-core VM the same run's QEMU
CPU moves by 1-3 s between reps (about +-1,000 us per armed call), whatever the
host's load average says. Three ways were compared (docs/plugin-engine.md):

  --icount SHIFT  every QEMU 10 mode runs with ``-icount shift=SHIFT,sleep=off``:
          the guest's clock counts its instructions, so it gets the same ticks
          and the same work whatever the host does (the guest's own clock around
          the workload, printed per run, is then equal across modes). It did not
          narrow the spread: the noise is the host's CPU time per unit of work,
          not the guest's work. Off by default (it also changes what TCG
          translates: no REP loop inside a block).
  spread  more interleaved reps and their medians: each row prints, per mode,
          the range of QEMU's CPU over the reps and of the rep-by-rep differences
          with the baseline, in us per armed call. With a spread of 1,000+ us no
          practical number of reps brings W1's median to +-50 us.
  counted the plugin runs with ``prof=1``: its callbacks are timed in the vCPU
          thread's CPU time, and it counts the store callbacks it executed (REP
          string iterations apart), the store instructions it instrumented, the
          blocks translated and the time spent instrumenting them. With the price
          of one store callback (row ``stores``) this bounds what the plugin adds
          per armed call without timing the whole run: this is what the W1 figure
          of docs/plugin-engine.md rests on.

The time of a run is host wall time between the initramfs's ``KSWGDB-INIT ready``
and ``KSWGDB-INIT done`` console lines (boot and symbol loading excluded). Per
armed call = (median T_mode - median T_alone) / armed calls; slowdown = median
T_mode / median T_alone; "kswgdb/gdb" compares the two per armed call. QEMU's
CPU time between the same two lines is shown too (`bench/stamps.py`), per armed
call against the same baseline: on a shared host it moves much less than the
wall time. The
plugin engine is measured against ``alone10`` (same QEMU), and its per-call cost
is compared with the gdb script's too: one line per engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import stamps as bench_stamps  # noqa: E402  (bench/stamps.py: console line times)

from kswgdb.image import IMAGES_DIR  # noqa: E402
from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.qemu import binary  # noqa: E402
from kswgdb.qemu.fetch import fetch  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.run.oneshot import WatchSession  # noqa: E402
from kswgdb.run.options import RunOptions  # noqa: E402
from kswgdb.symbols.listing import build_listing  # noqa: E402
from kswgdb.symbols.program import Program  # noqa: E402

LINUX_TOML = IMAGES_DIR / "linux.toml"
READY, DONE = "KSWGDB-INIT ready", "KSWGDB-INIT done"
MODES = ("alone", "kswgdb", "kswgdb-bp", "kswgdb-chk", "gdb", "alone10", "plugin", "plugin0",
         "nostore")
#: gdbstub-engine modes with one option forced, and the option.
GDBSTUB_MODES = {"kswgdb": {}, "kswgdb-bp": {"release_by_check": False},
                 "kswgdb-chk": {"release_by_check": True}}
#: What each watched mode is measured against (the guest alone on the same QEMU).
BASELINE = {"kswgdb": "alone", "kswgdb-bp": "alone", "kswgdb-chk": "alone", "gdb": "alone",
            "plugin": "alone10", "plugin0": "alone10", "nostore": "alone10"}
#: The plugin modes, and the plugin arguments each adds (`kswplugin.c`'s ``stores=0``:
#: probes and releases as in ``plugin``, no store instrumented; catches nothing).
PLUGIN_MODES = {"plugin": (), "plugin0": (), "nostore": ("stores=0",)}
#: The plugin's watch that is probed at every call and never armed.
UNARMED_DEPTH = " dp=5"
#: Each engine's column in the summary lines, and its QEMU.
ENGINES = {"kswgdb": "gdbstub engine", "kswgdb-bp": "gdbstub engine, release breakpoints",
           "kswgdb-chk": "gdbstub engine, release by check", "plugin": "plugin engine"}
#: The rows with a per-armed-call figure (``stores`` prices one store callback).
HOT_ROWS = ("openat", "statx")
W1 = "cat /proc/self/stat >/dev/null; ls / >/dev/null; uname -a >/dev/null"


@dataclass(frozen=True)
class Row:
    name: str
    func: str
    command: str
    what: str


def rows(full: bool) -> list[Row]:
    n_never, n_hot, k_statx, where = (300, 300, 3, "/bin") if full else (100, 10, 3, "/")
    blocks = 32768 if full else 8192
    loop = f"for i in $(seq {{n}}); do {W1}; done"
    return [
        Row("never", "__sys_connect", loop.format(n=n_never), f"W1 x{n_never}, never called"),
        Row("openat", "do_sys_openat2", loop.format(n=n_hot), f"W1 x{n_hot}"),
        Row("statx", "vfs_statx",
            f"for i in $(seq {k_statx}); do ls -l {where} >/dev/null; done",
            f"ls -l {where} x{k_statx}"),
        Row("stores", "do_sys_openat2", f"dd if=/dev/zero of=/dev/null bs=64k count={blocks}",
            f"dd of {blocks} x 64 KiB from /dev/zero (kernel stores, few calls)"),
    ]


#: Console lines with the guest's own clock (``/proc/uptime``) around the workload.
GUEST_T0, GUEST_T1 = "LINUX-HOT-T0", "LINUX-HOT-T1"


def cmdline(row: Row) -> str:
    """``nokaslr`` in every mode: the gdb script breaks at the file's addresses.

    The workload is framed by the guest's uptime: under ``--icount`` the guest's
    clock counts the instructions it executed (plus idle time skipped), so equal
    guest times say each mode gave the guest the same work. The workload's own
    exit status is the command's."""
    clock = "read t rest </proc/uptime; echo {key} $t"
    return (f"nokaslr -- {clock.format(key=GUEST_T0)}; {row.command}; s=$?; "
            f"{clock.format(key=GUEST_T1)}; exit $s")


bench_stamps.stamp_lines(READY, DONE, GUEST_T0, GUEST_T1)
_LAST_MACHINE = bench_stamps.LAST_MACHINE


@dataclass
class Run:
    mode: str
    seconds: float | None = None
    cpu: float | None = None          # QEMU's CPU seconds between the two lines
    guest: float | None = None        # the guest's own seconds around the workload
    armed: int = 0
    calls: int = 0
    hits: int = 0
    packets: int = 0
    failed: str = ""
    extra: dict = field(default_factory=dict)


def _window(console, run: Run) -> None:
    stamps = bench_stamps.stamps(console)
    cpu = bench_stamps.cpu_stamps(console)
    if cpu.get(READY) is not None and cpu.get(DONE) is not None:
        run.cpu = cpu[DONE] - cpu[READY]
    with contextlib.suppress(KeyError, IndexError, ValueError):
        run.guest = (float(stamps[GUEST_T1][1].split(GUEST_T1)[1].split()[0])
                     - float(stamps[GUEST_T0][1].split(GUEST_T0)[1].split()[0]))
    if READY in stamps and DONE in stamps:
        run.seconds = stamps[DONE][0] - stamps[READY][0]
        if "status=0" not in stamps[DONE][1]:
            run.failed = run.failed or f"workload failed: {stamps[DONE][1].strip()}"
    else:
        run.failed = run.failed or f"no {READY}/{DONE} lines on the console"


def run_alone(image, row: Row, timeout: float, qemu10: str | None = None,
              clock: tuple[str, ...] = ()) -> Run:
    run = Run("alone" if qemu10 is None else "alone10")
    # QEMU 10 alone runs as the plugin engine does: no gdbstub, hence no -icount
    # (`Quirks.tcg_args`); only the gdbstub engine needs icount there. ``clock``
    # (--icount) is given to both alike.
    extra = {"qemu_binary": qemu10, "gdb": False, "extra_args": clock} if qemu10 else {}
    with Machine(image, accel="tcg", extra_cmdline=cmdline(row), paused=False,
                 **extra) as m:
        try:
            m.wait_for(DONE, timeout)
        except Exception as exc:  # noqa: BLE001
            run.failed = f"no end: {exc}".splitlines()[0]
        m.wait_exit(10)
        _window(m.console, run)
    return run


def run_kswgdb(image, row: Row, watch: str, timeout: float, qemu10: str | None = None,
               mode: str = "", clock: tuple[str, ...] = ()) -> Run:
    """kswgdb's gdbstub engine (the QEMU on PATH), or with ``qemu10`` its plugin engine
    (``clock``: the --icount arguments, as ``--qemu-arg`` gives them)."""
    run = Run(mode or ("kswgdb" if qemu10 is None else "plugin"))
    _LAST_MACHINE.clear()
    options = RunOptions(image=image.path, watches=[watch], accel="tcg", timeout=timeout,
                         cmdline=cmdline(row), qemu_args=list(clock) if qemu10 else [],
                         **GDBSTUB_MODES.get(run.mode, {}),
                         engine="gdbstub" if qemu10 is None else "plugin")
    with binary.using(qemu10) if qemu10 else contextlib.nullcontext():
        session = WatchSession(options, rig_options={"plugin_extra": (
            "prof=1", *PLUGIN_MODES.get(run.mode, ()))} if qemu10 else None)
        report = session.run()
    profile = getattr(session.rig.engine, "profile", None) if session.rig else None
    _window(_LAST_MACHINE[0].console if _LAST_MACHINE else None, run)
    s = report.summary[0]
    run.armed, run.calls, run.hits, run.packets = s["armed"], s["calls"], s["hits"], \
        report.packets
    run.extra = {"returns": s["returns"], "stale": s["stale"], "not_armed": s["not_armed"],
                 "unexpected_stops": report.unexpected_stops, "steps": report.steps,
                 "emulated": report.emulated, "refusals": report.emulation_refusals,
                 "check_releases": s.get("check_releases"), "slot_reads": s.get("slot_reads")}
    if profile:
        run.extra["callbacks_us"] = sum(profile.get(k, 0) for k in
                                        ("probe_ns", "release_ns", "store_ns")) / 1e3
        run.extra["profile"] = profile
    if report.fault:
        run.failed = run.failed or report.fault
    if run.hits:
        run.failed = run.failed or f"{run.hits} hits on a clean workload (false positive)"
    return run


GDB_SCRIPT = r'''
import gdb, json, os, resource
P = json.loads(os.environ["LINUX_HOT_PARAMS"])
for cmd in ("set pagination off", "set confirm off", "set can-use-hw-watchpoints 1",
            "set print thread-events off", "set width 0"):
    gdb.execute(cmd)
gdb.execute("target remote " + P["sock"])
inf = gdb.selected_inferior()
S = dict(calls=0, armed=0, returns=0, hits=0, refused=0, errors=0, end="?")
LIVE = {}      # CFA -> watchpoint, for calls in flight
DONE = []      # watchpoints whose call has released its frame: the loop deletes them
MASK = (1 << 64) - 1

def reg(name):
    return int(gdb.selected_frame().read_register(name)) & MASK

def word(addr):
    return int.from_bytes(inf.read_memory(addr, 8).tobytes(), "little")

def base(which):
    return reg("rbp") if which == "rbp" else reg("rsp")

class Watch(gdb.Breakpoint):
    def stop(self):
        S["hits"] += 1
        return False

class Release(gdb.Breakpoint):
    def __init__(self, addr, cfa_base, cfa_offset):
        super().__init__("*%#x" % addr, internal=True)
        self.silent = True
        self.cfa_base, self.cfa_offset = cfa_base, cfa_offset
    def stop(self):
        try:
            watch = LIVE.pop(base(self.cfa_base) + self.cfa_offset, None)
            if watch is None:
                return False        # a call that was not armed
            S["returns"] += 1
            DONE.append(watch)
            return True             # gdb 13 crashes if stop() deletes breakpoints
        except Exception as exc:
            S["errors"] += 1
            S["last_error"] = repr(exc)
            return False

class Probe(gdb.Breakpoint):
    def stop(self):
        try:
            S["calls"] += 1
            cfa = base(P["cfa_base"]) + P["cfa_offset"]
            slot = base(P["base"]) + P["offset"]
            if word(slot) != word(reg("gs_base") + P["guard_gs"]) or cfa in LIVE:
                S["refused"] += 1
                return False
            LIVE[cfa] = Watch("*(unsigned long *)%#x" % slot, gdb.BP_WATCHPOINT,
                              gdb.WP_WRITE, internal=True)
            S["armed"] += 1
            return False
        except Exception as exc:
            S["errors"] += 1
            S["last_error"] = repr(exc)
            return False

Probe("*%#x" % P["probe"], internal=True)
for addr, cfa_base, cfa_offset in P["exits"]:
    Release(addr, cfa_base, cfa_offset)
while True:
    try:
        gdb.execute("continue")
    except gdb.error as exc:        # "Remote connection closed": the guest powered off
        S["end"] = str(exc)
        break
    except KeyboardInterrupt:
        S["end"] = "interrupted"
        break
    if not DONE:
        S["spurious"] = S.get("spurious", 0) + 1     # a stop nobody asked for
        if S["spurious"] > 100:
            S["end"] = "stopped"
            break
    while DONE:
        DONE.pop().delete()
ru = resource.getrusage(resource.RUSAGE_SELF)
S["cpu"] = ru.ru_utime + ru.ru_stime
print("LINUX_HOT_RESULT " + json.dumps(S), flush=True)
'''


def run_gdb(image, row: Row, spec, timeout: float, workdir: Path) -> Run:
    run = Run("gdb")
    script, out_path = workdir / "linux_hot_gdb.py", workdir / "gdb.out"
    script.write_text(GDB_SCRIPT)
    with Machine(image, accel="tcg", extra_cmdline=cmdline(row), paused=True) as m:
        params = {"sock": str(m.gdb_socket), "probe": spec.probe_addr,
                  "cfa_base": spec.cfa_base, "cfa_offset": spec.cfa_offset,
                  "base": spec.base, "offset": spec.offset, "guard_gs": spec.guard.offset,
                  "exits": [list(e) for e in spec.exits]}
        env = dict(os.environ, LINUX_HOT_PARAMS=json.dumps(params), DEBUGINFOD_URLS="")
        with open(out_path, "w") as out:
            proc = subprocess.Popen(["gdb", "-nx", "-batch", "-x", str(script),
                                     str(image.symbols)], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            run.failed = f"gdb still running after {timeout:g}s"
        finally:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        m.wait_exit(10)
        _window(m.console, run)
    text = out_path.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("LINUX_HOT_RESULT ")), None)
    result = json.loads(line.split(" ", 1)[1]) if line else {}
    if not result:
        run.failed = run.failed or "no result from gdb: " + " | ".join(text.splitlines()[-3:])
    run.armed, run.calls, run.hits = (result.get(k, 0) for k in ("armed", "calls", "hits"))
    run.extra = {k: result.get(k) for k in ("returns", "refused", "errors", "last_error",
                                            "spurious", "end")}
    if result.get("errors"):
        run.failed = run.failed or f"{result['errors']} errors in the gdb script"
    return run


# ------------------------------------------------------------------ report
def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def report(row: Row, runs: dict[str, list[Run]], verbose: bool = False) -> dict:
    t = {m: _median([r.seconds for r in rs if not r.failed]) for m, rs in runs.items()}
    c = {m: _median([r.cpu for r in rs if not r.failed]) for m, rs in runs.items()}
    armed = {m: _median([r.armed for r in rs if not r.failed]) for m, rs in runs.items()}
    out: dict = {"row": row.name}
    print(f"\n{row.name}: {row.what}, watching {row.func}")
    print(f"  {'mode':7} {'ok/reps':>7} {'median s':>9} {'slowdown':>9} {'armed':>6} "
          f"{'us/armed call':>13} {'QEMU CPU s':>10} {'CPU us/call':>11} {'packets/armed':>13}")
    for mode in MODES:
        if mode not in runs:
            continue
        rs = runs[mode]
        if mode == "plugin0":
            armed[mode] = armed.get("plugin")     # per call of the armed run, by design
        ok = [r for r in rs if not r.failed]
        base_mode = BASELINE.get(mode, mode)
        base, cbase = t.get(base_mode), c.get(base_mode)
        slow = t[mode] / base if t.get(mode) is not None and base else None
        per = cper = None
        if mode in BASELINE and armed[mode]:
            if base is not None and t[mode] is not None:
                per = (t[mode] - base) / armed[mode] * 1e6
            if cbase is not None and c[mode] is not None:
                cper = (c[mode] - cbase) / armed[mode] * 1e6
        pk = _median([r.packets / r.armed for r in ok if r.armed]) \
            if mode in GDBSTUB_MODES else None
        out[mode] = {"seconds": t[mode], "slowdown": slow, "armed": armed[mode], "us_per": per,
                     "cpu": c[mode], "cpu_us_per": cper,
                     "cpu_slowdown": c[mode] / cbase if c[mode] and cbase else None}
        print(f"  {mode:7} {len(ok):>3}/{len(rs):<3} {_fmt(t[mode], '.3f'):>9} "
              f"{_fmt(slow):>8}x {_fmt(armed[mode], '.0f'):>6} {_fmt(per, '.0f'):>13} "
              f"{_fmt(c[mode], '.2f'):>10} {_fmt(cper, '.0f'):>11} {_fmt(pk, '.1f'):>13}")
    g = out.get("gdb", {})
    for mode, engine in ENGINES.items():
        k = out.get(mode, {})
        if row.name == "never" and k.get("slowdown"):
            print(f"  never-called watch, {engine}: {k['slowdown']:.2f}x the guest alone "
                  f"(QEMU CPU {_fmt(k.get('cpu_slowdown'))}x; aim <= 1.2x)"
                  + (f"; gdb script {g['slowdown']:.2f}x" if g.get("slowdown") else ""))
        elif row.name in HOT_ROWS and k.get("us_per") is not None:
            aim = "10 ms" if mode in GDBSTUB_MODES else "50 us"
            ratio = (f"; ratio to the gdb script {k['us_per'] / g['us_per']:.3f} (gdb "
                     f"{g['us_per'] / 1e3:.1f} ms)" if g.get("us_per") else "")
            print(f"  per armed call, {engine}: {k['us_per']:.0f} us wall, "
                  f"{_fmt(k.get('cpu_us_per'), '.0f')} us QEMU CPU (aim <= {aim}){ratio}")
    in_plugin = _median([r.extra.get("callbacks_us") for r in runs.get("plugin", [])
                         if not r.failed])
    if in_plugin is not None and armed.get("plugin"):
        print(f"  per armed call, plugin engine, inside its callbacks (probe, release, "
              f"store checks past the range test; the vCPU thread's CPU time): "
              f"{in_plugin / armed['plugin']:.1f} us (aim <= 50 us)")
    k, u = out.get("plugin", {}), out.get("plugin0", {})
    if row.name in HOT_ROWS and k.get("armed") and k.get("cpu") and u.get("cpu"):
        print(f"  per armed call, plugin engine, against plugin0 (the same probes and store "
              f"callbacks, nothing armed): {(k['seconds'] - u['seconds']) / k['armed'] * 1e6:.0f}"
              f" us wall, {(k['cpu'] - u['cpu']) / k['armed'] * 1e6:.0f} us QEMU CPU "
              "(aim <= 50 us)")
    n = out.get("nostore", {})
    if row.name in HOT_ROWS and k.get("armed") and k.get("cpu") and n.get("cpu"):
        print(f"  per armed call, the store check alone (plugin against nostore): "
              f"{(k['cpu'] - n['cpu']) / k['armed'] * 1e6:.0f} us QEMU CPU; probes and "
              f"arming (nostore against alone10): {_fmt(n.get('cpu_us_per'), '.0f')} us")
    _spread(row, runs, armed.get("plugin") or armed.get("kswgdb"))
    _store_counts(row, runs, out)
    for mode, rs in runs.items():
        for i, r in enumerate(rs):
            if r.failed or verbose:
                print(f"  {mode} rep {i + 1}: {r.failed or 'ok'}; calls {r.calls}, {r.extra}")
    return out


def _spread(row: Row, runs: dict[str, list[Run]], armed: float | None) -> None:
    """How far QEMU's CPU time moved between reps, per mode, in us per armed call.

    The medians above are only as good as this: a mode whose own CPU time moves by
    more than the cost looked for between identical reps cannot resolve it. Reps
    are interleaved, so rep i of a watched mode is also set against rep i of its
    baseline (same minutes, same host load): the range of those paired figures.
    """
    if row.name not in HOT_ROWS or not armed:
        return
    for mode, rs in runs.items():
        cpu = [r.cpu for r in rs if not r.failed and r.cpu is not None]
        if len(cpu) < 2:
            continue
        base = BASELINE.get(mode)
        pairs = [(r.cpu - b.cpu) / armed * 1e6
                 for r, b in zip(rs, runs.get(base, []), strict=False)
                 if not r.failed and not b.failed and None not in (r.cpu, b.cpu)]
        paired = (f"; rep by rep against {base}: {min(pairs):.0f} to {max(pairs):.0f} us"
                  if len(pairs) >= 2 else "")
        guest = [r.guest for r in rs if not r.failed and r.guest is not None]
        print(f"  spread, {mode}: QEMU CPU {min(cpu):.2f}-{max(cpu):.2f} s over {len(cpu)} "
              f"reps = {(max(cpu) - min(cpu)) / armed * 1e6:.0f} us per armed call"
              + paired + (f"; guest clock {min(guest):.2f}-{max(guest):.2f} s"
                          if guest else ""))


def _profile(runs: dict[str, list[Run]], mode: str, key: str) -> float | None:
    return _median([r.extra.get("profile", {}).get(key) for r in runs.get(mode, [])
                    if not r.failed])


def _store_counts(row: Row, runs: dict[str, list[Run]], out: dict) -> None:
    """What the plugin adds, counted rather than timed (``prof=1``).

    Every kernel store but pushes and calls runs the plugin's store callback, armed
    watch or not (one call per iteration of a REP string store): counted per vCPU
    over the whole run, boot included. On ``stores`` (one dd, nearly every callback
    in the window) plugin0 against nostore prices one callback: a lower bound, as
    the boot's callbacks are in the count but not in the CPU window.
    """
    calls, armed = _profile(runs, "plugin", "store_calls"), out.get("plugin", {}).get("armed")
    if calls is not None and armed and row.name in HOT_ROWS:
        reps, sites, tbs, trans = (_profile(runs, "plugin", k) or 0 for k in
                                   ("rep_calls", "store_sites", "tbs", "trans_ns"))
        kinds = ", ".join(f"{(_profile(runs, 'plugin', key) or 0) / calls:.0%} {what}"
                          for key, what in (("rip_calls", "RIP-relative"),
                                            ("gs_abs_calls", "%gs absolute"),
                                            ("rsp_calls", "RSP-based")))
        print(f"  plugin, counted: {calls / armed:.0f} store callbacks per armed call (whole "
              f"run, boot included; {reps / calls:.0%} REP string iterations, {kinds}), "
              f"{sites:.0f} store instructions instrumented in {tbs:.0f} blocks "
              f"({trans / 1e6:.0f} ms instrumenting them)")
    u, n = out.get("plugin0", {}), out.get("nostore", {})
    calls0 = _profile(runs, "plugin0", "store_calls")
    if row.name == "stores" and calls0 and u.get("cpu") and n.get("cpu"):
        print(f"  one store callback (plugin0 against nostore, {calls0 / 1e6:.0f} M callbacks, "
              f"boot's included): {(u['cpu'] - n['cpu']) / calls0 * 1e9:.1f} ns QEMU CPU "
              f"(a lower bound)")


def machine_facts() -> str:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: nproc {os.cpu_count()}, {platform.machine()}, {qemu}, loadavg {load}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the workload sizes of issue 13")
    ap.add_argument("--rows", default="never,openat,statx",
                    help="never,openat,statx, and stores: the cost of one store callback")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--timeout", type=float, default=600.0, help="hard bound per run (s)")
    ap.add_argument("--verbose", action="store_true", help="counts of every run")
    ap.add_argument("--icount", type=int, metavar="SHIFT", default=None,
                    help="run the QEMU 10 modes (alone10, plugin, plugin0, nostore) with "
                         "-icount shift=SHIFT,sleep=off: a guest clock that follows the "
                         "instructions executed, not the host's")
    args = ap.parse_args()
    chosen = [r for r in rows(args.full) if r.name in args.rows.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if not chosen or any(m not in MODES for m in modes):
        ap.error(f"--rows: never,openat,statx,stores; --modes: {','.join(MODES)}")
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        print("linux_hot: the Debian image is not built (make image-linux)", file=sys.stderr)
        return 2
    if "gdb" in modes and shutil.which("gdb") is None:
        ap.error("gdb not found")
    if args.icount is not None and not 0 <= args.icount <= 10:
        ap.error("--icount: a shift from 0 to 10")
    clock = () if args.icount is None else ("-icount", f"shift={args.icount},sleep=off")
    qemu10 = str(fetch().binary) if {"alone10", *PLUGIN_MODES} & set(modes) else None
    image = load_image(LINUX_TOML)
    program = Program.load(image.symbols)
    print(machine_facts() + (f"; QEMU 10 modes with {' '.join(clock)}" if clock else ""))
    workdir = Path(tempfile.mkdtemp(prefix="kswgdb-linux-hot-"))
    results = []
    t_all = time.monotonic()
    try:
        for row in chosen:
            watch = build_listing(program, row.func).suggested_config
            prep = WatchSession(RunOptions(image=image.path, watches=[watch],
                                           engine="gdbstub"))
            prep.prepare()
            spec = prep.specs[0]
            print(f"\n[{row.name}] watch {watch!r}: probe {spec.probe_addr:#x}, "
                  f"{len(spec.exits)} release points; {args.reps} reps interleaved", flush=True)
            runs: dict[str, list[Run]] = {m: [] for m in modes}
            for rep in range(args.reps):
                order = modes[rep % len(modes):] + modes[:rep % len(modes)]
                for mode in order:
                    t0 = time.monotonic()
                    try:
                        if mode in ("alone", "alone10"):
                            r = run_alone(image, row, args.timeout,
                                          qemu10 if mode == "alone10" else None, clock)
                        elif mode in GDBSTUB_MODES or mode in PLUGIN_MODES:
                            r = run_kswgdb(image, row, watch + UNARMED_DEPTH * (
                                mode == "plugin0"), args.timeout,
                                qemu10 if mode in PLUGIN_MODES else None, mode, clock)
                        else:
                            r = run_gdb(image, row, spec, args.timeout, workdir)
                    except Exception as exc:  # noqa: BLE001 - one bad run must not end it
                        r = Run(mode, failed=f"{type(exc).__name__}: {exc}".splitlines()[0])
                    runs[mode].append(r)
                    print(f"  rep {rep + 1} {mode:6} {_fmt(r.seconds, '.3f')} s "
                          f"({_fmt(r.cpu)} s QEMU CPU, guest {_fmt(r.guest)} s), armed "
                          f"{r.armed}, run took {time.monotonic() - t0:.1f}s"
                          + (f" FAILED: {r.failed}" if r.failed else ""), flush=True)
            results.append(report(row, runs, args.verbose))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntotal bench time {time.monotonic() - t_all:.0f}s; {machine_facts()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
