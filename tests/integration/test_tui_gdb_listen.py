"""--gdb-listen in the live session (`kswgdb tui`): a hit freezes the guest, a gdb that
connects is served read-only, and `c` lets the guest go on afterwards."""

from __future__ import annotations

import time
from pathlib import Path

from kswgdb import image as image_mod
from kswgdb.run.live import FROZEN, RUNNING, LiveSession
from kswgdb.run.options import RunOptions
from kswgdb.watch.scenarios import scenario_watch
from tests.integration.helpers.lent_stub import check_read_only_stub


def _wait(what: str, cond, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.1)


def test_live_session_lends_the_frozen_guest_to_gdb(tmp_path: Path) -> None:
    watch = scenario_watch(image_mod.load(None), 3)
    session = LiveSession(RunOptions(
        scenario=3, watches=[watch], accel="tcg", cmdline="runs=100000", timeout=0,
        on_hit="freeze", gdb_listen=("127.0.0.1", 0), log_path=tmp_path / "events.jsonl"))
    session.prepare()
    assert session.plan is not None and session.plan.listener is not None
    address = session.plan.listener.address            # bound before the guest boots
    try:
        session.start()
        _wait("a hit froze the guest", lambda: session.hits()
              and session.snapshot().state == FROZEN)
        assert f"target remote {address}" in session.snapshot().notice
        check_read_only_stub(address)
        _wait("gdb detached", lambda: "gdb detached" in session.snapshot().notice)
        assert session.snapshot().state == FROZEN
        session.resume()
        _wait("running again", lambda: session.snapshot().state == RUNNING)
    finally:
        session.close()
    assert session.machine is not None and not session.machine.running
    assert session.plan.listener is None                # the port is released with the rig
    vmcores = list(tmp_path.glob("kswgdb-vmcore-*.elf"))
    assert len(vmcores) >= 1
