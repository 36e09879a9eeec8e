"""The live driver against a fake guest: watches added and removed while it runs.

The fake guest "runs" until the test lets it play script events one by one
(`LiveFake.allow`), so every command reaches the driver while the guest is
running and has to go through an interrupt, as with QEMU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from kswgdb.errors import BadInput
from kswgdb.qemu.accel import AccelDecision
from kswgdb.run.live import (
    EXITED,
    FROZEN,
    RUNNING,
    AddWatch,
    Continue,
    Freeze,
    LiveSession,
    Quit,
    RemoveWatch,
)
from kswgdb.run.options import RunOptions
from kswgdb.watch.target import Stop
from tests.unit.fake_target import Event, FakeTarget, Program
from tests.unit.test_engine import LAYOUT, PROBE, RET_SITE, WRITER_PC, FakeSymbols, canary_spec

WAIT = 30.0      # generous: these are waits for a thread, not timing assertions


class LiveFake(FakeTarget):
    """A fake guest that runs (no stop) until the test allows script events."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._budget = 0
        self._interrupt = False
        self.interrupts = 0
        self.stops_while_stopped = 0

    def allow(self, events: int) -> None:
        with self._cond:
            self._budget += events
            self._cond.notify_all()

    def interrupt(self) -> None:
        with self._cond:
            self._interrupt = True
            self._cond.notify_all()

    def wait_stop(self, timeout: float | None) -> Stop | None:
        end = time.monotonic() + (timeout or 0.0)
        with self._cond:
            while True:
                if self._interrupt:
                    self._interrupt = False
                    self.interrupts += 1
                    return Stop("other", thread=1, pc=0x1)
                while self._budget > 0 and self.script:
                    self._budget -= 1
                    stop = self.play(self.script.pop(0))
                    if stop is not None:
                        return stop
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


@dataclass
class Running:
    session: LiveSession
    fake: LiveFake
    thread: threading.Thread

    def wait(self, what: str, cond: Callable[[], bool]) -> None:
        end = time.monotonic() + WAIT
        while not cond():
            assert time.monotonic() < end, f"never happened: {what}; {self.session.snapshot()}"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.session.submit(Quit())
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def live():
    started: list[Running] = []

    def start(specs=(), paused: bool = False, **options) -> Running:
        session = LiveSession(RunOptions(**{"timeout": 0, **options}), paused=paused)
        session.layout = LAYOUT
        session.accel = AccelDecision("tcg", "test", "requested")
        session._specs = list(specs)
        fake = LiveFake()
        thread = threading.Thread(target=session.run_on, args=(fake, FakeSymbols()),
                                  daemon=True)
        thread.start()
        run = Running(session, fake, thread)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def test_add_while_running_interrupts_arms_and_catches(live):
    run = live()
    run.wait("guest running", lambda: run.session.snapshot().state == RUNNING)
    assert run.session.snapshot().watches == ()
    prog = Program(run.fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00)
    prog.ret(task=0xA000, frame=f)

    run.session.submit(AddWatch(None, canary_spec()))
    run.wait("watch added", lambda: len(run.session.snapshot().watches) == 1)
    assert run.fake.interrupts == 1
    assert run.fake.breakpoints == {PROBE}
    assert run.session.snapshot().state == RUNNING

    run.fake.allow(3)
    run.wait("hit", lambda: run.session.hits())
    hit = run.session.hits()[0]
    assert hit.writer.function == "corrupter" and hit.addr == f["canary"]
    run.wait("return", lambda: run.session.snapshot().watches[0].returns == 1)
    row = run.session.snapshot().watches[0]
    assert (row.calls, row.armed, row.hits, row.live, row.active) == (1, 1, 1, 0, True)


def test_remove_disarms_the_live_frame_at_once_and_keeps_its_stats(live):
    run = live([canary_spec()])
    prog = Program(run.fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00)
    prog.ret(task=0xA000, frame=f)
    run.fake.script.append(Event("exit"))

    run.fake.allow(1)                                   # the call reaches its probe
    run.wait("armed", lambda: run.session.snapshot().watches[0].live == 1)
    assert run.fake.watchpoints == {(f["canary"], 8)}

    run.session.submit(RemoveWatch(0))
    run.wait("removed", lambda: not run.session.snapshot().watches[0].active)
    assert run.fake.watchpoints == set()                # disarmed at once, not at return
    assert run.fake.breakpoints == set()                # probe and return breakpoint gone

    run.fake.allow(3)                                   # the write and the return: unseen
    run.wait("exit", lambda: run.session.snapshot().state == EXITED)
    assert run.session.hits() == []
    row = run.session.snapshot().watches[0]
    assert (row.calls, row.armed, row.hits, row.live) == (1, 1, 0, 0)


def test_removed_watch_does_not_count_calls_but_another_on_the_same_probe_does(live):
    run = live([canary_spec(), canary_spec(text="fn=victim fo=0x10 dp=1", depth=1)])
    prog = Program(run.fake, PROBE, RET_SITE)
    run.session.submit(RemoveWatch(0))
    run.wait("removed", lambda: not run.session.snapshot().watches[0].active)
    assert run.fake.breakpoints == {PROBE}              # still needed by watch #1
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.ret(task=0xA000, frame=f)
    run.fake.allow(2)
    run.wait("counted", lambda: run.session.snapshot().watches[1].returns == 1)
    rows = run.session.snapshot().watches
    assert rows[0].calls == 0 and rows[1].calls == 1 and rows[1].not_armed == 1


def test_freeze_keeps_the_guest_stopped_until_continue(live):
    run = live()
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    resumes = run.fake.resumes
    run.session.submit(Freeze())
    run.wait("frozen", lambda: run.session.snapshot().state == FROZEN)
    run.session.submit(AddWatch(None, canary_spec()))   # applied while frozen: no interrupt
    run.wait("added", lambda: len(run.session.snapshot().watches) == 1)
    assert run.fake.resumes == resumes and run.fake.interrupts == 1
    assert run.session.snapshot().state == FROZEN
    run.session.submit(Continue())
    run.wait("running again", lambda: run.session.snapshot().state == RUNNING)
    assert run.fake.resumes == resumes + 1


def test_paused_start_waits_for_continue(live):
    run = live(paused=True)
    run.wait("frozen at start", lambda: run.session.snapshot().state == FROZEN)
    assert run.fake.resumes == 0
    run.session.submit(Continue())
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    assert run.fake.resumes == 1 and run.fake.interrupts == 0


def test_a_new_command_kind_needs_only_a_handler(live):
    @dataclass(frozen=True)
    class Peek:
        addr: int

    run = live()
    seen = []
    run.session.handle(Peek, lambda cmd: seen.append(
        (run.session.target.read(cmd.addr, 8), run.session.snapshot().state)))
    run.fake.write(0x5000, b"\x11" * 8)
    run.session.submit(Peek(0x5000))
    run.wait("handled", lambda: seen)
    assert seen[0][0] == b"\x11" * 8 and run.fake.interrupts == 1
    with pytest.raises(TypeError):
        run.session.submit(object())


def test_remove_of_an_unknown_watch_is_bad_input_and_changes_nothing(live):
    run = live([canary_spec()])
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    with pytest.raises(BadInput, match="no active watch #3"):
        run.session.remove_watch(3)
    assert run.session.snapshot().watches[0].active and run.fake.interrupts == 0


def test_engine_add_spec_on_a_held_return_breakpoint_does_not_insert_it_twice():
    from kswgdb.watch.engine import Engine
    from kswgdb.watch.slots import SlotPool

    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.ret(task=0xA000, frame=f)
    engine = Engine(fake, [canary_spec()], LAYOUT, FakeSymbols(), SlotPool(capacity=8))
    engine.install()
    engine.handle(fake.wait_stop(None))                 # the probe: return breakpoint held
    assert fake.breakpoints == {PROBE, RET_SITE}
    other = canary_spec(text="fn=caller fo=0x0")
    other = type(other)(**{**other.__dict__, "probe_addr": RET_SITE, "func": "caller"})
    assert engine.add_spec(other) == 1                  # FakeTarget asserts on a double insert
    engine.remove_spec(0)                               # drops the frame: RET_SITE still a probe
    assert fake.breakpoints == {RET_SITE} and fake.watchpoints == set()
    engine.remove_spec(1)
    assert fake.breakpoints == set()
    with pytest.raises(ValueError):
        engine.remove_spec(1)
    assert [s.calls for s in engine.stats] == [1, 0]


def test_on_hit_freeze_stops_at_the_hit_until_continue(live):
    run = live([canary_spec()], on_hit="freeze")
    prog = Program(run.fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00)
    prog.ret(task=0xA000, frame=f)
    run.fake.allow(3)
    run.wait("frozen at the hit", lambda: run.session.snapshot().state == FROZEN)
    assert len(run.session.hits()) == 1 and "ph=1" in run.session.snapshot().detail
    resumes = run.fake.resumes
    run.session.submit(Continue())
    run.wait("the return after continue",
             lambda: run.session.snapshot().watches[0].returns == 1)
    assert run.fake.resumes > resumes


def test_timeout_freezes_a_running_guest(live):
    run = live(timeout=0.2)
    run.wait("stopped by --timeout", lambda: run.session.snapshot().state == FROZEN)
    assert "--timeout" in run.session.snapshot().detail and run.fake.interrupts == 1
