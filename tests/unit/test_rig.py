"""A `Rig` driven with fakes: every resource is released on every way a run ends.

The one-shot driver (`WatchSession`) and the live driver (`LiveSession`) run a
fake guest through a rig whose machine, stub client, target, polls and
unwinder are fakes that record their release. Each ending (normal exit, a hit
that freezes, an exception, a signal, QEMU gone, the deadline, a failed launch)
must leave all of them released and the event log ending with ``summary`` and
``end``.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from kswgdb.exitcodes import ExitStatus, status_of_run
from kswgdb.gdbstub.errors import StubClosed
from kswgdb.poll.config import parse_poll
from kswgdb.qemu import reaper
from kswgdb.qemu.errors import MachineError
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.run import rig as rig_mod
from kswgdb.run.live import LiveSession, RunState
from kswgdb.run.oneshot import WatchSession
from kswgdb.run.prepare import bind_gdb_listen
from kswgdb.run.rig import Rig, Sink, open_rig
from kswgdb.watch.target import Stop
from tests.eventlog_check import problems_in_file
from tests.unit.fake_rig import FakeMachine, FakeUnwinder, RigTarget, Wiring, fake_plan
from tests.unit.fake_target import Program
from tests.unit.test_engine import PROBE, RET_SITE, WRITER_PC, canary_spec

WAIT = 30.0


@pytest.fixture
def wiring(monkeypatch):
    FakeUnwinder.made.clear()
    monkeypatch.setattr(rig_mod, "GdbUnwinder", FakeUnwinder)
    monkeypatch.setattr(reaper, "_signalled", None)     # another test's signal is not ours

    def make(raises: BaseException | None = None, hit: bool = True) -> Wiring:
        target = RigTarget(raises)
        if hit:
            prog = Program(target, PROBE, RET_SITE)
            f = prog.call(task=0xA000, sp=0x8000_3f00)
            prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC,
                       sp=0x9000_3f00)
            prog.ret(task=0xA000, frame=f)
        return Wiring(target)

    return make


def events(plan) -> list[dict]:
    return [json.loads(line) for line in plan.options.log_path.read_text().splitlines()]


def one_shot(plan, wiring: Wiring, sink: Sink | None = None) -> WatchSession:
    session = WatchSession(plan.options, sink=sink, rig_options=wiring.rig_options())
    session.plan = plan
    return session


def assert_released(plan, wiring: Wiring) -> dict:
    """Everything let go; the log ends summary, end; returns the end event."""
    assert wiring.machines and wiring.all_released()
    assert plan.listener is None
    kinds = [e.get("event") for e in events(plan)]
    assert kinds[0] == "start" and kinds[-2:] == ["summary", "end"], kinds
    return events(plan)[-1]


class Recorder(Sink):
    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.hits: list = []
        self.lines: list[str] = []

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def hit(self, hit) -> None:
        self.hits.append(hit)

    def logged(self, line: str) -> None:
        self.lines.append(line)


def test_normal_end_releases_everything_and_reports_through_one_sink(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()], backtrace="gdb")
    w = wiring()
    sink = Recorder()
    report = one_shot(plan, w, sink).run()
    assert len(report.hits) == 1 and report.fault is None
    assert report.guest_exit is not None and report.guest_exit.kind == "debug-exit"
    assert report.verdict and "verdict" in report.verdict
    assert status_of_run(len(report.hits), report.fault) == ExitStatus.HIT
    machine = w.machines[0]
    assert machine.kwargs["gdb"] is True and machine.kwargs["shared_ram"] is False
    assert len(FakeUnwinder.made) == 1                  # --backtrace gdb: made and closed
    end = assert_released(plan, w)
    assert end.pop("run_id") == events(plan)[0]["run_id"] and end.pop("time") > 0
    assert end == {"event": "end", "reason": "exit", "fault": False,
                   "guest_exit": "debug-exit", "guest_exit_reason": "isa-debug-exit",
                   "guest_exit_status": 39, "guest_exit_code": 0x13}
    assert len(sink.hits) == 1 and sink.hits[0].writer.function == "corrupter"
    echoed = [json.loads(x) for x in sink.lines]
    assert [e["event"] for e in echoed][-2:] == ["summary", "end"]
    assert any(s.startswith("accelerator: tcg") for s in sink.statuses)
    # The console is in the log, after ``start``, closed by its count before the summary.
    names = [e["event"] for e in echoed]
    console = [e["line"] for e in echoed if e["event"] == "console"]
    assert console == machine.console.text and names.index("start") < names.index("console")
    assert names[-3:] == ["console-end", "summary", "end"]
    assert {k: v for k, v in echoed[-3].items() if k not in ("time", "run_id")} == \
        {"event": "console-end", "lines": 2, "logged": 2, "dropped": 0}


def test_hit_and_freeze_keeps_a_vmcore_then_releases_everything(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()], on_hit="freeze")
    w = wiring()
    report = one_shot(plan, w).run()
    assert report.result.reason == "freeze" and len(report.hits) == 1
    assert report.vmcore is not None and report.vmcore.parent == tmp_path
    assert w.machines[0].qmp.dumps == [report.vmcore]
    assert assert_released(plan, w)["reason"] == "freeze"
    [dumped] = [e for e in events(plan) if e["event"] == "vmcore"]
    assert dumped["path"] == str(report.vmcore) and dumped["why"] == "hit"


def test_ctrl_c_ending_a_gdb_listen_is_a_normal_end(tmp_path, wiring, monkeypatch):
    """``--gdb-listen`` is ended by Ctrl-C, as documented: the run ends as a frozen run does
    (summary, ``end`` without a fault, the hits' status), not as an interrupted one (130)."""
    plan = fake_plan(tmp_path, [canary_spec()], on_hit="freeze")
    plan.listener = bind_gdb_listen(("127.0.0.1", 0))

    def ctrl_c(_timeout):
        monkeypatch.setattr(reaper, "_signalled", signal.SIGINT)   # as its handler does
        raise KeyboardInterrupt

    monkeypatch.setattr(plan.listener, "accept", ctrl_c)
    sink = Recorder()
    report = one_shot(plan, wiring(), sink).run()
    assert reaper.signalled() is None
    assert report.fault is None and report.hit_count == 1 and report.vmcore is not None
    assert status_of_run(report.hit_count, report.fault) == ExitStatus.HIT
    end = events(plan)[-1]
    assert end["reason"] == "freeze" and end["fault"] is False
    assert "gdb listen ended (Ctrl-C)" in sink.statuses


@pytest.mark.parametrize("raised,reason", [
    (RuntimeError("the stub exploded"), "the stub exploded"),
    (KeyboardInterrupt(), "interrupted (SIGINT)"),
    (SystemExit(143), "terminated (exit status 143)"),
], ids=["exception", "sigint", "sigterm"])
def test_exception_or_signal_releases_everything(tmp_path, wiring, raised, reason):
    plan = fake_plan(tmp_path, [canary_spec()], backtrace="gdb")
    plan.listener = bind_gdb_listen(("127.0.0.1", 0))
    w = wiring(raises=raised)
    with pytest.raises(type(raised)):
        one_shot(plan, w).run()
    end = assert_released(plan, w)
    assert end["reason"] == reason and end["fault"] is True
    summary = events(plan)[-2]
    assert summary["watches"][0]["hits"] == 1          # what was caught is still there


def test_qemu_gone_mid_request_is_a_fault(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    w = wiring(raises=StubClosed("connection reset by peer"))
    session = one_shot(plan, w)
    killed = GuestExit("killed", status=-9, reason="SIGKILL")
    qemu_log = tmp_path / "qemu.log"
    qemu_log.write_text("qemu-system-x86_64: assertion failed\n")
    opts = session.rig_options
    make = opts["machine_factory"]
    opts["machine_factory"] = lambda image, **kw: _with_exit(make(image, log_dir=qemu_log,
                                                                  **kw), killed)
    report = session.run()
    assert report.fault and "QEMU was killed" in report.fault
    assert status_of_run(len(report.hits), report.fault) == ExitStatus.INFRA
    end = assert_released(plan, w)
    assert end["fault"] is True and end["guest_exit"] == "killed"
    assert report.qemu_stderr == ["qemu-system-x86_64: assertion failed"]
    assert report.qemu_log is not None and report.qemu_log.read_text() == qemu_log.read_text()
    assert end["qemu_stderr"] == report.qemu_stderr


def _with_exit(machine: FakeMachine, guest_exit: GuestExit) -> FakeMachine:
    machine.exit = guest_exit
    log = machine.kwargs.get("log_dir")
    machine.stderr_tail = ["qemu-system-x86_64: assertion failed", ""]
    machine.qemu_log_path = log
    return machine


def test_deadline_interrupts_the_guest_and_releases_everything(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()], timeout=0.0)
    w = wiring(hit=False)
    w.target.wait_stop = lambda timeout: None          # the guest runs on and on
    report = one_shot(plan, w).run()
    assert report.result.reason == "deadline" and report.fault is None
    assert w.clients[0].interrupts == 1
    assert assert_released(plan, w)["reason"] == "deadline"


def test_polls_beside_watches_are_released_too(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    plan.poll_specs = [parse_poll("pa=0x1000 len=8 to=0x33")]
    w = wiring()
    one_shot(plan, w).run()
    assert w.machines[0].kwargs["shared_ram"] == "file"
    assert len(w.phys) == 1 and w.phys[0].closed
    assert_released(plan, w)


def test_polls_only_needs_no_stub(tmp_path, wiring):
    plan = fake_plan(tmp_path, [])
    plan.poll_specs = [parse_poll("pa=0x1000 len=8 to=0x33")]
    w = wiring(hit=False)
    report = one_shot(plan, w).run()
    assert w.machines[0].kwargs["gdb"] is False and w.clients == []
    assert report.result.reason == "exit" and report.watches == []
    assert assert_released(plan, w)["reason"] == "exit"


def test_a_failed_launch_releases_what_was_taken(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    plan.listener = bind_gdb_listen(("127.0.0.1", 0))
    w = wiring()
    opts = w.rig_options()

    def broken(image, **kwargs):
        machine = opts_machine(image, **kwargs)
        machine.launch = _raise(MachineError("QEMU did not start: no such file"))
        return machine

    opts_machine = opts["machine_factory"]
    opts["machine_factory"] = broken
    with pytest.raises(MachineError), open_rig(plan, None, **opts):
        pass
    end = assert_released(plan, w)
    assert end["fault"] is True and "QEMU did not start" in end["reason"]


def _raise(exc: BaseException):
    def fail(*_a, **_k):
        raise exc
    return fail


def test_close_is_idempotent(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    w = wiring()
    rig = Rig(plan, None, **w.rig_options())
    rig.launch()
    rig.attach()
    rig.end("quit")
    rig.close()
    rig.close()
    assert [e["event"] for e in events(plan)].count("end") == 1
    assert assert_released(plan, w)["reason"] == "quit"


# ------------------------------------------------------------ the live driver
def _live(plan, w: Wiring) -> LiveSession:
    session = LiveSession(plan.options, machine_factory=w.rig_options()["machine_factory"],
                          rig_options={k: v for k, v in w.rig_options().items()
                                       if k != "machine_factory"})
    session.plan = plan
    session.layout, session.accel = plan.layout, plan.accel
    session._specs = plan.specs
    return session


def _wait(what: str, cond) -> None:
    end = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.01)


def test_live_guest_exit_then_quit_releases_everything(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    w = wiring()
    session = _live(plan, w)
    session.start()
    _wait("exit", lambda: session.snapshot().state == RunState.EXITED)
    assert len(session.hits()) == 1
    session.close()
    assert w.machines[0].kwargs["shared_ram"] == "file"     # polls may come later
    end = assert_released(plan, w)
    assert end["reason"] == "exit" and end["fault"] is False
    assert events(plan)[0]["interactive"] is True


def test_a_tui_log_begins_with_start_before_its_polls(tmp_path, wiring):
    """A live session's polls start at launch, before the worker attaches: `start` is
    written as soon as QEMU runs, so it still comes first (then `polls`, live events)."""
    plan = fake_plan(tmp_path, [canary_spec()])
    plan.poll_specs = [parse_poll("pa=0x1000 len=8 to=0x33")]
    w = wiring()
    rig = Rig(plan, None, interactive=True, **w.rig_options())
    rig.launch()
    names = [e["event"] for e in events(plan)]
    assert names[0] == "start" and [n for n in names if n != "console"] == ["start", "polls"]
    start = events(plan)[0]
    assert start["schema"] == 1 and start["interactive"] is True
    assert start["qemu_version"] is None        # the fake machine detected no QEMU
    rig.attach()
    rig.end("quit")
    rig.close()
    assert problems_in_file(plan.options.log_path) == []
    assert len({e["run_id"] for e in events(plan)}) == 1


def test_live_failure_releases_everything_and_is_reported(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    w = wiring(raises=RuntimeError("stub exploded"))
    session = _live(plan, w)
    session.start()
    _wait("failed", lambda: session.snapshot().state == RunState.FAILED)
    session.close()
    assert session.error is not None and "stub exploded" in str(session.error)
    end = assert_released(plan, w)
    assert end["fault"] is True and "stub exploded" in end["reason"]


def test_live_hang_watchdog_ends_the_session_as_a_fault(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()], hang_timeout=0.2)
    w = wiring(hit=False)
    w.target.wait_stop = lambda timeout: time.sleep(min(timeout or 0, 0.05))  # silent guest
    session = _live(plan, w)
    session.start()
    _wait("failed", lambda: session.snapshot().state == RunState.FAILED)
    session.close()
    assert "hung" in str(session.error)
    assert assert_released(plan, w)["fault"] is True


def test_live_quit_while_running_releases_everything(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    w = wiring(hit=False)
    interrupted = []
    w.target.interrupt = lambda: interrupted.append(1)

    def runs_on(timeout):           # until interrupted: then the interrupt's stop
        if interrupted:
            interrupted.clear()
            return Stop("other", thread=1, pc=0x1)
        time.sleep(min(timeout or 0, 0.05))
        return None

    w.target.wait_stop = runs_on
    session = _live(plan, w)
    session.start()
    _wait("running", lambda: session.snapshot().state == RunState.RUNNING)
    session.close()
    assert assert_released(plan, w)["reason"] == "quit"


# ------------------------------------------- what a signal leaves on the terminal
@pytest.mark.parametrize("raised", [KeyboardInterrupt(), SystemExit(143)],
                         ids=["sigint", "sigterm"])
def test_a_signalled_run_still_reports_what_it_caught(tmp_path, wiring, raised):
    plan = fake_plan(tmp_path, [canary_spec()])
    w = wiring(raises=raised)
    session = one_shot(plan, w)
    with pytest.raises(type(raised)):
        session.run()
    report = session.report_so_far()
    assert report is not None and len(report.hits) == 1
    assert report.summary[0]["hits"] == 1 and report.fault == events(plan)[-1]["reason"]


def test_ctrl_c_prints_the_summary_the_log_and_the_hits_before_the_status(
        tmp_path, wiring, monkeypatch, capsys):
    from kswgdb import cli, commands

    plan = fake_plan(tmp_path, [canary_spec()])
    w = wiring(raises=KeyboardInterrupt())

    class Faked(WatchSession):
        def __init__(self, options, **kwargs):
            super().__init__(options, rig_options=w.rig_options(), **kwargs)
            self.plan = plan

    monkeypatch.setattr(commands, "WatchSession", Faked)
    status = cli.main(["run", "--watch", "fn=s3_victim fo=0x23", "--accel", "tcg",
                       "--log", str(plan.options.log_path)])
    out, err = capsys.readouterr()
    out = " ".join(out.split())                     # rich wraps long lines at 80 columns
    assert status == ExitStatus.INTERRUPTED
    assert "watch summary" in out and "interrupted (SIGINT)" in out
    assert f"event log: {plan.options.log_path}" in out and "1 hit(s)" in out
    assert err.strip().splitlines()[-1] == "kswgdb: interrupted"
    assert_released(plan, w)


def test_a_failure_while_closing_still_releases_the_rest(tmp_path, wiring):
    plan = fake_plan(tmp_path, [canary_spec()])
    plan.poll_specs = [parse_poll("pa=0x1000 len=8 to=0x33")]
    w = wiring()
    rig = Rig(plan, None, **w.rig_options())
    rig.launch()
    rig.attach()
    phys = w.phys[0]

    def broken_stop() -> None:
        raise RuntimeError("poller wedged")

    phys.stop = broken_stop
    with pytest.raises(RuntimeError, match="poller wedged"):
        rig.close()
    end = assert_released(plan, w)          # the machine, client and polls all let go
    assert end["reason"] == "poller wedged" and end["fault"] is True


def test_a_watch_never_called_is_an_unarmed_event_before_the_summary(tmp_path, wiring):
    import dataclasses

    never = dataclasses.replace(canary_spec(), text="fn=other fo=0x10", func="other",
                                func_addr=0x40_3000, probe_addr=0x40_3010)
    plan = fake_plan(tmp_path, [canary_spec(), never])
    report = one_shot(plan, wiring()).run()
    assert report.unarmed == ["watch 'fn=other fo=0x10' was never armed: other was never called"]
    kinds = [e.get("event") for e in events(plan)]
    assert kinds[-4:] == ["console-end", "unarmed", "summary", "end"], kinds
    assert events(plan)[-3]["warnings"] == report.unarmed
