"""`kswgdb campaign` on the test kernel, as a user runs it (a separate process).

Scenario 4 (eight silent canary corruptions per run) under several seeds: found,
deduplicated to the one expected signature, the directory written; --until-hits
and --budget stop it; a run whose QEMU is killed mid-campaign is recorded and the
rest goes on; Ctrl-C stops every guest and leaves the partial summary. Every
test checks that no QEMU of the campaign outlives it. Each test's seeds are its
own, so its QEMUs are found by their ``seed=`` word among other users' guests.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers.cli_run import ROOT, CliRun, alive
from tests.integration.helpers.procs import processes

WATCH = "fn=s3_victim fo=0x23"
BASE = ["campaign", "--scenario", "4", "--watch", WATCH, "--accel", "tcg",
        "--backtrace", "fp", "--timeout", "90"]


class Campaign(CliRun):
    """A `kswgdb campaign` process (`CliRun`'s finish and stderr, its own start)."""

    def __init__(self, tmp_path: Path, *args: str, seed: int) -> None:
        self.dir = tmp_path / "campaign"
        self.seed = seed
        self.out, self.err = tmp_path / "out.txt", tmp_path / "err.txt"
        argv = [sys.executable, "-m", "kswgdb", *BASE, "--seed-start", str(seed),
                "--dir", str(self.dir), *args]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=tmp_path, stdout=out, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.seen_qemus: set[int] = set()

    def qemus(self) -> list[int]:
        """Live QEMUs of this campaign: their command line carries one of our seeds."""
        found = []
        for pid, _ppid, argv in processes():
            if any(a.startswith(b"kswgdb-kswtest") for a in argv) and any(
                    f"seed={self.seed + i}".encode() in a.split()
                    for a in argv for i in range(64)) and alive(pid):
                found.append(pid)
        self.seen_qemus.update(found)
        return found

    def wait_qemu(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.qemus()
            if found:
                return found[0]
            assert self.proc.poll() is None, self.stderr()
            time.sleep(0.02)
        raise AssertionError(f"no QEMU of the campaign within {timeout}s")

    def summary(self) -> dict:
        return json.loads((self.dir / "summary.json").read_text())

    def assert_no_qemu_left(self, summary: dict) -> None:
        pids = self.seen_qemus | {r["qemu_pid"] for r in summary["runs"] if r.get("qemu_pid")}
        deadline = time.monotonic() + 10
        while self.qemus() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.qemus(), "a QEMU of the campaign outlived it"
        assert not [p for p in pids if alive(p) and self._is_ours(p)]
        assert not [r["pid"] for r in summary["runs"] if r.get("pid") and alive(r["pid"])
                    and self._is_ours(r["pid"])], "a run's worker outlived the campaign"

    @staticmethod
    def _is_ours(pid: int) -> bool:
        try:
            return b"kswgdb" in Path(f"/proc/{pid}/cmdline").read_bytes() or \
                b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False


def test_scenario_4_under_several_seeds_is_caught_and_deduplicated(tmp_path: Path) -> None:
    run = Campaign(tmp_path, "--jobs", "2", "--runs", "3", seed=41000)
    assert run.finish(400) == 1, run.stderr()
    summary = run.summary()
    assert summary["counts"]["runs"] == 3 and summary["counts"]["caught"] == 3
    assert summary["counts"]["armed"] > 0 and summary["ending"] == "3 runs done"
    [sig] = summary["signatures"]
    assert sig["writer"].startswith("s3_corrupt_write+0x")
    assert (sig["victim"], sig["target"], sig["config"]) == ("s3_victim", "canary", WATCH)
    assert sorted(sig["runs"]) == [1, 2, 3] and sorted(sig["seeds"]) == [41000, 41001, 41002]
    assert "corrupted the canary of s3_victim" in sig["first"]["panel"]
    # Every hit is in the per-run logs, and counted once under the signature.
    logged = 0
    for r in summary["runs"]:
        events = [json.loads(ln) for ln in Path(r["log"]).read_text().splitlines()]
        assert events[-1]["event"] == "end" and events[-2]["event"] == "summary"
        hits = [e for e in events if e["event"] == "hit"]
        assert len(hits) == r["hits"] > 0
        logged += len(hits)
        assert f"--seed {r['seed']}" in r["replay"] and r["replay"].startswith("kswgdb run ")
    assert sig["count"] == logged == summary["counts"]["hits"]
    for name in ("summary.txt", "replay.txt", "command.txt"):
        assert (run.dir / name).is_file()
    assert "distinct signatures" in (run.dir / "summary.txt").read_text()
    assert "s3_corrupt_write+0x" in run.out.read_text()          # the table on stdout
    run.assert_no_qemu_left(summary)


def guard_of(seed: int) -> int:
    """The test kernel's stack guard for ``seed`` (guest/main.c)."""
    mask = (1 << 64) - 1
    z = ((seed ^ 0x4B53574755415244) + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def old_value(hit: dict) -> int:
    """A hit's old value: ``0x...`` (the panel's form) or guest-order hex bytes."""
    old = hit["old"]
    return int(old, 16) if old.startswith("0x") else int.from_bytes(bytes.fromhex(old), "little")


def test_each_run_has_its_seed_and_its_replay_line_reproduces_it(tmp_path: Path) -> None:
    """A canary's old value is the guard the guest derived from its seed: every run's
    hits show its own seed's guard, and so does the replay of its line."""
    run = Campaign(tmp_path, "--jobs", "2", "--runs", "2", seed=42000)
    assert run.finish(400) == 1, run.stderr()
    summary = run.summary()
    for r in summary["runs"]:
        olds = {old_value(json.loads(ln)) for ln in Path(r["log"]).read_text().splitlines()
                if '"event": "hit"' in ln}
        assert olds == {guard_of(r["seed"])}, (r["seed"], olds)
    first = summary["runs"][0]
    log = tmp_path / "replay.jsonl"
    argv = shlex.split(first["replay"])
    assert argv[:2] == ["kswgdb", "run"] and argv[argv.index("--seed") + 1] == "42000"
    done = subprocess.run([sys.executable, "-m", "kswgdb", *argv[1:], "--log", str(log)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stderr
    hits = [json.loads(ln) for ln in log.read_text().splitlines() if '"event": "hit"' in ln]
    assert {old_value(h) for h in hits} == {guard_of(42000)}
    assert {h["writer"]["symbol"].split("/")[0] for h in hits} == \
        {summary["signatures"][0]["writer"]}
    assert first["verdict"].startswith("KSWTEST verdict scenario=4")


def test_until_hits_stops_the_campaign(tmp_path: Path) -> None:
    run = Campaign(tmp_path, "--until-hits", "1", seed=43000)
    assert run.finish(400) == 1, run.stderr()
    summary = run.summary()
    assert summary["ending"] == "--until-hits 1 reached"
    assert summary["counts"]["hits"] >= 1 and summary["counts"]["runs"] <= 2
    run.assert_no_qemu_left(summary)


def test_budget_stops_the_campaign_and_the_running_guests(tmp_path: Path) -> None:
    started = time.monotonic()
    # Each run (runs=300, about 30 s) outlasts the budget, so one is surely in flight
    # when it is spent: with short runs the budget could fall between two runs.
    run = Campaign(tmp_path, "--budget", "10s", "--cmdline", "runs=300", seed=44000)
    status = run.finish(400)
    took = time.monotonic() - started
    summary = run.summary()
    assert summary["ending"] == "--budget 10s spent", summary["ending"]
    assert status in (0, 1), run.stderr()
    assert took < 10 + 45, took
    stopped = [r for r in summary["runs"] if r["status"] == "stopped"]
    assert stopped and stopped[-1]["reason"] == "stopped: --budget 10s spent"
    run.assert_no_qemu_left(summary)


def test_a_run_killed_mid_campaign_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    run = Campaign(tmp_path, "--runs", "3", "--cmdline", "runs=30", seed=45000)
    qemu = run.wait_qemu()
    time.sleep(0.5)
    os.kill(qemu, signal.SIGKILL)
    assert run.finish(400) == 1, run.stderr()
    summary = run.summary()
    by_index = {r["index"]: r for r in summary["runs"]}
    assert len(by_index) == 3
    assert by_index[1]["status"] == "fault", by_index[1]
    assert "QEMU was killed" in by_index[1]["reason"], by_index[1]["reason"]
    assert by_index[2]["status"] == by_index[3]["status"] == "caught"
    assert summary["counts"]["failed"] == 1
    assert "runs that did not end normally" in (run.dir / "summary.txt").read_text()
    run.assert_no_qemu_left(summary)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_every_guest_and_writes_the_partial_summary(tmp_path: Path, signum,
                                                                  status) -> None:
    run = Campaign(tmp_path, "--jobs", "2", "--runs", "6", "--cmdline", "runs=30",
                   seed=46000 + 100 * signum)
    run.wait_qemu()
    time.sleep(2.0)
    run.qemus()
    run.proc.send_signal(signum)
    assert run.finish(120) == status, run.stderr()
    summary = run.summary()
    assert summary["ending"].startswith(("interrupted", "terminated")), summary["ending"]
    assert summary["exit_status"] == status
    assert summary["counts"]["stopped"] >= 1
    assert summary["counts"]["runs"] < 6
    run.assert_no_qemu_left(summary)


def test_on_hit_freeze_keeps_one_vmcore_per_signature(tmp_path: Path) -> None:
    run = Campaign(tmp_path, "--jobs", "2", "--runs", "2", "--on-hit", "freeze", seed=47000)
    assert run.finish(400) == 1, run.stderr()
    summary = run.summary()
    [sig] = summary["signatures"]
    kept = Path(sig["vmcore"])
    assert kept.is_file() and kept.stat().st_size > 1 << 20
    assert sorted(p.name for p in run.dir.rglob("*.elf")) == [kept.name]
    other = next(r for r in summary["runs"] if r["index"] != sig["first"]["run"])
    assert other["status"] == "caught" and not Path(other["vmcore"]).exists()
    assert other["vmcore_dropped"] == f"same signature as run {sig['first']['run']}"
    run.assert_no_qemu_left(summary)
