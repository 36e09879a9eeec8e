"""Cost of one armed call: kswgdb against the guest alone and a hand-written gdb script.

Usage: python3 bench/armed_call.py [--reps 5] [--iters 1000] [--profile]

Scenario 6 of the test kernel ("clean": 3 tasks call s3_victim ``iters`` times in
total) runs under TCG in six modes, interleaved rep by rep (the order rotates),
because this shared machine is noisy (+-30% between runs):

  alone    no debugger: Machine(paused=False)
  floor    QEMU's own cost of the two breakpoint stops an armed call needs, and
           nothing else: a breakpoint at the probe and one at each release
           point, toggled (at a probe stop the probe goes out and the release
           points in, and back at a release stop), each stop answered by one
           write holding the two changes and the ``c``: no register or memory
           read, no step. Toggling misses the calls other tasks make meanwhile,
           so its per-call cost is per probe stop. "floor ratio" = armed / floor
  armed    kswgdb (WatchSession), watching s3_victim's canary; every call armed;
           breakpoints are left by emulating their instruction on the host
  readrel  armed, with RunOptions.release_by_read: the release point is seen by a
           read watchpoint on the saved register the epilogue pops right after it
           (kswgdb.watch.readrelease), a watchpoint stop, instead of a breakpoint;
           s3_victim releases with `add rsp` (no read), so it keeps its breakpoint
  checkrel armed, with RunOptions.release_by_check: the watch is an access
           watchpoint (Z4) and the stack-protector check's read of the slot is the
           release (kswgdb.watch.checkrelease): no release-point breakpoint, one
           breakpoint stop (the probe) and one watchpoint stop per call ("armed"
           keeps the release-point breakpoints whatever the default)
  readrel-x  EXPERIMENT, not a kswgdb mode: readrel with readrelease.MAX_STRETCH
           raised to 8, so s3_victim's release is seen by the `pop rbx` two
           instructions after `add rsp`. Unsafe: QEMU 7.2 cuts every TB on a page
           holding a gdb breakpoint (the probe) to one instruction, so an interrupt
           can land between the release and the read (a wedge, see Hangs); and with
           2 vCPUs a read hit that QEMU reports for the other vCPU's stop leaves a
           stale watchpoint_hit that aborts QEMU (BQL assertion). Use --cpus 1.
  stepped  the same, with emulation off (RunOptions.emulate=False): every
           breakpoint is left by a real single-step, as before
  unarmed  the same config plus ``dp=5``: every call is probed and returned from,
           none is armed (the depth never reaches 5)
  gdb      gdb 13 in batch mode running a Python script a user would write by hand:
           a breakpoint at the probe point whose ``stop()`` reads rbp, checks the
           canary slot against ``__stack_chk_guard``, creates a write watchpoint
           and a return breakpoint, and returns False

The time of a run is host wall time between the ``KSWTEST start`` and ``KSWTEST
verdict`` console lines, stamped when the console reader receives them (the guest
has no clock of its own that keeps running while a debugger holds it: QEMU
stops the virtual clock while the VM is stopped, so ``jiffies`` is printed only
for information). Per-call cost = (median T_mode - median T_alone) / calls.

Hangs. With a write watchpoint armed, QEMU 7.2 TCG can lose a timer interrupt
for good (the watchpoint fires on the interrupt frame the CPU pushes; delivery
is abandoned after the LAPIC moved the vector to ISR, so it is never EOI'd).
CPU 0's tick stops, ``jiffies`` stops and the guest's final ``task_join`` sleeps
forever. A watchdog polls ``info lapic`` over QMP; a run whose CPU 0 has vector
32 both in service and pending on 3 polls in a row is stopped and counted as
*wedged*. Wedged runs have no verdict time; for them (and all debugged runs)
the time to the last s3_victim return is also recorded ("to last ret").

Where the time goes (see --profile): QEMU 7.2's gdbstub flushes the whole TB
cache at every breakpoint and single-step stop (gdb_vm_state_change calls
tb_flush; removed upstream in 2025), never at a watchpoint stop; the guest then
re-translates everything it runs. Stepping, kswgdb has 4 such stops per armed
call (probe, step off it, release point, step off it); emulating the
instruction under the breakpoint on the host (kswgdb.emulate.x86) leaves 2,
the probe and the release point themselves.

gdb note: gdb 13 crashes (SIGSEGV) when a ``Breakpoint.stop()`` deletes
breakpoints, which its manual forbids; so the baseline's return breakpoint
returns True on the matching return and the script's ``continue`` loop deletes
the watchpoint and the return breakpoint, then continues.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import stamps as bench_stamps  # noqa: E402  (bench/stamps.py: console line times)

from kswgdb import image as image_mod  # noqa: E402
from kswgdb.gdbstub import client as client_mod  # noqa: E402
from kswgdb.gdbstub import requests as rq  # noqa: E402
from kswgdb.gdbstub import transport as transport_mod  # noqa: E402
from kswgdb.gdbstub.errors import StubClosed, StubTimeout  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.run.oneshot import WatchSession  # noqa: E402
from kswgdb.run.options import RunOptions  # noqa: E402
from kswgdb.symbols.program import Program  # noqa: E402
from kswgdb.watch import engine as engine_mod  # noqa: E402
from kswgdb.watch import readrelease  # noqa: E402
from kswgdb.watch.scenarios import scenario_watch  # noqa: E402

SCENARIO = 6
STAMPED = ("KSWTEST start", "KSWTEST stats", "KSWTEST verdict")
MODES = ("alone", "floor", "armed", "checkrel", "readrel", "readrel-x", "stepped", "unarmed",
         "gdb")

# --------------------------------------------------------------------------
# Instrumentation, bench-only (monkeypatches in this process; nothing is edited)
# --------------------------------------------------------------------------

bench_stamps.stamp_lines(*STAMPED)
_LAST_MACHINE = bench_stamps.LAST_MACHINE

_RETURNS = {"count": 0, "last": None}


def _stamp_returns(name: str) -> None:
    """Wrap an Engine handler that ends a watched call (return or release point)."""
    orig = getattr(engine_mod.Engine, name, None)
    if orig is None:
        return

    def wrapper(self, stop, _orig=orig):
        _orig(self, stop)
        _RETURNS["count"] += 1
        _RETURNS["last"] = time.monotonic()

    setattr(engine_mod.Engine, name, wrapper)


for _name in ("_on_return", "_on_exit", "_on_release_read"):
    _stamp_returns(_name)


def _stamp_check_releases() -> None:
    """Wrap the access-watch handler: only a check's read that ended a frame is a return."""
    orig = engine_mod.Engine._on_access

    def wrapper(self, stop, _orig=orig):
        before = sum(s.check_releases for s in self.stats)
        verdict = _orig(self, stop)
        if sum(s.check_releases for s in self.stats) > before:
            _RETURNS["count"] += 1
            _RETURNS["last"] = time.monotonic()
        return verdict

    engine_mod.Engine._on_access = wrapper


_stamp_check_releases()

_WEDGE = {"since": None, "expect": 0}     # set by the watchdog during a kswgdb run
STALL_SECONDS = 3.0
_orig_engine_run = engine_mod.Engine.run


def _wedged_and_done() -> bool:
    """The guest is wedged and the workload is over (all calls returned, or no progress)."""
    since = _WEDGE["since"]
    if since is None:
        return False
    if _RETURNS["count"] >= _WEDGE["expect"]:
        return True
    return time.monotonic() - max(since, _RETURNS["last"] or 0.0) > STALL_SECONDS


def _stoppable_run(self, deadline=None, should_stop=None, poll=0.25, **more):
    """Engine.run, also ended once the bench's watchdog saw the guest wedged."""
    def stop_now():
        return _wedged_and_done() or (should_stop is not None and should_stop())
    return _orig_engine_run(self, deadline=deadline, should_stop=stop_now, poll=poll, **more)


engine_mod.Engine.run = _stoppable_run


# --------------------------------------------------------------------------
# Wedge watchdog: CPU 0's timer vector stuck in service
# --------------------------------------------------------------------------

class Watchdog:
    """Polls ``info lapic`` while a run lasts; calls ``on_wedge`` once if CPU 0 is wedged."""

    def __init__(self, get_machine, on_wedge=lambda: None, period: float = 0.5,
                 polls: int = 3) -> None:
        self.get_machine = get_machine
        self.on_wedge = on_wedge
        self.period, self.polls = period, polls
        self.wedged = False
        self.wedged_cpus: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-watchdog")

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    @staticmethod
    def _stuck(machine: Machine, cpu: int) -> bool:
        out = machine.qmp.execute("human-monitor-command",
                                  {"command-line": f"info lapic {cpu}"}, timeout=2)
        isr = re.search(r"^ISR\s+(.*)$", out, re.M)
        irr = re.search(r"^IRR\s+(.*)$", out, re.M)
        return bool(isr and irr and "32" in isr.group(1).split()
                    and "32" in irr.group(1).split())

    def _loop(self) -> None:
        streak = 0
        while not self._stop.wait(self.period):
            machine = self.get_machine()
            if machine is None or not machine.running:
                streak = 0
                continue
            try:
                streak = streak + 1 if self._stuck(machine, 0) else 0
            except Exception:  # noqa: BLE001 - QEMU may be exiting; try again
                streak = 0
                continue
            if streak >= self.polls:
                self.wedged = True
                with contextlib.suppress(Exception):
                    self.wedged_cpus = [c for c in (0, 1) if self._stuck(machine, c)]
                self.on_wedge()
                return


# --------------------------------------------------------------------------
# One run per mode
# --------------------------------------------------------------------------

@dataclass
class Run:
    mode: str
    seconds: float | None = None          # START -> VERDICT
    to_last_return: float | None = None   # START -> last s3_victim return (debugged modes)
    calls: int = 0                        # armed calls (armed, gdb) / probed calls (unarmed)
    wedged: bool = False
    wedged_cpus: list = field(default_factory=list)
    failed: str = ""
    jiffies: int | None = None
    packets: int = 0
    steps: int = 0
    emulated: int = 0                     # breakpoint instructions run on the host
    hits: int = 0
    cpu_self: float = 0.0                 # CPU seconds of the debugger (kswgdb or gdb)
    cpu_qemu: float = 0.0
    extra: dict = field(default_factory=dict)


def _stamps(console) -> dict:
    return bench_stamps.stamps(console)


def _fill_times(run: Run, stamps: dict, last_return: float | None) -> None:
    start = stamps.get("KSWTEST start")
    verdict = stamps.get("KSWTEST verdict")
    stats = stamps.get("KSWTEST stats")
    if start and verdict:
        run.seconds = verdict[0] - start[0]
    if start and last_return:
        run.to_last_return = last_return - start[0]
    if stats:
        m = re.search(r"jiffies=(\d+)", stats[1])
        run.jiffies = int(m.group(1)) if m else None
    if verdict and "result=clean" not in verdict[1]:
        run.failed = run.failed or "verdict not clean"


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


ROUND_TRIPS = {"count": 0}
_orig_request = client_mod.RemoteClient.request
_orig_pipeline = client_mod.RemoteClient.pipeline


def _counting_request(self, payload, timeout=None):
    ROUND_TRIPS["count"] += 1
    return _orig_request(self, payload, timeout)


def _counting_pipeline(self, payloads, timeout=None):
    ROUND_TRIPS["count"] += 1
    return _orig_pipeline(self, payloads, timeout)


client_mod.RemoteClient.request = _counting_request
client_mod.RemoteClient.pipeline = _counting_pipeline


def run_floor(image, spec, iters: int, timeout: float) -> Run:
    """The two breakpoint stops per call and nothing else (see ``floor`` above)."""
    run = Run("floor")
    probe = spec.probe_addr
    releases = sorted({addr for addr, _, _ in spec.exits})
    if not releases:
        run.failed = "the watched function has no release point"
        return run
    to_release = [rq.remove_breakpoint(probe), *map(rq.insert_breakpoint, releases)]
    to_probe = [*map(rq.remove_breakpoint, releases), rq.insert_breakpoint(probe)]
    c0 = _children_cpu()
    last = None
    with Machine(image, accel="tcg", scenario=SCENARIO, extra_cmdline=f"iters={iters}",
                 paused=True) as m:
        client = client_mod.RemoteClient.connect(str(m.gdb_socket), timeout=10.0)
        try:
            client.handshake()
            rq.check_ok(client.request(rq.insert_breakpoint(probe)), "Z0")
            trips0, pairs, deadline = ROUND_TRIPS["count"], 0, time.monotonic() + timeout
            at_probe = True         # which breakpoints are in: the next stop is at them
            client.pipeline(["c"])
            while time.monotonic() < deadline:
                try:
                    stop = client.wait_stop(max(0.1, deadline - time.monotonic()))
                except (StubClosed, StubTimeout):
                    break
                if stop.exited:
                    break
                if at_probe:
                    replies = client.pipeline([*to_release, "c"])
                else:
                    pairs += 1
                    last = time.monotonic()
                    replies = client.pipeline([*to_probe, "c"])
                at_probe = not at_probe
                for reply in replies:
                    rq.check_ok(reply, "Z/z")
            run.extra = {"round_trips": ROUND_TRIPS["count"] - trips0, "release_stops": pairs}
        finally:
            client.close()
        m.wait_exit(10)
        console = m.console
    run.cpu_qemu = _children_cpu() - c0
    run.calls = pairs
    _fill_times(run, _stamps(console), last)
    return run


def run_alone(image, iters: int, timeout: float) -> Run:
    run = Run("alone")
    c0 = _children_cpu()
    with Machine(image, accel="tcg", scenario=SCENARIO, extra_cmdline=f"iters={iters}",
                 paused=False) as m:
        try:
            m.wait_for(r"^KSWTEST verdict", timeout)
        except Exception as exc:  # noqa: BLE001
            run.failed = f"no verdict: {exc}".splitlines()[0]
        m.wait_exit(10)
        console = m.console
    run.cpu_qemu = _children_cpu() - c0
    _fill_times(run, _stamps(console), None)
    run.calls = iters
    return run


def run_kswgdb(image, watch: str, iters: int, timeout: float, mode: str,
               emulate: bool = True, release_by_read: bool = False,
               release_by_check: bool = False) -> Run:
    run = Run(mode)
    _RETURNS.update(count=0, last=None)
    _WEDGE.update(since=None, expect=iters)
    _LAST_MACHINE.clear()
    c0, s0, trips0 = _children_cpu(), _self_cpu(), ROUND_TRIPS["count"]
    session = WatchSession(RunOptions(image=image.path, scenario=SCENARIO, watches=[watch],
                                      accel="tcg", timeout=timeout, cmdline=f"iters={iters}",
                                      emulate=emulate, release_by_read=release_by_read,
                                      release_by_check=release_by_check))
    session.prepare()
    def on_wedge():
        _WEDGE["since"] = time.monotonic()

    with Watchdog(lambda: _LAST_MACHINE[0] if _LAST_MACHINE else None, on_wedge) as dog:
        report = session.run()
    run.cpu_self = _self_cpu() - s0
    run.cpu_qemu = _children_cpu() - c0
    run.wedged, run.wedged_cpus = dog.wedged, dog.wedged_cpus
    console = _LAST_MACHINE[0].console if _LAST_MACHINE else None
    _fill_times(run, _stamps(console), _RETURNS["last"])
    s = report.summary[0]
    run.calls = s["calls"] if mode == "unarmed" else s["armed"]
    run.packets, run.steps, run.hits = report.packets, report.steps, s["hits"]
    run.emulated = report.emulated
    run.extra = {"round_trips": ROUND_TRIPS["count"] - trips0,
                 "reason": report.result.reason, "returns": s["returns"],
                 "dead_frame_writes": s.get("dead_frame_writes"),
                 "unexpected_stops": report.unexpected_stops,
                 "read_releases": s.get("read_releases"), "foreign_reads": s.get("foreign_reads"),
                 "check_releases": s.get("check_releases"), "slot_reads": s.get("slot_reads")}
    if report.result.reason != "exit" and not run.wedged:
        run.failed = f"engine ended: {report.result.reason}"
    if report.fault and not run.wedged:
        run.failed = report.fault          # e.g. QEMU aborted (readrel-x on 2 vCPUs)
    return run


GDB_SCRIPT = r'''
import gdb, json, os, resource, time
P = json.loads(os.environ["ARMED_CALL_PARAMS"])
for cmd in ("set pagination off", "set confirm off", "set can-use-hw-watchpoints 1",
            "set print thread-events off", "set width 0"):
    gdb.execute(cmd)
gdb.execute("target remote " + P["sock"])
inf = gdb.selected_inferior()
S = dict(calls=0, armed=0, returns=0, hits=0, refused=0, hw_watchpoints=0, errors=0,
         last_return=None, end="?")
DONE = []      # return breakpoints whose call has returned: the loop disarms them
MASK = (1 << 64) - 1

def reg(name):
    return int(gdb.selected_frame().read_register(name)) & MASK

def word(addr):
    return int.from_bytes(inf.read_memory(addr, 8).tobytes(), "little")

class Watch(gdb.Breakpoint):
    def stop(self):
        S["hits"] += 1
        return False

class Return(gdb.Breakpoint):
    def __init__(self, addr, cfa, watch):
        super().__init__("*%#x" % addr, internal=True, temporary=False)
        self.silent = True
        self.cfa, self.watch, self.done = cfa, watch, False
    def stop(self):
        try:
            if self.done or reg("rsp") != self.cfa:
                return False        # another task's call returning to the same place
            self.done = True
            S["returns"] += 1
            S["last_return"] = time.monotonic()
            if S["returns"] == P["expect"]:
                print("ARMED_CALL_ALL_RETURNED", flush=True)
            DONE.append(self)
            return True             # gdb 13 crashes if stop() deletes breakpoints
        except Exception:
            S["errors"] += 1
            return False

class Probe(gdb.Breakpoint):
    def stop(self):
        try:
            S["calls"] += 1
            sp, fp = reg("rsp"), reg("rbp")
            cfa = (fp if P["cfa_base"] == "rbp" else sp) + P["cfa_offset"]
            slot = (fp if P["base"] == "rbp" else sp) + P["offset"]
            if word(slot) != word(P["guard"]):
                S["refused"] += 1
                return False
            ret = word(cfa - 8)
            watch = Watch("*(unsigned long *)%#x" % slot, gdb.BP_WATCHPOINT, gdb.WP_WRITE,
                          internal=True)
            if watch.type == gdb.BP_HARDWARE_WATCHPOINT:
                S["hw_watchpoints"] += 1
            Return(ret, cfa, watch)
            S["armed"] += 1
            return False
        except Exception:
            S["errors"] += 1
            return False

Probe("*%#x" % P["probe"], internal=True)
print("ARMED_CALL_READY", flush=True)
while True:
    try:
        gdb.execute("continue")
    except gdb.error as exc:        # "Remote connection closed": the guest exited
        S["end"] = str(exc)
        break
    except KeyboardInterrupt:
        S["end"] = "interrupted"
        break
    if not DONE:
        S["end"] = "stopped"        # SIGINT from the bench (wedged guest) or a stray stop
        break
    while DONE:
        bp = DONE.pop()
        bp.watch.delete()
        bp.delete()
ru = resource.getrusage(resource.RUSAGE_SELF)
S["cpu"] = ru.ru_utime + ru.ru_stime
print("ARMED_CALL_RESULT " + json.dumps(S), flush=True)
'''


def _supervise_gdb(proc, out_path: Path, dog: Watchdog, timeout: float, run: Run) -> None:
    """Wait for gdb; interrupt it (SIGINT, repeated: gdb drops one that arrives while it
    handles a stop) when the guest is wedged and the workload is over, or at the timeout."""
    deadline = time.monotonic() + timeout
    last_size, last_change, last_sig, sigints = -1, time.monotonic(), 0.0, 0
    while proc.poll() is None:
        time.sleep(0.2)
        now = time.monotonic()
        size = out_path.stat().st_size
        if size != last_size:
            last_size, last_change = size, now
        done = dog.wedged and ("ARMED_CALL_ALL_RETURNED" in out_path.read_text(errors="replace")
                               or now - last_change > STALL_SECONDS)
        if now > deadline and not run.failed:
            run.failed = f"gdb still running after {timeout:g}s"
        if not (done or now > deadline):
            continue
        if sigints >= 10:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        if now - last_sig > 1.0:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)
            sigints, last_sig = sigints + 1, now
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def run_gdb(image, spec, iters: int, timeout: float, script: Path, workdir: Path) -> Run:
    run = Run("gdb")
    c0 = _children_cpu()
    out_path = workdir / "gdb.out"
    with Machine(image, accel="tcg", scenario=SCENARIO, extra_cmdline=f"iters={iters}",
                 paused=True) as m:
        params = {
            "sock": str(m.gdb_socket), "probe": spec.probe_addr,
            "cfa_base": spec.cfa_base, "cfa_offset": spec.cfa_offset,
            "base": spec.base, "offset": spec.offset, "guard": spec.guard.addr,
            "expect": iters,
        }
        env = dict(os.environ, ARMED_CALL_PARAMS=json.dumps(params), DEBUGINFOD_URLS="")
        with open(out_path, "w") as out:
            proc = subprocess.Popen(
                ["gdb", "-nx", "-batch", "-x", str(script), str(image.symbols)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            with Watchdog(lambda: m) as dog:
                _supervise_gdb(proc, out_path, dog, timeout, run)
            run.wedged, run.wedged_cpus = dog.wedged, dog.wedged_cpus
        finally:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        console = m.console
        if not run.wedged and not run.failed:
            m.wait_exit(10)
    run.cpu_qemu = _children_cpu() - c0
    text = out_path.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("ARMED_CALL_RESULT ")), None)
    result = json.loads(line.split(" ", 1)[1]) if line else {}
    if not result:
        run.failed = run.failed or "no result from gdb: " + " | ".join(text.splitlines()[-3:])
    run.cpu_self = result.get("cpu", 0.0)
    run.cpu_qemu -= run.cpu_self
    run.calls = result.get("armed", 0)
    run.hits = result.get("hits", 0)
    run.extra = {k: result.get(k) for k in ("calls", "returns", "refused", "hw_watchpoints",
                                            "errors", "end")}
    _fill_times(run, _stamps(console), result.get("last_return"))
    if result and result.get("hw_watchpoints") != result.get("armed"):
        run.failed = run.failed or "gdb used software watchpoints"
    if result and result.get("errors"):
        run.failed = run.failed or f"{result['errors']} errors in the gdb script"
    return run


# --------------------------------------------------------------------------
# Profile of one armed kswgdb run
# --------------------------------------------------------------------------

def profile_armed(image, watch: str, iters: int, timeout: float, mode: str = "armed") -> None:
    """cProfile + wire counters for one armed run (separate from the timed runs)."""
    counters = {"round_trips": 0, "payloads": 0, "recv_blocks": 0, "recv_s": 0.0,
                "wait_stop": 0, "wait_stop_s": 0.0, "g_reads": 0}
    orig_pipeline = client_mod.RemoteClient.pipeline
    orig_fill = transport_mod.Transport._fill
    orig_wait = client_mod.RemoteClient.wait_stop
    orig_regs = client_mod.RemoteClient.read_registers

    def pipeline(self, payloads, timeout=None):
        counters["round_trips"] += 1
        counters["payloads"] += len(payloads)
        return orig_pipeline(self, payloads, timeout)

    def fill(self, deadline):
        t = time.perf_counter()
        try:
            return orig_fill(self, deadline)
        finally:
            counters["recv_blocks"] += 1
            counters["recv_s"] += time.perf_counter() - t

    def wait_stop(self, timeout=None):
        t = time.perf_counter()
        try:
            return orig_wait(self, timeout)
        finally:
            counters["wait_stop"] += 1
            counters["wait_stop_s"] += time.perf_counter() - t

    def read_registers(self, thread=None, names=None):
        counters["g_reads"] += 1
        return orig_regs(self, thread, names)

    kinds: dict[str, int] = {}
    orig_send_packets = transport_mod.Transport.send_packets
    orig_send_packet = transport_mod.Transport.send_packet

    def count(payload: bytes) -> None:
        text = payload.decode("latin-1")
        key = "vCont;s" if text.startswith("vCont;s") else (
            "vCont;c" if text.startswith("vCont;c") else re.match(r"[A-Za-z?]\d?", text).group(0))
        kinds[key] = kinds.get(key, 0) + 1

    def send_packets(self, payloads):
        for p in payloads:
            count(p)
        return orig_send_packets(self, payloads)

    def send_packet(self, payload):       # Transport.send_packet delegates to send_packets
        return orig_send_packet(self, payload)

    jit: dict[str, tuple[int, int]] = {}
    stop_poll = threading.Event()

    def poll_jit():
        while not stop_poll.wait(0.2):
            m = _LAST_MACHINE[0] if _LAST_MACHINE else None
            if m is None or not m.running:
                continue
            with contextlib.suppress(Exception):
                out = m.qmp.execute("human-monitor-command", {"command-line": "info jit"},
                                    timeout=2)
                found = re.search(r"TB flush count\s+(\d+)", out)
                if found:
                    jit["last"] = (int(found.group(1)), _RETURNS["count"])

    transport_mod.Transport.send_packets = send_packets
    transport_mod.Transport.send_packet = send_packet
    poller = threading.Thread(target=poll_jit, daemon=True)
    poller.start()
    client_mod.RemoteClient.pipeline = pipeline
    transport_mod.Transport._fill = fill
    client_mod.RemoteClient.wait_stop = wait_stop
    client_mod.RemoteClient.read_registers = read_registers
    prof = cProfile.Profile()
    try:
        t0 = time.perf_counter()
        prof.enable()
        run = run_kswgdb(image, watch, iters, timeout, mode,
                         release_by_check=mode == "checkrel")
        prof.disable()
        wall = time.perf_counter() - t0
    finally:
        client_mod.RemoteClient.pipeline = orig_pipeline
        transport_mod.Transport._fill = orig_fill
        client_mod.RemoteClient.wait_stop = orig_wait
        client_mod.RemoteClient.read_registers = orig_regs
        transport_mod.Transport.send_packets = orig_send_packets
        transport_mod.Transport.send_packet = orig_send_packet
        stop_poll.set()
        poller.join(5)
    n = max(run.calls, 1)
    print(f"\nprofile of one {mode} run: {run.calls} armed calls, wall {wall:.2f}s "
          f"(wedged={run.wedged}), kswgdb CPU {run.cpu_self:.2f}s, QEMU CPU {run.cpu_qemu:.2f}s")
    print("per armed call: "
          f"wall {wall / n * 1e6:.0f} us, kswgdb CPU {run.cpu_self / n * 1e6:.0f} us "
          f"(under cProfile), QEMU CPU {run.cpu_qemu / n * 1e6:.0f} us; "
          f"{counters['round_trips'] / n:.2f} round trips, {counters['payloads'] / n:.2f} "
          f"packets, {run.steps / n:.2f} steps, {counters['g_reads'] / n:.2f} g reads, "
          f"{counters['wait_stop'] / n:.2f} stops; blocked in recv "
          f"{counters['recv_s'] / n * 1e6:.0f} us (of which waiting for stops "
          f"{counters['wait_stop_s'] / n * 1e6:.0f} us)")
    print("packets sent per armed call: " + ", ".join(
        f"{k} {v / n:.2f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    if "last" in jit and jit["last"][1]:
        flushes, returns = jit["last"]
        print(f"QEMU TB cache flushes ('info jit', last poll): {flushes} after {returns} "
              f"returns = {flushes / returns:.2f} per call (QEMU 7.2's gdbstub flushes the whole "
              "TB cache at every breakpoint or single-step stop, not at watchpoint stops)")
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(18)
    print("\n".join(ln for ln in buf.getvalue().splitlines()[6:] if ln.strip()))
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(r"watch/|gdbstub/", 22)
    print("\n".join(ln for ln in buf.getvalue().splitlines()[6:] if ln.strip()))


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec=".3f", none="-"):
    return none if value is None else format(value, spec)


def machine_facts() -> str:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    gdb = subprocess.run(["gdb", "--version"], capture_output=True,
                         text=True).stdout.splitlines()[0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: nproc {os.cpu_count()}, {platform.machine()}, {qemu}, {gdb}, "
            f"Python {platform.python_version()}, loadavg {load}")


def report(runs: dict[str, list[Run]], iters: int) -> None:
    med = {m: _median([r.seconds for r in runs[m] if not r.failed and not r.wedged])
           for m in runs}
    med_ret = {m: _median([r.to_last_return for r in runs[m]]) for m in runs}
    alone = med.get("alone")
    net_v, net_r = {}, {}      # us per call over the guest alone: to verdict / to last return
    print()
    hdr = (f"{'mode':8} {'ok/reps':>7} {'wedged':>6} {'median s':>9} {'to last ret':>11} "
           f"{'calls':>6} {'us/call net':>11} {'hits':>5} {'dbg CPU us/call':>15} "
           f"{'QEMU CPU us/call':>16} {'jiffies':>7}")
    print(hdr)
    print("-" * len(hdr))
    qemu_alone = _median([r.cpu_qemu for r in runs.get("alone", [])])
    for mode in MODES:
        if mode not in runs:
            continue
        rs = runs[mode]
        ok = [r for r in rs if not r.failed and not r.wedged]
        calls = _median([r.calls for r in rs]) or 0
        t = med[mode]
        if mode != "alone" and alone is not None and calls:
            if t is not None:
                net_v[mode] = (t - alone) / calls * 1e6
            if med_ret[mode] is not None:
                net_r[mode] = (med_ret[mode] - alone) / calls * 1e6
        net = net_r.get(mode, net_v.get(mode))
        dbg_cpu = _median([r.cpu_self / r.calls for r in rs if r.calls]) if mode != "alone" \
            else None
        qemu_cpu = None
        if mode != "alone" and qemu_alone is not None:
            qemu_cpu = _median([(r.cpu_qemu - qemu_alone) / r.calls for r in rs if r.calls])
        hits = _median([r.hits for r in rs]) if mode != "alone" else None
        jif = _median([r.jiffies for r in ok])
        net_txt = _fmt(net, ".0f") + ("~" if net is not None and mode not in net_r else "")
        print(f"{mode:8} {len(ok):>3}/{len(rs):<3} {sum(r.wedged for r in rs):>6} "
              f"{_fmt(t):>9} {_fmt(med_ret[mode]):>11} {calls:>6.0f} {net_txt:>11} "
              f"{_fmt(hits, '.0f'):>5} {_fmt(dbg_cpu and dbg_cpu * 1e6, '.0f'):>15} "
              f"{_fmt(qemu_cpu and qemu_cpu * 1e6, '.0f'):>16} {_fmt(jif, '.0f'):>7}")
    print("(us/call net: (median start->last s3_victim return - median guest alone) / calls, "
          "over all reps, wedged ones included; ~: from start->verdict instead. "
          "CPU columns: whole run incl. boot; QEMU net of the guest alone)")
    for mode in ("floor", "armed", "checkrel", "readrel", "readrel-x", "stepped", "unarmed"):
        rs = runs.get(mode, [])
        trips = _median([r.extra["round_trips"] / r.calls for r in rs
                         if r.calls and "round_trips" in r.extra])
        if trips is not None:
            what = "probe+release stop pair" if mode == "floor" else "armed call"
            print(f"{mode}: {trips:.2f} round trips per {what} (requests and pipelines, "
                  "a resume included)   aim 2")
        if rs and mode != "floor":
            pk = _median([r.packets / r.calls for r in rs if r.calls])
            st = _median([r.steps / r.calls for r in rs if r.calls])
            em = _median([r.emulated / r.calls for r in rs if r.calls])
            print(f"kswgdb {mode}: {_fmt(pk, '.2f')} packets, {_fmt(st, '.2f')} steps and "
                  f"{_fmt(em, '.2f')} emulated instructions per "
                  f"{'' if mode == 'unarmed' else 'armed '}call (RunReport.packets/steps/emulated)")

    def ratio(a, b):
        # start->last return first: every debugged rep has it, wedged ones included,
        # so both sides are medians over the same reps; start->verdict only counts
        # the reps that were not wedged (often one gdb rep or none).
        out = []
        for table, how in ((net_r, "start->last return, all reps"),
                           (net_v, "start->verdict, unwedged reps")):
            x, y = table.get(a), table.get(b)
            if x is not None and y:
                out.append(f"{x / y:.3f} ({how})")
        return "; ".join(out) or "-"

    print(f"floor ratio kswgdb armed / floor (two bare breakpoint stops), per call net: "
          f"{ratio('armed', 'floor')}")
    print(f"ratio kswgdb armed / gdb baseline, per call net: {ratio('armed', 'gdb')}"
          "   aim <= 0.3")
    print(f"ratio kswgdb checkrel / kswgdb armed, per call net: {ratio('checkrel', 'armed')}")
    print(f"ratio kswgdb readrel / gdb baseline, per call net: {ratio('readrel', 'gdb')}"
          "   aim <= 0.3")
    print(f"ratio kswgdb readrel / kswgdb armed, per call net: {ratio('readrel', 'armed')}")
    print(f"ratio readrel-x (experiment) / kswgdb armed, per call net: "
          f"{ratio('readrel-x', 'armed')}")
    print(f"ratio kswgdb armed / kswgdb stepped, per call net: {ratio('armed', 'stepped')}")
    print(f"ratio kswgdb unarmed / kswgdb armed, per call net: {ratio('unarmed', 'armed')}")
    for mode in MODES:
        for i, r in enumerate(runs.get(mode, [])):
            if r.failed or r.wedged:
                what = (f"wedged (timer vector 32 stuck in service on CPUs {r.wedged_cpus})"
                        if r.wedged else r.failed)
                print(f"  {mode} rep {i + 1}: {what}; calls {r.calls}, "
                      f"to last ret {_fmt(r.to_last_return)} s, {r.extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=60.0, help="hard bound per run (s)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile one armed kswgdb run (after the timed reps)")
    ap.add_argument("--profile-only", action="store_true")
    ap.add_argument("--profile-mode", choices=("armed", "checkrel"), default="armed",
                    help="the mode --profile runs (checkrel: release by check)")
    ap.add_argument("--cpus", type=int, default=None,
                    help="override the image's vCPU count (readrel-x needs 1)")
    ap.add_argument("--victim", default=None,
                    help="watch this function's canary instead of s3_victim's (e.g. "
                         "s3_enter_victim, which releases with `leave`, for readrel)")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m}")

    if args.cpus:
        plain_load = image_mod.load
        image_mod.load = lambda spec=None: dataclasses.replace(plain_load(spec), cpus=args.cpus)
    image = image_mod.load(None)
    watch = scenario_watch(image, SCENARIO)
    if args.victim:
        fo = Program.load(image.symbols).analyze(args.victim).suggest_offset()
        watch = f"fn={args.victim} fo={fo:#x}"
    prep = WatchSession(RunOptions(image=image.path, scenario=SCENARIO, watches=[watch]))
    prep.prepare()
    spec = prep.specs[0]
    print(machine_facts())
    print(f"scenario {SCENARIO}, iters={args.iters}, {args.reps} reps interleaved; "
          f"watch {watch!r} (probe {spec.probe_addr:#x}, slot {spec.base}{spec.offset:+#x}, "
          f"CFA {spec.cfa_base}{spec.cfa_offset:+#x}); unarmed adds ' dp=5'")
    if args.profile_only:
        profile_armed(image, watch, args.iters, args.timeout, args.profile_mode)
        return 0
    if "gdb" in modes and shutil.which("gdb") is None:
        ap.error("gdb not found")

    workdir = Path(tempfile.mkdtemp(prefix="kswgdb-armed-call-"))
    script = workdir / "armed_call_gdb.py"
    script.write_text(GDB_SCRIPT)
    runs: dict[str, list[Run]] = {m: [] for m in modes}
    t_all = time.monotonic()
    try:
        for rep in range(args.reps):
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            for mode in order:
                t0 = time.monotonic()
                try:
                    if mode == "alone":
                        r = run_alone(image, args.iters, args.timeout)
                    elif mode == "floor":
                        r = run_floor(image, spec, args.iters, args.timeout)
                    elif mode == "armed":
                        r = run_kswgdb(image, watch, args.iters, args.timeout, "armed")
                    elif mode == "checkrel":
                        r = run_kswgdb(image, watch, args.iters, args.timeout, "checkrel",
                                       release_by_check=True)
                    elif mode == "readrel":
                        r = run_kswgdb(image, watch, args.iters, args.timeout, "readrel",
                                       release_by_read=True)
                    elif mode == "readrel-x":
                        plain = readrelease.MAX_STRETCH
                        readrelease.MAX_STRETCH = 8
                        try:
                            r = run_kswgdb(image, watch, args.iters, args.timeout, mode,
                                           release_by_read=True)
                        finally:
                            readrelease.MAX_STRETCH = plain
                    elif mode == "stepped":
                        r = run_kswgdb(image, watch, args.iters, args.timeout, "stepped",
                                       emulate=False)
                    elif mode == "unarmed":
                        r = run_kswgdb(image, watch + " dp=5", args.iters, args.timeout,
                                       "unarmed")
                    else:
                        r = run_gdb(image, spec, args.iters, args.timeout, script, workdir)
                except Exception as exc:  # noqa: BLE001 - one bad run must not end the bench
                    r = Run(mode, failed=f"{type(exc).__name__}: {exc}".splitlines()[0])
                runs[mode].append(r)
                flag = " WEDGED" if r.wedged else (f" FAILED: {r.failed}" if r.failed else "")
                print(f"rep {rep + 1} {mode:8} {_fmt(r.seconds)} s (to last ret "
                      f"{_fmt(r.to_last_return)}), calls {r.calls}, run took "
                      f"{time.monotonic() - t0:.1f}s{flag}", flush=True)
    finally:
        if not os.environ.get("ARMED_CALL_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("kept", workdir)
    report(runs, args.iters)
    print(f"total bench time {time.monotonic() - t_all:.0f}s; {machine_facts().split(', ')[-1]}")
    if args.profile:
        profile_armed(image, watch, args.iters, args.timeout, args.profile_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
