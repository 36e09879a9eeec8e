"""The fault decisions without QEMU: exit classification, the watchdog, the engine's
deadline and stop checks even when stops never pause."""

from __future__ import annotations

from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.watch.engine import Engine
from kswgdb.watch.faults import Watchdog, exit_fault, normal_exits
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.slots import SlotPool
from kswgdb.watch.target import Stop


def test_exit_classification() -> None:
    assert exit_fault(GuestExit("debug-exit", status=39, code=0x13)) is None
    assert exit_fault(GuestExit("triple-fault", reason="guest-reset")).startswith(
        "the guest triple-faulted while watching")
    assert exit_fault(GuestExit("shutdown", reason="guest-shutdown")).startswith(
        "the guest powered off")
    assert exit_fault(GuestExit("killed", status=-9, reason="QEMU killed by SIGKILL")) == \
        "QEMU was killed while watching (QEMU killed by SIGKILL)"
    assert exit_fault(GuestExit("timeout"), "gdbstub connection closed").startswith(
        "the gdbstub connection closed while QEMU kept running")
    assert exit_fault(None, "x") is not None


def test_a_guest_kernel_panic_is_an_ending_not_a_fault() -> None:
    """LKDTM's corruption ends in the kernel's own panic: the hits decide 1 vs 0."""
    assert exit_fault(GuestExit("panic", status=0, reason="guest-reset",
                                panic="Kernel panic - not syncing: stack-protector")) is None
    assert exit_fault(GuestExit("panic", status=0, reason="guest-panic")) is None


def test_a_linux_guest_powering_off_ends_its_run() -> None:
    """images/linux/init powers off after its command; the test kernel never does."""
    off = GuestExit("shutdown", status=0, reason="guest-shutdown")
    assert exit_fault(off, normal=normal_exits("linux")) is None
    assert exit_fault(off, normal=normal_exits("kswtest")) is not None
    assert exit_fault(GuestExit("triple-fault", reason="guest-reset"),
                      normal=normal_exits("linux")) is not None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_hang_needs_silence_for_the_whole_period() -> None:
    clock, activity = _Clock(), [0]
    dog = Watchdog(lambda: activity[0], lambda: False, hang_timeout=5, clock=clock)
    clock.now = 4.9
    assert not dog.should_stop()
    activity[0] += 1                 # a console line: the clock restarts
    clock.now = 9.0
    assert not dog.should_stop()
    clock.now = 13.9
    assert not dog.should_stop()
    clock.now = 14.0
    assert dog.should_stop() and "no console output, no stop and no clock tick for 5s" in dog.reason


def test_watchdog_off_by_default_but_qmp_loss_always_counts() -> None:
    clock, lost = _Clock(), [False]
    dog = Watchdog(lambda: 0, lambda: lost[0], clock=clock)
    clock.now = 1e6
    assert not dog.should_stop()
    lost[0] = True
    assert dog.should_stop() and "QMP connection closed" in dog.reason


class _BusyTarget:
    """A guest that stops all the time (an unexpected stop, over and over)."""

    def __init__(self) -> None:
        self.stops = 0

    def resume(self) -> None:
        pass

    def wait_stop(self, timeout):
        self.stops += 1
        return Stop("other", thread=1, pc=0x1234)

    def set_breakpoint(self, addr: int) -> None:
        pass

    def read(self, addr: int, n: int) -> bytes:
        return bytes(n)


def test_deadline_ends_a_run_whose_guest_never_stops_stopping() -> None:
    target = _BusyTarget()
    engine = Engine(target, [], GuestLayout(), None, SlotPool(4))
    result = engine.run(deadline=0.0, poll=0.0)
    assert result.reason == "deadline" and target.stops == 1
    assert engine.unexpected_stops == 1        # the stop in hand was handled, not lost


def test_should_stop_is_asked_between_stops_too() -> None:
    target = _BusyTarget()
    asked = []
    engine = Engine(target, [], GuestLayout(), None, SlotPool(4))
    result = engine.run(should_stop=lambda: asked.append(1) or len(asked) >= 3, poll=0.0)
    assert result.reason == "stopped" and target.stops == 3
