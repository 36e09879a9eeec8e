"""A hit's backtrace unwound by gdb (DWARF CFI) through the read-only relay.

The test kernel's scenarios know their call chains: scenario 3's corrupting
write is made by s3_corrupt_write, called from s3_corrupter, a task started by
task_bootstrap; scenario 7's by s7_irq_corrupt from the timer interrupt. gdb
must name exactly those functions, and no gdb may be left when the run ends.
"""

from __future__ import annotations

import os

import pytest

from kswgdb import image as image_mod
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.watch.scenarios import scenario_watch


@pytest.fixture(scope="module")
def img():
    return image_mod.load(None)


def run(img, scenario: int, backtrace: str) -> RunReport:
    report = WatchSession(RunOptions(scenario=scenario, watches=[scenario_watch(img, scenario)],
                                     accel="tcg", timeout=90, backtrace=backtrace)).run()
    assert report.result.reason == "exit", report.console_log[-10:]
    assert report.hits, report.summary
    return report


def functions(frames) -> list[str]:
    return [f.symbol.split("+", 1)[0] for f in frames]


def assert_gdb_gone(report: RunReport) -> None:
    assert report.gdb_pid is not None
    assert not os.path.exists(f"/proc/{report.gdb_pid}"), "gdb outlived the run"


def test_gdb_names_the_call_chain_of_a_task_context_write(img):
    report = run(img, 3, "gdb")
    assert report.backtrace == "gdb" and report.backtrace_failures == []
    for hit in report.hits:
        assert functions(hit.backtrace)[:4] == [
            "s3_corrupt_write", "s3_corrupter", "task_bootstrap", "task_start"]
        assert hit.backtrace[0].pc == hit.writer.insn_addr     # frame 0 is the store
        assert hit.backtrace[1].source is not None
        assert hit.backtrace[1].source.file.endswith("scenarios.c")
    assert_gdb_gone(report)


def test_gdb_unwinds_an_interrupt_context_write(img):
    report = run(img, 7, "gdb")
    assert report.backtrace == "gdb" and report.backtrace_failures == []
    names = functions(report.hits[0].backtrace)
    assert names[0] == "s7_irq_corrupt"
    assert "timer_interrupt" in names
    assert report.hits[0].interrupt
    assert_gdb_gone(report)


def test_frame_pointer_mode_starts_no_gdb(img):
    report = run(img, 3, "fp")
    assert report.backtrace == "fp" and report.gdb_pid is None
    assert functions(report.hits[0].backtrace)[:2] == ["s3_corrupt_write", "s3_corrupter"]
