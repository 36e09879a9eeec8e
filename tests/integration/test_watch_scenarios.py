"""KStackWatch's test cases, caught end to end: test kernel under TCG, real gdbstub.

Each scenario prints its own ground truth (``KSWTEST corrupt writer=FN addr=A
len=L``) right after every corrupting write. A catch counts only if kswgdb
names the same writer function and a watched address inside the written range,
and the instruction it names really is a store in that function.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from kswgdb import image as image_mod
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.program import Program
from kswgdb.watch.scenarios import scenario_watch

CORRUPT = re.compile(r"KSWTEST corrupt writer=(\S+) addr=(0x[0-9a-f]+) task=(\S+) len=(\d+)")


@pytest.fixture(scope="module")
def img():
    return image_mod.load(None)


@pytest.fixture(scope="module")
def program(img):
    return Program.load(img.symbols)


def run(img, scenario: int, watch: str | None = None, cmdline: str = "",
        tmp_path=None) -> RunReport:
    watch = watch or scenario_watch(img, scenario)
    log = tmp_path / "events.jsonl" if tmp_path is not None else None
    report = WatchSession(RunOptions(scenario=scenario, watches=[watch], accel="tcg",
                                     timeout=90, cmdline=cmdline, log_path=log)).run()
    assert report.result.reason == "exit", report.console_log[-10:]
    assert report.guest_exit is not None and report.guest_exit.code == 0x10 + scenario, \
        report.console_log[-10:]
    return report


def truth(report: RunReport) -> list[tuple[str, int, int]]:
    out = []
    for line in report.console_log:
        m = CORRUPT.search(line)
        if m:
            out.append((m.group(1), int(m.group(2), 16), int(m.group(4))))
    return out


def assert_caught_like_truth(report: RunReport, writer: str, program: Program) -> None:
    assert report.hits, f"no hit; summary {report.summary}"
    truths = [(a, a + n) for fn, a, n in truth(report) if fn == writer]
    assert truths, "the guest printed no ground truth for this writer"
    for hit in report.hits:
        assert hit.writer.function == writer, hit.writer
        assert any(lo <= hit.addr < hi for lo, hi in truths), (hex(hit.addr), truths)
        insn = program.disasm.function(writer).at(hit.writer.insn_addr)
        assert insn is not None and insn.writes_memory, hit.writer
        assert hit.writer.source is not None and hit.writer.source.file.endswith(".c")
        assert bytes.fromhex(hit.old) != bytes.fromhex(hit.new)


@pytest.mark.parametrize("scenario", [0, 1, 3, 5])
def test_scenario_caught_with_the_right_writer(img, program, scenario, tmp_path):
    report = run(img, scenario, tmp_path=tmp_path)
    writer = img.scenarios[str(scenario)]["writer"]
    assert_caught_like_truth(report, writer, program)
    stats = report.summary[0]
    assert stats["calls"] == stats["armed"] + stats["not_armed"]
    assert (tmp_path / "events.jsonl").read_text().count('"event": "hit"') == len(report.hits)


def test_scenario0_hits_on_corrupt_and_on_repair(img, program):
    report = run(img, 0)
    assert [h.writer.function for h in report.hits] == ["s0_poke", "s0_poke"]
    guard = report.hits[0].old
    assert report.hits[1].new == guard          # the repair writes the guard back


def test_scenario2_depth3_gives_exactly_one_hit_from_depth_3(img, program):
    report = run(img, 2)
    assert len(report.hits) == 1, [(h.depth, hex(h.addr)) for h in report.hits]
    hit = report.hits[0]
    assert hit.depth == 3 and hit.writer.function == "s2_recurse"
    marks = {int(m.group(1)): int(m.group(2), 16) for m in
             (re.search(r"KSWTEST s2 depth=(\d+) mark=(0x[0-9a-f]+)", ln)
              for ln in report.console_log) if m}
    assert set(marks) == set(range(6))
    assert hit.addr == marks[3]
    stats = report.summary[0]
    assert stats["calls"] == 6 and stats["armed"] == 1 and stats["skipped_depth"] == 5


def test_scenario4_catches_several_concurrent_victims(img, program):
    report = run(img, 4)
    assert_caught_like_truth(report, "s3_corrupt_write", program)
    owners = {h.owner.task for h in report.hits}
    assert len(owners) >= 2, owners
    assert report.max_live_watches >= 2


def test_scenario7_interrupt_context_writer_caught(img, program):
    report = run(img, 7)
    assert_caught_like_truth(report, "s7_irq_corrupt", program)
    hit = report.hits[0]
    assert hit.interrupt
    # The timer interrupt of either CPU may do the write: whichever task it
    # interrupted is the writer task, as the guest itself reports.
    tasks = {m.group(3) for m in map(CORRUPT.search, report.console_log) if m}
    assert hit.writer_task.name in tasks and hit.owner.name == "s7victim"
    assert any("timer_interrupt" in f.symbol for f in hit.backtrace)


def test_clean_workload_has_no_false_positive_over_1000_armed_calls(img):
    report = run(img, 6)
    stats = report.summary[0]
    assert report.hits == []
    assert stats["armed"] >= 1000, stats
    assert stats["returns"] == stats["calls"], stats
    assert "result=clean" in (report.verdict or "")


def test_panic_hit_freezes_the_guest_and_keeps_a_vmcore(img, tmp_path):
    watch = scenario_watch(img, 3) + " ph=1"
    report = WatchSession(RunOptions(scenario=3, watches=[watch], accel="tcg", timeout=60,
                                     log_path=tmp_path / "events.jsonl")).run()
    assert report.result.reason == "freeze"
    assert len(report.hits) == 1 and report.hits[0].writer.function == "s3_corrupt_write"
    assert report.vmcore is not None and report.vmcore.parent == tmp_path
    assert report.vmcore.stat().st_mode & 0o777 == 0o600
    assert report.vmcore.read_bytes()[:4] == b"\x7fELF"
    assert report.guest_exit is None        # stopped at the hit, never ran to its end
    # The inspect command (gdb for the test kernel) opens the dump: the guest's clock
    # there is the one read through the stub at the freeze, the hit's own.
    frozen = report.frozen
    assert frozen is not None and frozen.ticks == report.hits[0].guest_time is not None
    proc = subprocess.run([*shlex.split(frozen.inspect), "-batch", "-ex", "p jiffies"],
                          capture_output=True, text=True, timeout=60)
    assert re.search(rf"^\$1 = {frozen.ticks}$", proc.stdout, re.MULTILINE), \
        (frozen.inspect, proc.stdout[-500:], proc.stderr[-500:])
    logged = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {"event": "vmcore", "path": str(report.vmcore), "why": "hit"}.items() <= \
        next(e for e in logged if e["event"] == "vmcore").items()


def test_cli_run_exit_status_1_and_jsonl_events(tmp_path):
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", "--scenario", "3", "--json",
         "--log", str(tmp_path / "ev.jsonl"), "--watch", "fn=s3_victim fo=0x23"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-500:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["summary", "end"] and "hit" in kinds
    hit = next(e for e in events if e["event"] == "hit")
    assert hit["writer"]["function"] == "s3_corrupt_write"
    logged = (tmp_path / "ev.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"] for x in logged] == kinds
    # The log says which QEMU ran it, and one run id and a timestamp are on every event.
    from kswgdb.qemu import binary

    assert events[0]["schema"] == 1
    assert events[0]["qemu_version"] == str(binary.selected().version)
    assert len({e["run_id"] for e in events}) == 1
    assert all(e["time"] >= events[0]["time"] for e in events)
