"""A QEMU that announced SHUTDOWN but does not exit: its main loop is woken, once.

QEMU ends its monitors in ``qemu_cleanup()`` -> ``monitor_cleanup()``
(monitor/monitor.c, QEMU 10.0.2), which waits for the QMP dispatcher coroutine
to finish with ``AIO_WAIT_WHILE_UNLOCKED(NULL, (aio_poll(iohandler_ctx, false),
qmp_dispatcher_co))``: one non-blocking poll of the iohandler context, then a
blocking ``aio_poll`` of the *main* context, holding the BQL. An in-band command
(kswgdb's hang watchdog reads the guest clock with ``human-monitor-command xp``)
runs as a bottom half in the iohandler context (qapi/qmp-dispatch.c,
``do_qmp_dispatch_bh``), which wakes the dispatcher with ``aio_co_wake``; from
the main thread that schedules the coroutine into the iohandler context again
(util/async.c ``aio_co_enter``: its context is not the main thread's). If the
guest's power-off or isa-debug-exit ends the main loop while such a bottom half
is pending, the one poll runs it, the coroutine is rescheduled where nobody
polls any more, and QEMU sleeps in ``ppoll`` for ever: the vCPU thread and the
RCU thread wait for the BQL, the process never exits, and the run would end as
"the guest hung" after its verdict. Measured on QEMU 10.0.2 alone (no plugin,
no gdbstub; the test kernel's scenario 6 while a thread sends ``xp`` back to
back): 6 exits of 20 stuck there, every one in ``monitor_cleanup``.

SIGTERM wakes it without changing the outcome: QEMU's handler
(``qemu_system_killed``, system/runstate.c) only records the signal and calls
``qemu_notify_event()``, which schedules a bottom half in the main context; the
wait re-evaluates its condition, the coroutine finishes, and ``main`` exits
with the status its main loop had already chosen (``qemu_default_main`` in
system/main.c: the guest's debug-exit code, or 0 for a power-off): all 6 stuck
exits above ended so, status 45 (scenario 6's ``KSWTEST`` exit). The SHUTDOWN
event is sent from ``main_loop_should_exit`` as the main loop ends (QEMU runs
with shutdown action ``poweroff``, kswgdb refuses ``-no-shutdown``), so after it
a signal can no longer be taken for a new request. `Machine.wait_exit` calls
`ExitNudge.check` while it waits; `kswgdb.qemu.qmp` meanwhile stops waiting for
replies that will never come.

A QEMU that is still talking to kswgdb is not stuck: the plugin engine's plugin
sends its last lines from QEMU's exit (an atexit callback, after the monitor
cleanup), and a run that caught a storm of hits may still be reading the lines
before them when SHUTDOWN comes, so QEMU's exit waits on *us*. The engine says
when it last heard from QEMU (`ExitNudge.heard_from`), and the grace runs from
the later of SHUTDOWN and that: a QEMU stuck in ``monitor_cleanup`` sends
nothing (its atexit callbacks have not run yet). Measured before this rule: the
hit storm (scenario 14, 1000 hits) on the plugin engine was woken while its
lines were still being read, and QEMU ended killed by the signal.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable

#: How long QEMU may take to exit after its SHUTDOWN event before it is woken.
#: A QEMU that is merely slow (flushing, on a loaded host) takes no harm from it.
SHUTDOWN_EXIT_GRACE = 1.0
#: The status line of a run whose QEMU had to be woken.
NUDGED = ("QEMU did not exit after the guest ended (its monitor cleanup waited on a QMP "
          "command in flight): woken with SIGTERM, exit status kept")


class ExitNudge:
    """One machine's watch over its exit: SIGTERM once, ``grace`` s after SHUTDOWN."""

    def __init__(self, grace: float = SHUTDOWN_EXIT_GRACE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._seen_at: float | None = None
        self.nudged = False         # kswgdb had to wake QEMU's exit
        #: When kswgdb last heard from QEMU other than by QMP (set by an engine).
        self.heard_from: Callable[[], float | None] = lambda: None

    def check(self, proc: subprocess.Popen[bytes], shutdown_seen: bool) -> None:
        """Called while waiting for ``proc`` to exit; ``shutdown_seen``: QEMU sent SHUTDOWN."""
        if self.nudged or not shutdown_seen or proc.poll() is not None:
            return
        now = self._clock()
        if self._seen_at is None:
            self._seen_at = now
        heard = self.heard_from()
        since = self._seen_at if heard is None else max(self._seen_at, heard)
        if now - since >= self.grace:
            self.nudged = True
            with contextlib.suppress(OSError):
                proc.terminate()
