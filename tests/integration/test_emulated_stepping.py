"""Leaving breakpoints by host emulation gives exactly what real single-steps give.

Each scenario is run twice against the test kernel under TCG: once with the
instruction under every breakpoint emulated on the host (the default), once
with real single-steps (``RunOptions.emulate=False``). The hits must be the same
writes of the same instructions, the watch counts the same, and the guest's own
verdict the same; the emulated run must really have emulated (and not stepped).
"""

from __future__ import annotations

import re

import pytest

from kswgdb import image as image_mod
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.watch.scenarios import scenario_watch


@pytest.fixture(scope="module")
def img():
    return image_mod.load(None)


def run(img, scenario: int, emulate: bool, cmdline: str = "") -> RunReport:
    watch = scenario_watch(img, scenario)
    report = WatchSession(RunOptions(scenario=scenario, watches=[watch], accel="tcg",
                                     timeout=90, cmdline=cmdline, emulate=emulate)).run()
    assert report.result.reason == "exit", report.console_log[-10:]
    assert report.guest_exit is not None and report.guest_exit.code == 0x10 + scenario
    return report


def hit_facts(report: RunReport) -> list[tuple]:
    return sorted((h.writer.function, h.writer.insn_addr, h.what, h.depth, h.old, h.new)
                  for h in report.hits)


@pytest.mark.parametrize("scenario", [0, 2, 3])
def test_emulated_run_catches_the_same_writes_as_a_stepped_run(img, scenario):
    emulated = run(img, scenario, emulate=True)
    stepped = run(img, scenario, emulate=False)
    assert emulated.hits and hit_facts(emulated) == hit_facts(stepped)
    for key in ("calls", "armed", "skipped_depth", "returns", "hits"):
        assert emulated.summary[0][key] == stepped.summary[0][key], key
    assert emulated.emulated > 0 and stepped.emulated == 0
    assert stepped.steps > 0 and emulated.steps < stepped.steps
    assert emulated.verdict and verdict(emulated) == verdict(stepped)


def verdict(report: RunReport) -> str:
    """The guest's verdict without its migration count, which depends on timing."""
    return re.sub(r" migrations=\d+", "", report.verdict or "")


def test_clean_workload_leaves_every_breakpoint_by_emulation(img):
    report = run(img, 6, emulate=True, cmdline="iters=300")
    stats = report.summary[0]
    assert report.hits == [] and "result=clean" in (report.verdict or "")
    assert stats["armed"] == stats["returns"] == 300
    # a probe per call, and a release point unless the canary check's read released it
    # (kswgdb.watch.checkrelease): none of them left by a real step; the only steps
    # are the lost-stop collection's, one per stop QEMU lost on the other vCPU
    assert stats["check_releases"] == 300       # s3_victim: released by its canary check
    release_bps = stats["returns"] - stats["check_releases"]
    assert report.emulated >= stats["armed"] + release_bps, (report.emulated, stats)
    assert report.steps == report.lost_stops, (report.steps, report.lost_stops)
    assert report.emulation_refusals == {}
    # the g read of each stop is counted: at least g + resume per stop
    assert report.packets >= 4 * stats["armed"]
