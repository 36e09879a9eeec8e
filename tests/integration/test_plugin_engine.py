"""Every test-kernel watch scenario on both engines that ship, their hits compared.

The TCG plugin engine (`--engine plugin`, on QEMU 10) against the gdbstub engine
(`--engine gdbstub`, on the QEMU of the run: 7.2 in `make test`'s first pass),
each through `WatchSession` as `kswgdb run` drives it, with the watch derived
from the image by `scenario_watch`. The gdbstub engine is the reference:

- 0-3, 5, 7 (stack canaries, one corrupter) and 11-13 (a local array's
  ``buf[9]``, written through a stale pointer, following the disasm
  suggestion): the same hits (writer instruction, slot, old and new bytes,
  depth, owner task) and the same counts; writer tasks also against the
  guest's own ground-truth lines;
- 4 (many tasks at once): each engine's hits against the ground truth;
- 6 (clean): neither reports anything, every call armed and released;
- 14 (hit storm on 2 vCPUs): every poke the guest counts is one plugin hit in
  the log (bench-sized for the gdbstub engine: test_hit_storm.py covers it);
- 15 (wedge): the hang watchdog ends a plugin run too (exit fault "hung").

Not here: 8-10 are physical-memory scenarios with no function to watch
(``--poll``, which needs the gdbstub: auto never picks the plugin for them).
QEMU 10 and the plugin header come from `kswgdb.qemu.fetch` (``make qemu10``);
without them the tests fail, saying why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kswgdb import image as image_mod
from kswgdb.plugin.build import build
from kswgdb.qemu import binary
from kswgdb.qemu.fetch import FetchError, fetch
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.program import Program
from kswgdb.watch.scenarios import scenario_watch
from tests.integration.test_watch_scenarios import CORRUPT, assert_caught_like_truth

#: Independent of the QEMU under test: `make test` runs it once, not per QEMU version.
pytestmark = [pytest.mark.integration, pytest.mark.one_qemu]

SAME_HITS = [0, 1, 2, 3, 5, 7, 11, 12, 13]
COUNTS = ("calls", "armed", "skipped_depth", "returns", "stale", "hits")
POKES = re.compile(r"KSWTEST verdict scenario=14 .* pokes=(\d+)")


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


def on_plugin(qemu, options: RunOptions) -> RunReport:
    """`kswgdb --qemu QEMU10 run --engine plugin ...`."""
    with binary.using(str(qemu.binary)):
        session = WatchSession(replace(options, engine="plugin"))
        report = session.run()
    assert session.plan is not None and session.plan.engine.engine == "plugin"
    # No gdbstub, so no -icount: only the gdbstub engine's REP-string stops need it.
    argv = session.rig.machine.argv
    assert "-plugin" in argv and "-icount" not in argv and "-gdb" not in argv
    return report


def both(img, qemu, scenario: int, cmdline: str = "") -> tuple[RunReport, RunReport]:
    options = RunOptions(scenario=scenario, watches=[scenario_watch(img, scenario)],
                         accel="tcg", timeout=90, cmdline=cmdline)
    plugin = on_plugin(qemu, options)
    assert plugin.fault is None and plugin.result.reason == "exit", \
        (plugin.fault, plugin.console_log[-5:])
    assert plugin.guest_exit is not None and plugin.guest_exit.status == 33 + 2 * scenario, \
        plugin.guest_exit
    gdbstub = WatchSession(replace(options, engine="gdbstub")).run()
    assert gdbstub.result.reason == "exit", gdbstub.console_log[-5:]
    return plugin, gdbstub


def key(hit) -> tuple:
    return (hit.writer.function, hit.writer.insn_addr, hit.addr, hit.length, hit.depth,
            hit.old, hit.new, hit.what, hit.owner.name)


@pytest.mark.parametrize("scenario", SAME_HITS)
def test_plugin_hits_equal_the_gdbstub_engines(kernel, qemu10, scenario):
    img, program = kernel
    plugin, gdbstub = both(img, qemu10, scenario, "runs=3" if scenario >= 11 else "")
    assert plugin.hits, f"the plugin caught nothing; summary {plugin.summary}"
    assert [key(h) for h in plugin.hits] == [key(h) for h in gdbstub.hits]
    assert {k: plugin.summary[0][k] for k in COUNTS} == {k: gdbstub.summary[0][k] for k in COUNTS}
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


def test_hit_storm_every_poke_is_one_logged_hit(kernel, qemu10, tmp_path: Path):
    log = tmp_path / "events.jsonl"
    report = on_plugin(qemu10, RunOptions(scenario=14, watches=[scenario_watch(kernel[0], 14)],
                                          accel="tcg", timeout=120, log_path=log))
    assert report.fault is None and report.guest_exit is not None, report.fault
    pokes = int(next(m for m in map(POKES.search, report.console_log) if m).group(1))
    events = [json.loads(line) for line in log.read_text().splitlines()]
    hits = [e for e in events if e["event"] == "hit"]
    assert pokes > 0 and len(hits) == report.hit_count == pokes
    assert {h["writer"]["function"] for h in hits} == {"s14_poke"}
    start = events[0]
    assert (start["event"], start["engine"]) == ("start", "plugin")
    assert events[-1]["event"] == "end" and not events[-1]["fault"]


def test_a_wedged_guest_is_ended_by_the_hang_watchdog(kernel, qemu10):
    report = on_plugin(qemu10, RunOptions(scenario=15, watches=[scenario_watch(kernel[0], 15)],
                                          accel="tcg", timeout=60, hang_timeout=3))
    assert report.fault is not None and report.fault.startswith("the guest hung"), report.fault


def test_freeze_stops_the_guest_at_the_first_hit(kernel, qemu10, tmp_path: Path):
    """The plugin holds the writing vCPU until QMP `stop` is on its way: nothing after
    the store runs on that vCPU, not even the corrupter's own ground-truth line; the
    frozen guest is dumped as the gdbstub engine's is."""
    report = on_plugin(qemu10, RunOptions(scenario=3, watches=[scenario_watch(kernel[0], 3)],
                                          accel="tcg", timeout=90, on_hit="freeze",
                                          log_path=tmp_path / "log.jsonl"))
    assert report.result.reason == "freeze" and report.guest_exit is None
    assert [h.writer.function for h in report.hits] == ["s3_corrupt_write"]
    assert report.verdict is None
    assert not any("KSWTEST corrupt" in line for line in report.console_log)
    assert report.vmcore is not None and report.vmcore.stat().st_size > 0


def kswgdb_cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kswgdb", *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **env})


def test_cli_auto_takes_the_plugin_on_qemu_10_and_says_so(kernel, qemu10, tmp_path: Path):
    """`kswgdb --qemu QEMU10 run`: the plugin engine, named on stderr and in `start`;
    the same panel and exit status 1 (a hit) as the gdbstub engine."""
    log = tmp_path / "e.jsonl"
    proc = kswgdb_cli("--qemu", str(qemu10.binary), "run", "--scenario", "3",
                      "-w", scenario_watch(kernel[0], 3), "--log", str(log),
                      KSWGDB_ENGINE="")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "engine: plugin (QEMU 10.0." in proc.stderr
    assert "Caught stack corruption #1" in proc.stdout and "s3_corrupt_write" in proc.stdout
    start = json.loads(log.read_text().splitlines()[0])
    assert start["engine"] == "plugin" and start["engine_reason"].startswith("QEMU 10.0.")


def test_cli_plugin_where_it_cannot_run_is_one_line_and_exit_2(kernel, tmp_path: Path):
    """QEMU 7.2 (the system's): `--engine plugin` is bad input before boot; auto runs
    the gdbstub engine and says why."""
    proc = kswgdb_cli("--qemu", "qemu-system-x86_64", "run", "--scenario", "3",
                      "-w", scenario_watch(kernel[0], 3), "--engine", "plugin",
                      "--log", str(tmp_path / "e.jsonl"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"kswgdb: error: --engine plugin: QEMU 7\.2\.\d+ has no plugin API 4 \(needs >= "
        r"9\.2\.0; `make qemu10` fetches 10\.0 into build/qemu10\) \(use --engine gdbstub "
        r"or auto\)", lines[0]), lines
    assert not (tmp_path / "e.jsonl").exists()
