"""Physical-memory polls in the real `kswgdb tui` screen, driven by textual's Pilot.

Scenario 10 flips bit 17 of `s10_constant` (which must stay 0x5eed5eed5eed5eed);
scenario 9 stores 0x33 into `s9_word`. The guest starts paused, so the poll typed
with `p` samples before the guest's first instruction. Addresses come from the
kernel's symbols. Waits are generous (2 shared cores); nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from kswgdb import image as image_mod
from kswgdb.run.live import EXITED, FROZEN, RUNNING, LiveSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.program import Program
from kswgdb.tui.app import KswApp
from tests.integration.test_tui import _plain, alive, text_of, wait_until

CONSTANT = 0x5EED5EED5EED5EED


@pytest.fixture(scope="module")
def program() -> Program:
    return Program.load(image_mod.load(None).symbols)


def session_for(tmp_path: Path, scenario: int, polls=()) -> LiveSession:
    session = LiveSession(RunOptions(scenario=scenario, accel="tcg", timeout=0,
                                     polls=list(polls), log_path=tmp_path / "events.jsonl"),
                          paused=True)
    session.prepare()
    return session


def test_poll_typed_in_the_ui_before_the_first_instruction_catches_the_change(
        tmp_path, program):
    addr = program.global_address("s10_constant")
    session = session_for(tmp_path, 10)
    app = KswApp(session)

    async def drive() -> int:
        async with app.run_test(size=(150, 48)) as pilot:
            await wait_until(pilot, "guest paused", lambda: session.snapshot().state == FROZEN)
            pid = session.machine.pid
            polls = app.query_one("#polls", DataTable)
            hits = app.query_one("#hits", DataTable)
            await pilot.press("p")
            await pilot.press(*f"pa={addr:#x} len=8 from={CONSTANT:#x}", "enter")
            await wait_until(pilot, "the poll in its table", lambda: polls.row_count == 1)
            await wait_until(pilot, "samples while paused",
                             lambda: session.snapshot().polls[0].samples > 1)
            row = polls.get_row_at(0)
            assert str(row[1]).startswith(f"pa={addr:#x} len=8 from={CONSTANT:#x}")
            assert str(row[2]).startswith("DRAM")
            assert session.snapshot().state == FROZEN       # adding it did not start the guest
            assert session.poll_hits() == []

            await pilot.press("c")
            await wait_until(pilot, "the poll hit in the hit list", lambda: hits.row_count > 0)
            hit_row = hits.get_row_at(0)
            flipped = CONSTANT ^ (1 << 17)
            assert str(hit_row[0]) == "P1" and str(hit_row[2]).startswith("poll #1")
            assert str(hit_row[4]) == f"{CONSTANT:#018x} -> {flipped:#018x}", hit_row
            [hit] = session.poll_hits()
            assert hit.addr == addr and hit.kind == "dram"
            detail = _plain(app.query_one("#detail-body", Static))
            assert "Physical-memory poll hit #1" in detail
            assert f"{CONSTANT:#018x} -> {flipped:#018x}" in detail
            await wait_until(pilot, "hit counted in the poll table",
                             lambda: str(polls.get_row_at(0)[5]) == "1")
            await wait_until(pilot, "interval achieved shown",
                             lambda: str(polls.get_row_at(0)[3]) != "-")
            assert session.snapshot().state in (RUNNING, EXITED)   # report: never froze
            await pilot.press("q")
        return pid

    pid = asyncio.run(drive())
    assert not alive(pid), f"QEMU {pid} still running after q"
    log = (tmp_path / "events.jsonl").read_text()
    assert '"event": "poll-add"' in log and '"event": "poll-hit"' in log


def test_bad_poll_spec_typed_in_the_ui_is_one_line_error_and_changes_nothing(
        tmp_path, program):
    addr = program.global_address("s10_constant")
    session = session_for(tmp_path, 10)
    app = KswApp(session)

    async def drive() -> int:
        async with app.run_test(size=(150, 48)) as pilot:
            await wait_until(pilot, "guest paused", lambda: session.snapshot().state == FROZEN)
            pid = session.machine.pid
            polls = app.query_one("#polls", DataTable)
            message = app.query_one("#message", Static)
            await pilot.press("p")
            await pilot.press(*f"pa={addr:#x} len=8 from={CONSTANT:#x} zz=1", "enter")
            shown = text_of(message)
            assert shown.startswith("error: ") and "zz" in shown and "\n" not in shown
            box = app.query_one("#addpoll", Input)
            box.value = ""
            await pilot.press(*f"pa={addr:#x} len=8 from=0xnothex", "enter")
            shown = text_of(message)
            assert shown.startswith("error: ") and "nothex" in shown and "\n" not in shown
            await pilot.pause(0.5)
            assert polls.row_count == 0 and session.snapshot().polls == ()
            assert session.polls.statuses() == []
            assert session.snapshot().state == FROZEN

            box.value = ""                                  # a good one, then d removes it
            await pilot.press(*f"pa={addr:#x} len=8 any=1", "enter")
            await wait_until(pilot, "the poll in its table", lambda: polls.row_count == 1)
            assert not box.has_class("visible")
            await pilot.press("d")                          # focus on the poll table: the poll
            await wait_until(pilot, "poll removed",
                             lambda: "(removed)" in str(polls.get_row_at(0)[1]))
            assert session.polls.statuses() == [] and session.snapshot().state == FROZEN
            await pilot.press("q")
        return pid

    pid = asyncio.run(drive())
    assert not alive(pid), f"QEMU {pid} still running after q"
    log = (tmp_path / "events.jsonl").read_text()
    assert '"event": "poll-add"' in log and '"event": "poll-remove"' in log


def test_poll_freeze_given_at_start_keeps_the_guest_frozen_until_c(tmp_path, program):
    """`--poll ... on-hit=freeze`: QMP stops the guest; the live loop must not resume it."""
    addr = program.global_address("s9_word")
    session = session_for(tmp_path, 9, [f"pa={addr:#x} len=8 to=0x33 on-hit=freeze"])
    app = KswApp(session)

    async def drive() -> int:
        async with app.run_test(size=(150, 48)) as pilot:
            await wait_until(pilot, "guest paused", lambda: session.snapshot().state == FROZEN)
            pid = session.machine.pid
            polls = app.query_one("#polls", DataTable)
            await wait_until(pilot, "the --poll in its table", lambda: polls.row_count == 1)
            await pilot.press("c")
            await wait_until(pilot, "frozen by the poll",
                             lambda: "on-hit=freeze" in session.snapshot().detail)
            await wait_until(pilot, "the vmcore of the freeze",
                             lambda: session.snapshot().vmcore is not None)
            snap = session.snapshot()
            assert snap.state == FROZEN and snap.vmcore.read_bytes()[:4] == b"\x7fELF"
            assert snap.inspect.startswith("gdb ") and snap.inspect.endswith(str(snap.vmcore))
            assert session.machine.qmp.status() != "running"
            await pilot.pause(2.0)
            assert session.snapshot().state == FROZEN       # nothing resumed it meanwhile
            assert session.machine.qmp.status() != "running"
            [hit] = session.poll_hits()
            assert hit.new.startswith("33") and hit.action == "freeze"
            await pilot.press("c")
            await wait_until(pilot, "running or ended after c",
                             lambda: session.snapshot().state in (RUNNING, EXITED))
            await pilot.press("q")
        return pid

    pid = asyncio.run(drive())
    assert not alive(pid), f"QEMU {pid} still running after q"
