"""RunOptions.release_by_read end to end: test kernel under TCG, real gdbstub.

s7_victim releases its frame with `leave`, which itself reads the saved RBP:
there a read watchpoint replaces the release-point breakpoint. s3_victim
releases with `add rsp` (no read): it keeps its breakpoint.
"""

from __future__ import annotations

import pytest

from kswgdb import image as image_mod
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.program import Program
from kswgdb.watch.scenarios import scenario_watch
from tests.integration.test_watch_scenarios import assert_caught_like_truth


@pytest.fixture(scope="module")
def img():
    return image_mod.load(None)


@pytest.fixture(scope="module")
def program(img):
    return Program.load(img.symbols)


def run(img, scenario: int) -> RunReport:
    report = WatchSession(RunOptions(scenario=scenario, watches=[scenario_watch(img, scenario)],
                                     accel="tcg", timeout=90, release_by_read=True)).run()
    assert report.result.reason == "exit", report.console_log[-10:]
    assert report.guest_exit is not None and report.guest_exit.code == 0x10 + scenario, \
        report.console_log[-10:]
    return report


def test_leave_release_is_seen_by_a_read_watch_and_the_hit_still_caught(img, program):
    report = run(img, 7)
    assert_caught_like_truth(report, "s7_irq_corrupt", program)
    stats = report.summary[0]
    assert stats["read_releases"] == stats["returns"] == stats["calls"] == 1, stats
    assert stats["foreign_reads"] == 0 and report.unexpected_stops == 0, stats


def test_function_without_a_releasing_read_keeps_its_breakpoint_and_stays_clean(img):
    report = run(img, 6)
    stats = report.summary[0]
    assert report.hits == []
    assert stats["armed"] >= 1000 and stats["returns"] == stats["calls"], stats
    assert stats["read_releases"] == 0, stats
    assert "result=clean" in (report.verdict or "")
