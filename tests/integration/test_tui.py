"""The real `kswgdb tui` screen, driven by textual's Pilot against a booted test kernel.

Scenario 3 runs for a long time here (``runs=100000``), so the watch is added
while the guest is running and has to go through an interrupt of the real
gdbstub. Waits are generous (the 2 cores are shared with other QEMUs); nothing
here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import DataTable, Input, Static

from kswgdb import image as image_mod
from kswgdb.exitcodes import ExitStatus
from kswgdb.run.live import FROZEN, RUNNING, LiveSession
from kswgdb.run.options import RunOptions
from kswgdb.tui.app import KswApp
from kswgdb.tui.command import session_status
from kswgdb.watch.scenarios import scenario_watch

LONG_RUN = "runs=100000"
#: A watch on a function scenario 3 never calls (scenario 5's victim).
NEVER_CALLED = "fn=s5_victim fo=0x1a"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def wait_until(pilot, what: str, cond: Callable[[], bool], timeout: float = 180.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"never happened: {what}"
        await pilot.pause(0.2)


def text_of(widget: Static) -> str:
    return str(widget.content)


def session_for(tmp_path: Path, paused: bool = False) -> LiveSession:
    session = LiveSession(RunOptions(scenario=3, accel="tcg", cmdline=LONG_RUN, timeout=0,
                                     log_path=tmp_path / "events.jsonl"), paused=paused)
    session.prepare()
    return session


@pytest.fixture(scope="module")
def config() -> str:
    return scenario_watch(image_mod.load(None), 3)      # fn=s3_victim fo=0x23 today


def test_watch_added_in_the_ui_catches_the_writer_then_freeze_and_quit(tmp_path, config):
    session = session_for(tmp_path)
    app = KswApp(session)

    async def drive() -> int:
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_until(pilot, "guest running", lambda: session.snapshot().state == RUNNING)
            pid = session.machine.pid
            watches = app.query_one("#watches", DataTable)
            hits = app.query_one("#hits", DataTable)
            assert watches.row_count == 0 and hits.row_count == 0
            assert "accelerator tcg" in text_of(app.query_one("#header", Static))

            await pilot.press("a")
            await pilot.press(*config)
            await pilot.press("enter")
            await wait_until(pilot, "a hit in the hit list", lambda: hits.row_count > 0)
            assert watches.row_count == 1
            assert str(watches.get_row_at(0)[1]).startswith(config)
            row = hits.get_row_at(0)
            assert str(row[2]).startswith("s3_corrupt_write+"), row
            assert "s3_victim" in str(row[3])
            assert session.hits()[0].writer.function == "s3_corrupt_write"
            # The backtrace comes from gdb's unwinder, as in `kswgdb run`.
            unwinder = session.gdb_unwinder
            assert unwinder is not None and unwinder.unwound >= 1, unwinder and unwinder.failures
            frames = [f.symbol.split("+")[0] for f in session.hits()[0].backtrace]
            assert frames[:2] == ["s3_corrupt_write", "s3_corrupter"], frames
            gdb_pids.append(unwinder.gdb_pid)
            detail = app.query_one("#detail-body", Static)
            await pilot.press("h", "enter")
            assert "Caught stack corruption #1" in _plain(detail)

            await pilot.press("f")
            await wait_until(pilot, "frozen with a vmcore",
                             lambda: session.snapshot().state == FROZEN
                             and session.snapshot().vmcore is not None)
            vmcore = session.snapshot().vmcore
            assert vmcore.parent == tmp_path and vmcore.read_bytes()[:4] == b"\x7fELF"
            await wait_until(pilot, "the gdb hint on screen", lambda: f"gdb {session.symbols_path}"
                             in text_of(app.query_one("#header", Static)))
            await pilot.press("c")
            await wait_until(pilot, "running again", lambda: session.snapshot().state == RUNNING)
            await pilot.press("q")
        return pid

    gdb_pids: list[int] = []
    pid = asyncio.run(drive())
    assert not alive(pid), f"QEMU {pid} still running after q"
    assert gdb_pids and not alive(gdb_pids[0]), f"gdb {gdb_pids} still running after q"
    log = (tmp_path / "events.jsonl").read_text()
    assert '"event": "watch-add"' in log and '"event": "hit"' in log


def test_bad_config_typed_in_the_ui_is_one_line_error_and_changes_nothing(tmp_path, config,
                                                                         capsys):
    session = session_for(tmp_path, paused=True)
    app = KswApp(session)

    async def drive() -> int:
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_until(pilot, "guest paused", lambda: session.snapshot().state == FROZEN)
            pid = session.machine.pid
            watches = app.query_one("#watches", DataTable)
            message = app.query_one("#message", Static)
            await pilot.press("a")
            await pilot.press(*(config + " bogus=1"))
            await pilot.press("enter")
            shown = text_of(message)
            assert shown.startswith("error: unknown key 'bogus'") and "\n" not in shown
            assert watches.row_count == 0 and session.snapshot().watches == ()

            box = app.query_one("#add", Input)
            box.value = ""
            await pilot.press(*"fn=s3_victimm fo=0x23", "enter")
            await pilot.pause(0.5)
            assert "s3_victimm" in text_of(message) and text_of(message).startswith("error:")
            assert watches.row_count == 0 and session.snapshot().watches == ()
            assert session.snapshot().state == FROZEN      # nothing was sent to the guest
            # A good watch on a function scenario 3 never calls: never armed at the end.
            box.value = ""
            await pilot.press(*NEVER_CALLED, "enter")
            await wait_until(pilot, "the watch in the list", lambda: watches.row_count == 1)
            await pilot.press("escape", "q")
        return pid

    pid = asyncio.run(drive())
    assert not alive(pid), f"QEMU {pid} still running after q"
    # The session ends as `kswgdb run` would: a warning, an `unarmed` event, exit 4.
    assert session_status(session) == ExitStatus.UNARMED
    assert capsys.readouterr().err == (f"kswgdb: warning: watch {NEVER_CALLED!r} was never "
                                       "armed: s5_victim was never called\n")
    session.options.allow_unarmed = True
    assert session_status(session) == ExitStatus.OK
    assert '"event": "unarmed"' in (tmp_path / "events.jsonl").read_text()


def _plain(widget: Static) -> str:
    """The text a Static shows, rich renderables included, as plain characters."""
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()
