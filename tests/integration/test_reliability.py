"""Nothing lost: bursts of hits, slow rendering, and an exhausted slot pool.

Scenario 4 runs 8 driver/corrupter pairs at once, so several victims are live
and several corrupting writes land close together on both vCPUs. The guest
prints the ground truth of every write (``KSWTEST corrupt writer=FN addr=A
len=L``); the event log must hold exactly one hit per write, in order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from kswgdb.watch.hits import Hit
from kswgdb.watch.session import RunOptions, RunReport, WatchSession

CORRUPT = re.compile(r"KSWTEST corrupt writer=(\S+) addr=(0x[0-9a-f]+) task=\S+ len=(\d+)")
WATCH = "fn=s3_victim fo=0x23"


def _truth(report: RunReport) -> list[tuple[int, int]]:
    out = []
    for line in report.console_log:
        m = CORRUPT.search(line)
        if m and m.group(1) == "s3_corrupt_write":
            lo = int(m.group(2), 16)
            out.append((lo, lo + int(m.group(3))))
    return out


def _log_hits(path: Path) -> list[dict]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert events[-1]["event"] == "end"
    return [e for e in events if e["event"] == "hit"]


def _match_in_order(hits: list[dict], truth: list[tuple[int, int]]) -> None:
    """Each hit, in log order, is the earliest unmatched ground-truth write covering it."""
    left = list(truth)
    for hit in hits:
        addr = int(hit["addr"], 16)
        idx = next((i for i, (lo, hi) in enumerate(left) if lo <= addr < hi), None)
        assert idx is not None, (hex(addr), left)
        assert idx < 8, f"hit {hit['seq']} matches a write {idx} places later: out of order"
        left.pop(idx)
    assert not left, f"writes with no hit: {left}"


def _session(tmp_path: Path, watch: str = WATCH, on_hit=None, cmdline: str = "") -> RunReport:
    report = WatchSession(RunOptions(scenario=4, watches=[watch], accel="tcg", timeout=120,
                                     cmdline=cmdline, log_path=tmp_path / "events.jsonl"),
                          on_hit=on_hit).run()
    assert report.fault is None and report.guest_exit is not None
    assert report.guest_exit.code == 0x14, report.console_log[-5:]
    return report


def test_burst_of_hits_all_logged_in_order(tmp_path: Path) -> None:
    report = _session(tmp_path, cmdline="runs=3")
    truth = _truth(report)
    assert len(truth) >= 10
    hits = _log_hits(tmp_path / "events.jsonl")
    assert [h["seq"] for h in hits] == list(range(1, len(truth) + 1))
    _match_in_order(hits, truth)
    assert len(report.hits) == len(truth)


def test_slow_rendering_loses_no_hit(tmp_path: Path) -> None:
    """While one hit is being rendered (slowly), the next ones wait: none is dropped."""
    rendered: list[int] = []
    logged_before_render: list[bool] = []

    def slow_render(hit: Hit) -> None:
        text = (tmp_path / "events.jsonl").read_text()
        logged_before_render.append(f'"seq": {hit.seq},' in text)
        time.sleep(0.3)
        rendered.append(hit.seq)

    report = _session(tmp_path, on_hit=slow_render)
    truth = _truth(report)
    assert rendered == list(range(1, len(truth) + 1))
    assert all(logged_before_render)
    _match_in_order(_log_hits(tmp_path / "events.jsonl"), truth)


def test_slot_exhaustion_is_counted_and_shown(tmp_path: Path) -> None:
    """Two configs, mw=4 and mw=2, with 8 live victims: each mw is honoured on its own.

    Every s3_victim frame lies inside an s3_enter_victim frame, so both
    functions have 8 frames live at once: each config reaches its own mw and no
    more; refused calls are counted, shown, and add up. The shared pool (256
    TCG slots) is never full.
    """
    log = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", "--scenario", "4", "--watch", f"{WATCH} mw=4",
         "--watch", "fn=s3_enter_victim fo=0x18 mw=2", "--accel", "tcg", "--log", str(log)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    victim, enter = next(json.loads(ln) for ln in log.read_text().splitlines()
                         if '"event": "summary"' in ln)["watches"]
    for summary, mw in ((victim, 4), (enter, 2)):
        assert summary["max_watch"] == mw
        assert summary["live_high"] == mw, summary
        assert summary["refused_max_watch"] > 0 and summary["refused_pool"] == 0
        assert summary["calls"] == summary["armed"] + summary["not_armed"]
        assert summary["not_armed"] == sum(summary[k] for k in (
            "skipped_depth", "refused_pool", "refused_check", "refused_stub",
            "refused_below_sp", "refused_max_watch"))
        assert f"{summary['refused_max_watch']} mw full" in proc.stdout
    assert "slot pool: 256 TCG watchpoints, at most 6 in use" in proc.stdout
    summary = victim
    shown = re.search(r"│\s+(\d+) │\s+(\d+) │ (\d+) \(", proc.stdout)
    assert shown and [int(g) for g in shown.groups()] == [
        summary["calls"], summary["armed"], summary["not_armed"]]
    hits = [json.loads(ln) for ln in log.read_text().splitlines() if '"event": "hit"' in ln]
    assert len(hits) == summary["hits"] == proc.stdout.count("Caught stack corruption")
