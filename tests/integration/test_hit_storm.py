"""A hit storm on 2 vCPUs: QEMU stays alive and every hit is logged.

Scenario 14 runs two victim/poker pairs at once on the test kernel's 2 vCPUs;
each poker writes its victim's watched local 50 times per call. Watch stops
then arrive on both vCPUs within microseconds, and QEMU 7.2 reports only one
of two simultaneous stops: without `kswgdb.watch.loststops`, the other vCPU's
stale hit aborts QEMU within a few dozen hits
(``qemu_mutex_lock_iothread_impl: assertion failed``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kswgdb.watch.session import RunOptions, WatchSession

WATCH = "fn=s14_victim fo=0x1d var=box"
POKES = re.compile(r"KSWTEST verdict scenario=14 .* pokes=(\d+)")


def test_hit_storm_two_vcpus_every_hit_logged(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    report = WatchSession(RunOptions(scenario=14, watches=[WATCH], accel="tcg", timeout=240,
                                     cmdline="runs=20", backtrace="fp",
                                     log_path=log)).run()
    assert report.fault is None, (report.fault, report.qemu_stderr)
    assert report.guest_exit is not None and report.guest_exit.code == 0x1e, \
        report.console_log[-5:]
    verdict = next(POKES.search(ln) for ln in report.console_log if POKES.search(ln))
    pokes = int(verdict.group(1))
    assert pokes == 2 * 20 * 50
    events = [json.loads(line) for line in log.read_text().splitlines()]
    hits = [e for e in events if e["event"] == "hit"]
    assert len(hits) == report.hit_count == pokes
    assert {h["writer"]["function"] for h in hits} == {"s14_poke"}
    assert events[-1]["event"] == "end" and not events[-1]["fault"]
    summary = next(e for e in events if e["event"] == "summary")["watches"][0]
    assert summary["calls"] == summary["armed"] == summary["returns"] == 40
