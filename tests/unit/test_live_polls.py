"""Physical-memory polls in the live driver: a fake guest and a bytearray for its RAM.

The poller is driven by hand (`Poller.step` in the test's thread), so a hit
happens exactly when the test changes the bytearray; the driver's worker runs
against the fake target of `test_live`, which counts interrupts and resumes.
"""

from __future__ import annotations

import pytest

from kswgdb.errors import BadInput
from kswgdb.poll.config import parse_poll
from kswgdb.poll.physmem import BufferMemory
from kswgdb.poll.poller import Poller
from kswgdb.run.live import FROZEN, RUNNING, AddPoll, Continue, RemovePoll
from tests.unit.test_live import live  # noqa: F401 - the fixture

CONSTANT = 0x5EED5EED5EED5EED
ADDR = 0x1000


def put(ram: bytearray, addr: int, value: int) -> None:
    ram[addr:addr + 8] = value.to_bytes(8, "little")


class SteppedPoller(Poller):
    """A poller whose clock moves one second per `step`: every poll is due each time."""

    def __init__(self, *args, **kwargs) -> None:
        self.now = 100.0
        super().__init__(*args, clock=lambda: self.now, **kwargs)

    def step(self, now=None, lane=None):
        self.now += 1.0
        return super().step(now, lane)


def with_polls(run):
    """Give the running session a poller over a 16 KiB bytearray (its 'RAM')."""
    ram = bytearray(0x4000)
    put(ram, ADDR, CONSTANT)
    poller = SteppedPoller(BufferMemory(ram), on_hit=run.session.polls.record)
    run.session.polls.attach(poller)
    return ram, poller


def test_poll_added_while_running_needs_no_stop_and_its_hit_is_published(live):  # noqa: F811
    run = live()
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    ram, poller = with_polls(run)
    poll_id = run.session.add_poll(f"pa={ADDR:#x} len=8 from={CONSTANT:#x}")
    assert poll_id == 1 and [p.id for p in poller.polls()] == [1]
    poller.step()                                       # the constant: no hit
    assert run.session.poll_hits() == []
    put(ram, ADDR, CONSTANT ^ (1 << 17))
    poller.step()
    [hit] = run.session.poll_hits()
    flipped = CONSTANT ^ 1 << 17
    assert (hit.addr, hit.old, hit.new) == (
        ADDR, CONSTANT.to_bytes(8, "little").hex(), flipped.to_bytes(8, "little").hex())
    run.wait("hit in the snapshot", lambda: run.session.snapshot().poll_hit_count == 1)
    [row] = run.session.snapshot().polls
    assert (row.id, row.kind, row.samples, row.hits, row.done, row.removed) == (
        1, "dram", 2, 1, True, False)
    assert run.session.snapshot().state == RUNNING
    assert run.fake.interrupts == 0, "adding a poll or seeing its hit stopped the guest"
    assert run.session.poll_hits(1) == []


def test_bad_poll_spec_is_bad_input_in_the_callers_thread_and_changes_nothing(live):  # noqa: F811
    run = live()
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    _, poller = with_polls(run)
    for text, needle in [(f"pa={ADDR:#x} len=8 bogus=1", "bogus"),
                         ("pa=0x100000 len=8 any=1", "outside memory"),
                         (f"pa={ADDR:#x} len=8", "")]:
        with pytest.raises(BadInput) as caught:
            run.session.add_poll(text)
        message = str(caught.value)
        assert needle in message and "\n" not in message
    run.session.add_poll(f"pa={ADDR:#x} len=8 any=1")
    with pytest.raises(BadInput, match="already polling"):
        run.session.add_poll(f"pa={ADDR:#x}  len=8 any=1")
    with pytest.raises(BadInput, match="no poll with id 7"):
        run.session.remove_poll(7)
    assert [p.id for p in poller.polls()] == [1]
    assert run.fake.interrupts == 0


def test_queued_add_and_remove_poll_commands(live):  # noqa: F811
    run = live()
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    ram, poller = with_polls(run)
    run.session.submit(AddPoll(parse_poll(f"pa={ADDR:#x} len=8 any=1 once=0")))
    run.wait("added", lambda: len(run.session.snapshot().polls) == 1)
    assert "poll #1 started" in run.session.snapshot().notice
    poller.step()
    put(ram, ADDR, 1)
    poller.step()
    run.session.submit(RemovePoll(1))
    run.wait("removed", lambda: run.session.snapshot().polls[0].removed)
    [row] = run.session.snapshot().polls
    assert (row.hits, row.samples) == (1, 2), "a removed poll keeps what it saw"
    assert poller.polls() == []
    put(ram, ADDR, 2)
    poller.step()
    assert len(run.session.poll_hits()) == 1
    run.session.submit(RemovePoll(1))                   # a second time: one-line error
    run.wait("error noted", lambda: run.session.snapshot().notice.startswith("error: no poll"))


def test_poll_freeze_keeps_the_guest_stopped_until_continue(live):  # noqa: F811
    run = live()
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    ram, poller = with_polls(run)
    run.session.add_poll(f"pa={ADDR:#x} len=8 from={CONSTANT:#x} on-hit=freeze")
    poller.step()
    put(ram, ADDR, 0)
    poller.step()
    run.wait("frozen by the poll", lambda: run.session.snapshot().state == FROZEN)
    snap = run.session.snapshot()
    assert "poll #1 on-hit=freeze" in snap.detail and snap.poll_hit_count == 1
    resumes = run.fake.resumes
    assert run.fake.interrupts == 1                     # the fake has no QMP: the worker halts it
    run.session.submit(Continue())
    run.wait("running again", lambda: run.session.snapshot().state == RUNNING)
    assert run.fake.resumes == resumes + 1 and not run.session.polls.freeze_pending()


def test_poll_freeze_seen_at_a_stop_of_the_engine_is_not_resumed(live):  # noqa: F811
    """The freeze flag is set before the stop arrives (as PhysWatch does before QMP stop)."""
    run = live(paused=True)
    run.wait("paused", lambda: run.session.snapshot().state == FROZEN)
    ram, poller = with_polls(run)
    run.session.add_poll(f"pa={ADDR:#x} len=8 any=1 on-hit=freeze")
    run.session.submit(Continue())
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    poller.step()
    put(ram, ADDR, 0)
    poller.step()
    run.wait("frozen", lambda: run.session.snapshot().state == FROZEN)
    resumes = run.fake.resumes
    run.session.submit(Continue())
    run.wait("running", lambda: run.session.snapshot().state == RUNNING)
    assert run.fake.resumes == resumes + 1
