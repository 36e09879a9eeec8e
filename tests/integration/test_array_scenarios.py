"""Scenarios 11-13: following ``disasm``'s suggestion on a local array gives 0 false
positives and catches every stale-pointer write the guest reports.

The victim initialises buf[16] by an indexed loop (11), ``rep stosq`` (12) or a
helper given &buf (13); the arming point `kswgdb.symbols.armpoint` suggests must
come after that. The control run arms at the canary's point instead (before the
initialisation) and must see the victim's own stores: the test can fail.
"""

from __future__ import annotations

import pytest

from kswgdb.symbols.listing import WatchRequest, build_listing
from kswgdb.symbols.program import Program
from tests.integration.test_watch_scenarios import run, truth

SCENARIOS = {11: "s11_victim", 12: "s12_victim", 13: "s13_victim"}
WRITER = "sa_stale_write"


@pytest.fixture(scope="module")
def kernel(kswtest_image) -> Program:
    return Program.load(kswtest_image.symbols)


def suggested(program: Program, victim: str) -> str:
    """What ``kswgdb disasm VICTIM --var 'buf[9]'`` prints as its suggested watch."""
    listing = build_listing(program, victim, WatchRequest(var="buf", index=9))
    assert listing.suggested_config is not None, listing.note
    assert listing.note == "", listing.note              # a safe point, on every path
    return listing.suggested_config


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_following_the_suggestion_catches_every_stale_write_and_nothing_else(
        kswtest_image, kernel, scenario, tmp_path):
    watch = suggested(kernel, SCENARIOS[scenario])
    report = run(kswtest_image, scenario, watch=watch, cmdline="runs=3", tmp_path=tmp_path)
    writes = [(a, a + n) for fn, a, n in truth(report) if fn == WRITER]
    assert len(writes) == 3, report.console_log[-5:]
    assert len(report.hits) == len(writes), [h.writer for h in report.hits]
    for hit in report.hits:
        assert hit.writer.function == WRITER, hit.writer
        assert any(lo <= hit.addr < hi for lo, hi in writes)
    assert {h.addr for h in report.hits} == {lo for lo, _ in writes}
    assert any("result=corrupted" in line for line in report.console_log)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_arming_before_the_initialisation_reports_the_victims_own_stores(
        kswtest_image, kernel, scenario, tmp_path):
    victim = SCENARIOS[scenario]
    analysis = kernel.analyze(victim)
    early = analysis.suggest_offset()                    # the canary's point
    watch = f"fn={victim} fo={early:#x} var=buf[9]"
    assert watch != suggested(kernel, victim)
    report = run(kswtest_image, scenario, watch=watch, cmdline="runs=1", tmp_path=tmp_path)
    own = [h for h in report.hits if h.writer.function in (victim, "s13_fill")]
    assert own, [h.writer for h in report.hits]
