"""A wedged guest is an ending: the default hang watchdog ends the run, with the summary.

Scenario 15 stops every CPU's timer and halts: no console line, no stop, no
tick of ``jiffies`` any more. No ``--hang-timeout`` is given: the default
(`kswgdb.watch.hang.DEFAULT_HANG_TIMEOUT`) must end the run, with exit status
3, the watch summary, the event log's path and the guest's last console lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kswgdb.watch.hang import DEFAULT_HANG_TIMEOUT


def test_a_wedged_guest_is_ended_by_the_default_watchdog(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", "--scenario", "15", "--watch",
         "fn=s3_victim fo=0x23", "--accel", "tcg", "--backtrace", "fp", "--log", str(log)],
        capture_output=True, text=True, timeout=DEFAULT_HANG_TIMEOUT + 120, cwd=tmp_path)
    took = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    assert DEFAULT_HANG_TIMEOUT <= took < DEFAULT_HANG_TIMEOUT + 60
    assert "kswgdb: error: the guest hung: no console output, no stop and no clock tick" \
        in proc.stderr
    last = proc.stderr.split("the guest's last console lines:")[1]
    assert "KSWTEST wedge scenario=15" in last
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()][-1].startswith(
        "kswgdb: error: the guest hung")
    assert "watch summary" in proc.stdout and "fn=s3_victim fo=0x23" in proc.stdout
    assert "guest wedged, ended by the hang watchdog" in proc.stdout
    assert "event log:" in proc.stdout and str(log) in proc.stdout.replace("\n", "")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events][-2:] == ["summary", "end"]
    assert events[-1]["fault"] and events[-1]["reason"].startswith("the guest hung")
