"""--gdb-listen: the guest frozen at the hit is lent, read-only, to gdb on 127.0.0.1."""

from __future__ import annotations

import re
import signal
import stat
import time
from pathlib import Path

from tests.integration.helpers.cli_run import CliRun
from tests.integration.helpers.lent_stub import check_read_only_stub


def test_frozen_guest_served_on_loopback_until_ctrl_c(tmp_path: Path) -> None:
    run = CliRun(["--scenario", "3", "--watch", "fn=s3_victim fo=0x23", "--accel", "tcg",
                  "--gdb-listen", "127.0.0.1:0"], tmp_path)
    run.wait_qemu()
    deadline = time.monotonic() + 120
    port = None
    while port is None and time.monotonic() < deadline:
        found = re.search(r"target remote\s+127\.0\.0\.1:(\d+)", " ".join(run.stderr().split()))
        port = int(found.group(1)) if found else None
        assert run.proc.poll() is None, run.stderr()
        time.sleep(0.05)
    assert port, run.stderr()
    hits = run.events()
    assert [e["seq"] for e in hits if e["event"] == "hit"] == [1]
    check_read_only_stub(f"127.0.0.1:{port}")
    assert run.proc.poll() is None, "the tool must keep the guest until Ctrl-C"
    run.proc.send_signal(signal.SIGINT)
    # Ctrl-C is how the listen ends: the run's own status (1: a hit), not 130.
    assert run.finish() == 1, run.stderr()
    assert "interrupted" not in run.stderr()
    shown = " ".join(run.stderr().split())          # the summary, as at any normal end
    assert "gdb listen ended (Ctrl-C)" in shown
    assert "watch summary" in shown and f"event log: {run.log}" in shown
    assert run.last_error_line() == "1 hit(s)"
    run.assert_nothing_left()
    vmcores = list(tmp_path.glob("kswgdb-vmcore-*.elf"))
    assert len(vmcores) == 1 and stat.S_IMODE(vmcores[0].stat().st_mode) == 0o600
    run.assert_log_complete()
    events = run.events()
    assert events[-1]["reason"] == "freeze" and events[-1]["fault"] is False
    assert [e["path"] for e in events if e["event"] == "vmcore"] == [str(vmcores[0])]
