"""The TCG plugin engine against the gdbstub engine on the test kernel's scenarios.

Both engines run every stack scenario with the same watch (derived from the
image by `scenario_watch`); the gdbstub engine is the reference. Where the
guest is deterministic enough (one corrupter, fixed stacks) the two must
report the same hits (writer instruction, watched slot, old and new bytes,
depth) and the same counts; in the multi-task scenario each engine's hits
must match the guest's own ground truth; in the clean scenario neither may
report anything. QEMU 10 and the plugin header are fetched from Debian's
packages on first use (`kswgdb.qemu.fetch`); without them the tests fail,
saying why.
"""

from __future__ import annotations

import pytest

from kswgdb import image as image_mod
from kswgdb.plugin.build import build
from kswgdb.plugin.runner import PluginReport, PluginRun
from kswgdb.qemu.fetch import FetchError, fetch
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.program import Program
from kswgdb.watch.scenarios import scenario_watch
from tests.integration.test_watch_scenarios import CORRUPT, assert_caught_like_truth

#: Independent of the QEMU under test: `make test` runs it once, not per QEMU version.
pytestmark = [pytest.mark.integration, pytest.mark.one_qemu]

DETERMINISTIC = [0, 1, 2, 3, 5, 7]
COUNTS = ("calls", "armed", "skipped_depth", "returns", "stale", "hits")


@pytest.fixture(scope="module")
def qemu10():
    try:
        qemu = fetch()
        build(qemu)
    except FetchError as exc:
        pytest.fail(f"QEMU 10 / plugin header unavailable: {exc}")
    return qemu


@pytest.fixture(scope="module")
def kernel() -> tuple[image_mod.Image, Program]:
    """The test kernel and its symbols, loaded once for the module."""
    img = image_mod.load(None)
    return img, Program.load(img.symbols)


def both(img, qemu, scenario: int) -> tuple[PluginReport, RunReport]:
    watch = scenario_watch(img, scenario)
    plugin = PluginRun(RunOptions(scenario=scenario, watches=[watch], timeout=90),
                       qemu=qemu).run()
    assert plugin.guest_exit is not None and plugin.guest_exit.status == 33 + 2 * scenario, \
        (plugin.guest_exit, plugin.console_log[-5:])
    assert plugin.ended_cleanly, "the plugin's end line (final counters) never came"
    gdbstub = WatchSession(RunOptions(scenario=scenario, watches=[watch], accel="tcg",
                                      timeout=90)).run()
    assert gdbstub.result.reason == "exit", gdbstub.console_log[-5:]
    return plugin, gdbstub


def key(hit) -> tuple:
    return (hit.writer.function, hit.writer.insn_addr, hit.addr, hit.length, hit.depth,
            hit.old, hit.new, hit.what)


@pytest.mark.parametrize("scenario", DETERMINISTIC)
def test_plugin_hits_equal_the_gdbstub_engines(kernel, qemu10, scenario):
    img, program = kernel
    plugin, gdbstub = both(img, qemu10, scenario)
    assert plugin.hits, f"the plugin caught nothing; summary {plugin.summary}"
    assert [key(h) for h in plugin.hits] == [key(h) for h in gdbstub.hits]
    assert {k: plugin.summary[0][k] for k in COUNTS} == {k: gdbstub.summary[0][k] for k in COUNTS}
    assert [h.owner.name for h in plugin.hits] == [h.owner.name for h in gdbstub.hits]
    writer = img.scenarios[str(scenario)]["writer"]
    if scenario == 2:
        return      # the victim writes its own mark: the guest prints no corrupt line
    assert_caught_like_truth(plugin, writer, program)
    # The writing task as the guest itself names it (the gdbstub engine once named
    # `init` for scenario 7's interrupt, so the truth is the reference here).
    tasks = {(int(m.group(2), 16), int(m.group(4))): m.group(3)
             for m in map(CORRUPT.search, plugin.console_log) if m}
    for hit in plugin.hits:
        named = [t for (lo, n), t in tasks.items() if lo <= hit.addr < lo + n]
        assert named and hit.writer_task.name == named[0], (hit.writer_task, tasks)


def test_many_tasks_at_once_match_the_ground_truth(kernel, qemu10):
    img, program = kernel
    plugin, gdbstub = both(img, qemu10, 4)
    for report in (plugin, gdbstub):
        assert_caught_like_truth(report, "s3_corrupt_write", program)
    row = plugin.summary[0]
    assert row["calls"] == row["armed"] + row["not_armed"]
    assert row["returns"] + row["stale"] == row["armed"]


def test_clean_scenario_no_false_positive(kernel, qemu10):
    plugin, gdbstub = both(kernel[0], qemu10, 6)
    assert plugin.hits == [] and gdbstub.hits == []
    row = plugin.summary[0]
    assert row["armed"] == row["calls"] == row["returns"] == 1000
    assert "result=clean" in (plugin.verdict or "")


def test_freeze_stops_the_guest_at_the_first_hit(kernel, qemu10):
    """The plugin holds the writing vCPU until QMP `stop` is on its way: nothing after
    the store runs on that vCPU, not even the corrupter's own ground-truth line."""
    img = kernel[0]
    watch = scenario_watch(img, 3)
    report = PluginRun(RunOptions(scenario=3, watches=[watch], timeout=90, on_hit="freeze"),
                       qemu=qemu10).run()
    assert report.frozen and report.guest_exit is None
    assert [h.writer.function for h in report.hits] == ["s3_corrupt_write"]
    assert report.verdict is None
    assert not any("KSWTEST corrupt" in line for line in report.console_log)
