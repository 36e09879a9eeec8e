"""The hang watchdog's inputs: the guest clock's address, and kernel stall reports."""

from __future__ import annotations

from kswgdb.watch.faults import Watchdog
from kswgdb.watch.hang import KERNEL_MAP, StallReporter, tick_physical_address
from kswgdb.watch.session import RunOptions


def test_the_clock_address_is_physical():
    assert tick_physical_address(0x107000, "kswtest") == 0x107000
    assert tick_physical_address(KERNEL_MAP + 0x2a05000, "linux") == 0x2a05000
    assert tick_physical_address(None, "linux") is None


def test_the_watchdog_is_on_by_default_and_a_ticking_clock_keeps_it_quiet():
    assert RunOptions().hang_timeout > 0
    now, ticks = [0.0], [0]
    dog = Watchdog(activity=lambda: ticks[0], qmp_lost=lambda: False, hang_timeout=10,
                   clock=lambda: now[0])
    for _ in range(5):          # console and stops silent, but the guest's clock ticks
        now[0] += 8
        ticks[0] += 1
        assert not dog.should_stop()
    now[0] += 10                # now nothing moves
    assert dog.should_stop() and dog.reason.startswith("the guest hung")


def test_stall_lines_are_reported_once_as_they_come():
    lines: list[str] = ["Linux version 6.1", "booting"]
    seen: list[str] = []
    rep = StallReporter(lambda: list(lines), lambda: len(lines), seen.append)
    lines += ["[   42.1] rcu: INFO: rcu_sched self-detected stall on CPU",
              "[   42.2] rcu: \t1-....: (5250 ticks this GP)",
              "[   50.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [sh:77]"]
    rep.check()
    rep.check()
    assert seen == [lines[2], lines[4]]
    lines.append("[   60.0] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:")
    rep.check()
    assert seen[-1] == lines[-1] and len(seen) == 3
