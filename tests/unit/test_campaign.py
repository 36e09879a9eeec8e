"""`kswgdb campaign` without QEMU: signatures, options, the tally, replay lines, the
directory, and the campaign loop over a fake pool (stops, lost runs, Ctrl-C)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pytest

from kswgdb.campaign import options as copts
from kswgdb.campaign import signature
from kswgdb.campaign.directory import CampaignDir
from kswgdb.campaign.pool import Running
from kswgdb.campaign.replay import replay_argv
from kswgdb.campaign.runner import Campaign
from kswgdb.campaign.tally import Tally
from kswgdb.campaign.worker import RunJob, RunOutcome
from kswgdb.cli import build_parser, main
from kswgdb.errors import BadInput
from kswgdb.exitcodes import ExitStatus
from kswgdb.run.options import RunOptions, options_from_args
from kswgdb.run.seed import seeded_cmdline

WATCH = "fn=s3_victim fo=0x23"


def hit_json(symbol="s3_corrupt_write+0x51/0x82", config=WATCH, addr="0x163f08",
             victim="s3_victim"):
    return {"config": config, "addr": addr, "watched_func": victim, "cpu": 1,
            "writer": {"symbol": symbol, "function": symbol.split("+")[0]}}


# ----------------------------------------------------------------- signatures
def test_hits_differing_only_in_address_task_and_value_share_a_signature():
    a = signature.of_hit(hit_json(addr="0x1"))
    b = signature.of_hit({**hit_json(addr="0x2"), "cpu": 0, "new": "ff"})
    assert a == b and a.ident == b.ident
    assert a.key == "s3_corrupt_write+0x51 -> s3_victim canary [fn=s3_victim fo=0x23]"


@pytest.mark.parametrize("other", [
    hit_json(symbol="s3_corrupt_write+0x55/0x82"),      # another store
    hit_json(victim="s2_recurse"),                       # another victim
    hit_json(config="fn=s3_victim fo=0x23 dp=1"),        # another watch config
])
def test_a_different_writer_victim_or_config_is_a_different_signature(other):
    assert signature.of_hit(hit_json()).ident != signature.of_hit(other).ident


def test_the_watched_target_comes_from_the_config():
    assert signature.watched_target(WATCH) == "canary"
    assert signature.watched_target("fn=s11_victim fo=0x40 var=buf[9]") == "var=buf[9]"
    assert signature.watched_target("fn=f fo=0x4 so=0x10 wl=8") == "so=0x10 wl=8"


# -------------------------------------------------------------------- options
def test_durations():
    assert copts.parse_duration("90") == 90
    assert copts.parse_duration("15m") == 900
    assert copts.parse_duration("1h30m") == 5400
    for bad in ("", "soon", "-5s", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            copts.parse_duration(bad)


def test_runs_default_only_without_another_stop():
    assert copts.CampaignOptions(RunOptions()).run_limit == copts.DEFAULT_RUNS
    assert copts.CampaignOptions(RunOptions(), until_hits=2).run_limit is None
    assert copts.CampaignOptions(RunOptions(), budget=60, runs=3).run_limit == 3


@pytest.mark.parametrize("argv, words", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--until-hits", "0"], "--until-hits"),
    (["--log", "x.jsonl"], "--log is not for campaigns"),
    (["--seed", "3"], "--seed is not for campaigns"),
    (["--gdb-listen", "127.0.0.1:0"], "--gdb-listen is not for campaigns"),
    (["--budget", "soon"], "not a duration"),
    (["--watch", "fn=no_such_function fo=0x4"], "no_such_function"),
])
def test_bad_input_is_exit_2_before_any_guest_or_directory(argv, words, no_guest, tmp_path,
                                                           capsys):
    status = main(["campaign", "--scenario", "4", "--watch", WATCH, "--dir",
                   str(tmp_path / "c"), *argv])
    assert status == ExitStatus.BAD_INPUT
    assert words in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_used_directory_is_refused(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    with pytest.raises(BadInput, match="one directory per campaign"):
        CampaignDir.create(tmp_path / "old")
    made = CampaignDir.create(tmp_path / "new")
    assert (made.path / "runs").is_dir() and (made.path.stat().st_mode & 0o777) == 0o700


# --------------------------------------------------------------- seed, replay
def test_the_seed_word_per_guest():
    assert seeded_cmdline("", "kswtest", 7) == "seed=7"
    assert seeded_cmdline("runs=3", "kswtest", 7) == "runs=3 seed=7"
    assert seeded_cmdline("quiet", "linux", 7) == "quiet KSWGDB_SEED=7"
    assert seeded_cmdline("runs=3", "kswtest", None) == "runs=3"
    # A Linux guest's command after " -- " stays the command; the seed is the kernel's.
    assert seeded_cmdline("nokaslr -- ./repro --loops 9", "linux", 7) == \
        "nokaslr KSWGDB_SEED=7 -- ./repro --loops 9"
    assert seeded_cmdline("-- ./repro", "linux", 7) == "KSWGDB_SEED=7 -- ./repro"


def test_the_replay_line_parses_back_to_the_template_with_the_seed(tmp_path):
    template = RunOptions(image="images/kswtest.toml", scenario=4, watches=[WATCH, "fn=f fo=1"],
                          polls=["pa=0x1000 len=8 to=0x33"], cmdline="runs=3", timeout=30.0,
                          on_hit="freeze", slots=6, backtrace="fp", hang_timeout=5.0,
                          accel="tcg", log_path=tmp_path / "r.jsonl",
                          modules=[str(tmp_path / "m.ko")], drives=["/d.img,overlay", "/e.img"],
                          qemu_args=["-device", "virtio-rng-pci"])
    argv = replay_argv(template, 42, log=tmp_path / "r.jsonl")
    assert argv[:2] == ["kswgdb", "run"]
    back = options_from_args(build_parser().parse_args(argv[1:]))
    assert back == dataclasses.replace(template, seed=42)


# ---------------------------------------------------------------------- tally
def outcome(index, status="caught", sigs=None, armed=4, vmcore=None, seed=None):
    sigs = {} if sigs is None else sigs
    examples = {k: {"signature": signature.Signature(k, "v", "canary", WATCH).to_json(),
                    "hit": {}, "panel": "P"} for k in sigs}
    data = dataclasses.asdict(RunOutcome(
        index=index, seed=seed if seed is not None else 100 + index, status=status,
        exit_status=1 if sigs else 0, calls=armed, armed=armed, hits=sum(sigs.values()),
        signatures=sigs, examples=examples, vmcore=vmcore))
    return data


def test_the_tally_reports_each_signature_once_with_its_runs_and_seeds():
    tally = Tally()
    tally.add(outcome(2, sigs={"A": 3}))
    tally.add(outcome(1, sigs={"A": 1, "B": 2}))
    tally.add(outcome(3, status="clean"))
    assert tally.hits == 6 and len(tally.findings) == 2
    a = tally.findings["A"].to_json()
    assert a["count"] == 4 and a["runs"] == [2, 1] and a["seeds"] == [102, 101]
    assert a["first"]["run"] == 2 and a["first"]["panel"] == "P"
    assert tally.status(watches=True) == ExitStatus.HIT


def test_statuses_nothing_caught_never_armed_interrupted():
    clean = Tally()
    clean.add(outcome(1, status="clean"))
    assert clean.status(watches=True) == ExitStatus.OK
    never = Tally()
    never.add(outcome(1, status="unarmed", armed=0))
    never.add(outcome(2, status="failed", armed=0))
    assert never.status(watches=True) == ExitStatus.UNARMED
    assert never.status(watches=False) == ExitStatus.OK          # polls only
    assert clean.status(watches=True, signalled=130) == ExitStatus.INTERRUPTED


def test_one_vmcore_per_signature(tmp_path):
    cores = [tmp_path / f"core{i}.elf" for i in range(3)]
    for core in cores:
        core.write_bytes(b"ELF")
        Path(f"{core}.vmcoreinfo").write_text("OSRELEASE=6.1\n")    # a Linux dump's companion
    tally = Tally()
    tally.add(outcome(1, sigs={"A": 1}, vmcore=str(cores[0])))
    tally.add(outcome(2, sigs={"A": 1}, vmcore=str(cores[1])))
    tally.add(outcome(3, sigs={"B": 1}, vmcore=str(cores[2])))
    assert [c.exists() for c in cores] == [True, False, True]
    assert [Path(f"{c}.vmcoreinfo").exists() for c in cores] == [True, False, True]
    assert tally.findings["A"].vmcore == str(cores[0])
    assert tally.outcomes[1]["vmcore_dropped"] == "same signature as run 1"


# ------------------------------------------------------------ campaign loop
class FakeProcess:
    def __init__(self, pid):
        self.pid = pid


class FakePool:
    """Runs end in order, one poll each: ``script[i]`` is run i+1's ending
    ("caught", "clean", or ("died", exitcode))."""

    def __init__(self, script, live_hits=0):
        self.script, self.live_hits = script, live_hits
        self.running: dict[int, Running] = {}
        self.started: list[RunJob] = []
        self.interrupted: list[int] = []

    def start(self, job):
        self.started.append(job)
        run = self.running[job.index] = Running(job, FakeProcess(1000 + job.index), None)
        run.hits = ["A"] * self.live_hits
        return run

    def poll(self, _timeout):
        if not self.running:
            return []
        time.sleep(0.02)                 # a run takes a moment
        run = self.running.pop(min(self.running))
        ending = self.script[run.job.index - 1]
        if isinstance(ending, tuple):
            return [(run, *ending)]
        caught = ending == "caught"
        return [(run, "outcome", outcome(run.job.index, seed=run.job.seed, status=ending,
                                         sigs={"A": 1} if caught else {}))]

    def interrupt(self, run):
        self.interrupted.append(run.job.index)

    kill = interrupt

    def close(self, grace=0):
        out = []
        for index in sorted(self.running):
            run = self.running.pop(index)
            self.interrupted.append(index)
            out.append((run, "outcome", {**outcome(index, status="stopped", seed=run.job.seed),
                                         "reason": "stopped by the campaign"}))
        return out


def campaign(tmp_path, pool, **kw):
    opts = copts.CampaignOptions(RunOptions(watches=[WATCH], timeout=30), seed_start=10, **kw)
    ended = []
    c = Campaign(opts, CampaignDir.create(tmp_path / "c"), pool=pool, on_run_end=ended.append)
    return c, ended


def test_runs_seeds_directory_and_a_lost_worker_recorded(tmp_path):
    pool = FakePool(["caught", ("died", -9), "caught"])
    c, ended = campaign(tmp_path, pool, runs=3, jobs=2)
    assert c.run() == ExitStatus.HIT
    assert [j.seed for j in pool.started] == [10, 11, 12]
    lost = next(o for o in ended if o["index"] == 2)
    assert lost["status"] == "failed" and "killed by signal 9" in lost["reason"]
    summary = json.loads((c.dir.path / "summary.json").read_text())
    assert summary["counts"]["runs"] == 3 and summary["counts"]["failed"] == 1
    assert summary["signatures"][0]["runs"] == [1, 3]
    assert "--seed 11" in summary["runs"][1]["replay"]
    assert "# run 3 seed 12" in (c.dir.path / "replay.txt").read_text()
    assert "distinct signatures" in (c.dir.path / "summary.txt").read_text()


def test_until_hits_stops_launching_and_stops_the_running(tmp_path):
    pool = FakePool(["caught"] * 50, live_hits=1)
    c, _ = campaign(tmp_path, pool, until_hits=2, jobs=2)
    assert c.run() == ExitStatus.HIT
    assert len(pool.started) < 50 and c.ending == "--until-hits 2 reached"
    stopped = [o for o in c.tally.outcomes if o["status"] == "stopped"]
    assert all(o["reason"] == "stopped: --until-hits 2 reached" for o in stopped)


def test_budget_stops(tmp_path):
    pool = FakePool(["clean"] * 1000)
    c, _ = campaign(tmp_path, pool, budget=0.3, jobs=1)
    assert c.run() == ExitStatus.OK
    assert c.ending == "--budget 0.3s spent" and len(pool.started) < 1000


def test_ctrl_c_writes_the_partial_summary(tmp_path):
    pool = FakePool(["caught"] * 10)
    c, _ = campaign(tmp_path, pool, runs=10, jobs=2)
    calls = []

    def progress(_c):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    c.on_progress = progress
    with pytest.raises(KeyboardInterrupt):
        c.run()
    summary = json.loads((c.dir.path / "summary.json").read_text())
    assert summary["ending"] == "interrupted (SIGINT)"
    assert summary["exit_status"] == ExitStatus.INTERRUPTED
    assert summary["counts"]["stopped"] >= 1 and not pool.running


def test_a_failure_of_the_campaign_itself_still_stops_runs_and_writes_the_summary(tmp_path):
    pool = FakePool(["caught"] * 10)
    c, _ = campaign(tmp_path, pool, runs=10, jobs=2)

    def broken(_c):
        raise OSError("disk full")

    c.on_progress = broken
    with pytest.raises(OSError):
        c.run()
    summary = json.loads((c.dir.path / "summary.json").read_text())
    assert summary["ending"] == "failed: disk full" and summary["exit_status"] == 3
    assert not pool.running


def test_a_dead_workers_run_directory_is_swept(tmp_path, monkeypatch):
    import os
    import tempfile

    from kswgdb.campaign import cluster

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{cluster.RUN_DIR_PREFIX}{2**22 + 12345}-abc"   # above any pid_max
    live = tmp_path / f"{cluster.RUN_DIR_PREFIX}{os.getpid()}-abc"
    for d in (dead, live):
        d.mkdir()
        (d / "events.jsonl").write_text("")   # an empty log: only the directory matters
    cluster.sweep_lost_runs()
    assert not dead.exists() and live.exists()
