"""--gdb-listen: the guest frozen at the hit is lent, read-only, to gdb on 127.0.0.1."""

from __future__ import annotations

import re
import signal
import stat
import time
from pathlib import Path

from kswgdb.gdbstub.client import RemoteClient
from tests.integration.helpers.cli_run import CliRun


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
    with RemoteClient.connect(f"127.0.0.1:{port}", timeout=10) as client:
        client.handshake()
        assert client.request("?").startswith("T")
        regs = client.request("g")
        assert len(regs) > 100 and set(regs) <= set("0123456789abcdefx")
        assert client.request("M1000,1:00") == "E01"      # read-only: no writes
        assert client.request("c") == "E01"               # and no resuming
    assert run.proc.poll() is None, "the tool must keep the guest until Ctrl-C"
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.stderr()
    assert run.last_error_line() == "kswgdb: interrupted"
    shown = " ".join(run.stderr().split())          # the result is not lost on Ctrl-C
    assert "watch summary" in shown and f"event log: {run.log}" in shown
    assert "1 hit(s)" in shown
    run.assert_nothing_left()
    vmcores = list(tmp_path.glob("kswgdb-vmcore-*.elf"))
    assert len(vmcores) == 1 and stat.S_IMODE(vmcores[0].stat().st_mode) == 0o600
    run.assert_log_complete()
