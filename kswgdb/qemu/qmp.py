"""A small synchronous QMP client for the machine layer, on top of ``qemu.qmp``.

``qemu.qmp.QMPClient`` is asyncio-only, and its sync shim (``legacy``) runs the
event loop on the *caller's* thread, only while a call is in progress — events
would then be read only when someone happens to call in, and the calling thread
must not already run a loop (the TUI does). So the client lives in a private
event-loop thread, and every public method here is a thread-safe blocking call.

Events: a debugging session can stop the guest thousands of times, and every stop
is a QMP STOP + RESUME pair. The default listener of ``QMPClient`` queues and keeps
*every* event forever, so we attach to it only as an ``event_filter`` that records
the event in a bounded history and counters and then rejects it: nothing is queued
or kept by the library. The filter runs on the reader task in arrival order, so once
the connection has dropped (`wait_disconnected`), every event QEMU sent before
exiting — in particular SHUTDOWN with its reason — has been recorded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient, QMPError
from qemu.qmp.protocol import Runstate

from kswgdb.qemu.errors import MachineError, MachineTimeout

T = TypeVar("T")

# qemu.qmp logs failures it also raises (e.g. "Negotiation failed: EOFError" when
# QEMU dies during launch); we turn those into MachineErrors ourselves. A handler
# here keeps Python's last-resort handler from printing them on stderr while
# still letting them propagate to whatever logging the application configured.
logging.getLogger("qemu.qmp").addHandler(logging.NullHandler())

#: Events of lasting interest; each kept (bounded) in `Qmp.events`.
HISTORY_LEN = 1024
#: How long a command's reply is still awaited once QEMU has sent SHUTDOWN: it may
#: never come (`kswgdb.qemu.exitnudge`); and how often that is looked at meanwhile.
SHUTDOWN_REPLY_GRACE = 1.0
REPLY_SLICE = 0.1


class _ShutdownNoReply(TimeoutError):
    """QEMU sent SHUTDOWN and the reply did not come within `SHUTDOWN_REPLY_GRACE`."""


class QmpCommandError(MachineError):
    """QEMU refused a QMP command or the connection failed; keeps what was sent."""

    def __init__(self, message: str, *, command: str, arguments: dict[str, Any] | None,
                 argv: Sequence[str] = ()) -> None:
        super().__init__(message, argv=argv)
        self.command = command
        self.arguments = arguments


class Qmp:
    """A connected QMP session on an already-connected Unix socket.

    :param sock: the socket QEMU connected to (ownership passes to this object).
    :param timeout: default bound for one command, in seconds.
    :param argv: the QEMU command line, to enrich errors.
    """

    def __init__(self, sock: socket.socket, *, timeout: float = 10.0,
                 argv: Sequence[str] = ()) -> None:
        self.timeout = timeout
        self._argv = list(argv)
        self._cond = threading.Condition()
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_LEN)
        self._counts: collections.Counter[str] = collections.Counter()
        self._seq = 0   # events seen so far, for `wait_event(since=...)`
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kswgdb-qmp",
                                        daemon=True)
        self._thread.start()
        self._client: QMPClient | None = None
        try:
            self._client = self._run(self._connect(sock), timeout)
        except BaseException:
            self._stop_loop()
            raise

    # -- event loop plumbing -----------------------------------------------------

    async def _connect(self, sock: socket.socket) -> QMPClient:
        client = QMPClient("kswgdb")
        client.events.event_filter = self._on_event
        await client.connect(sock)
        return client

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run a coroutine on the private loop and wait for it, bounded."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def _reply(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """`_run` for a command: bounded by ``timeout``, and by `SHUTDOWN_REPLY_GRACE`
        once QEMU has sent SHUTDOWN (it answers nothing after its main loop ended, and
        a command caught in flight by the end waits for ever: `kswgdb.qemu.exitnudge`)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        deadline, cut = time.monotonic() + timeout, False
        while True:
            left = deadline - time.monotonic()
            try:
                return fut.result(max(0.0, min(left, REPLY_SLICE)))
            except TimeoutError:
                if left <= REPLY_SLICE:
                    fut.cancel()
                    raise _ShutdownNoReply() if cut else TimeoutError() from None
            if not cut and self.count("SHUTDOWN"):
                cut = True
                deadline = min(deadline, time.monotonic() + SHUTDOWN_REPLY_GRACE)

    def _stop_loop(self) -> None:
        """Cancel what is left on the loop (e.g. a timed-out connect), then stop it."""
        if self._loop.is_closed():
            return

        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._run(cancel_all(), 2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def _on_event(self, event: Any) -> bool:
        """Record one event (runs on the reader task); always reject it (see module doc)."""
        record = {"event": event["event"], "data": dict(event.get("data", {}) or {}),
                  "timestamp": dict(event.get("timestamp", {}) or {})}
        with self._cond:
            self._seq += 1
            record["seq"] = self._seq
            self._history.append(record)
            self._counts[record["event"]] += 1
            self._cond.notify_all()
        return False

    # -- commands ----------------------------------------------------------------

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                *, timeout: float | None = None) -> Any:
        """Run one QMP command and return its ``return`` value."""
        if self._client is None:
            raise QmpCommandError("QMP not connected", command=command, arguments=arguments,
                                  argv=self._argv)
        try:
            return self._reply(self._client.execute(command, arguments),
                               self.timeout if timeout is None else timeout)
        except _ShutdownNoReply as exc:
            raise QmpCommandError(f"QMP {command}: no reply, QEMU is shutting down",
                                  command=command, arguments=arguments,
                                  argv=self._argv) from exc
        except TimeoutError as exc:
            raise QmpCommandError(f"QMP {command}: no reply within {timeout or self.timeout:g}s",
                                  command=command, arguments=arguments,
                                  argv=self._argv) from exc
        except (QMPError, OSError, EOFError) as exc:
            raise QmpCommandError(f"QMP {command}: {exc or type(exc).__name__}",
                                  command=command, arguments=arguments,
                                  argv=self._argv) from exc

    def status(self) -> str:
        """QEMU's run state: "prelaunch", "running", "paused", "debug", "internal-error"..."""
        return str(self.execute("query-status")["status"])

    def stop(self) -> None:
        """Pause all vCPUs (a STOP event follows)."""
        self.execute("stop")

    def cont(self) -> None:
        """Resume all vCPUs (also how a machine started with ``-S`` begins)."""
        self.execute("cont")

    def system_reset(self) -> None:
        """Reset the machine. Under ``-no-reboot`` (always, here) QEMU then *exits*."""
        self.execute("system_reset")

    def quit(self, timeout: float | None = None) -> None:
        """Ask QEMU to exit; the connection dropping instead of a reply is success too.

        Never raises: a QEMU that does not answer is the caller's to kill.
        """
        with contextlib.suppress(QmpCommandError):
            self.execute("quit", timeout=min(self.timeout, 5.0) if timeout is None else timeout)

    def dump_guest_memory(self, path: str | Path, *, paging: bool = False,
                          timeout: float = 120.0) -> Path:
        """Write guest memory as an ELF core to ``path``, created with mode 0600.

        We create the file and pass its descriptor to QEMU (``getfd`` + ``fd:``)
        instead of naming the path, so a guest memory image is never world-readable,
        not even for a moment (QEMU itself would create it 0400 under its umask).
        """
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            name = f"kswgdb-dump-{os.getpid()}-{time.monotonic_ns()}"
            self._send_fd(fd)
            self.execute("getfd", {"fdname": name})
            self.execute("dump-guest-memory", {"paging": paging, "protocol": f"fd:{name}"},
                         timeout=timeout)
        finally:
            os.close(fd)
        return path

    def _send_fd(self, fd: int) -> None:
        assert self._client is not None
        client = self._client

        async def send() -> None:
            client.send_fd_scm(fd)

        self._run(send(), self.timeout)

    # -- events ------------------------------------------------------------------

    def events(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Events recorded so far (the last HISTORY_LEN), optionally only some names.

        Each is a dict with ``event``, ``data``, ``timestamp`` and our ``seq`` number.
        """
        wanted = set(names) if names is not None else None
        with self._cond:
            return [e for e in self._history if wanted is None or e["event"] in wanted]

    def count(self, name: str) -> int:
        """How many events of this name arrived in total (not bounded like the history)."""
        with self._cond:
            return self._counts[name]

    def mark(self) -> int:
        """Sequence number of the latest event; pass as ``since`` to wait for newer ones."""
        with self._cond:
            return self._seq

    def wait_event(self, names: str | Iterable[str], timeout: float, *,
                   since: int = 0) -> dict[str, Any]:
        """Wait for an event of one of ``names`` with ``seq > since``.

        :raise MachineTimeout: none arrived within ``timeout`` seconds.
        """
        wanted = {names} if isinstance(names, str) else set(names)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._history:
                    if e["seq"] > since and e["event"] in wanted:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MachineTimeout(f"no QMP event {sorted(wanted)} within {timeout:g}s",
                                         argv=self._argv)
                self._cond.wait(left)

    def shutdown_event(self) -> dict[str, Any] | None:
        """The last SHUTDOWN event (``data.reason`` says why), if QEMU sent one."""
        found = self.events(["SHUTDOWN"])
        return found[-1] if found else None

    # -- connection --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the session is up (False once QEMU closed it or we did)."""
        return self._client is not None and self._client.runstate == Runstate.RUNNING

    def wait_disconnected(self, timeout: float) -> bool:
        """Wait until the reader saw the connection drop; then all events are recorded."""
        client = self._client
        if client is None:
            return True

        async def wait() -> None:
            while client.runstate == Runstate.RUNNING:
                await client.runstate_changed()

        try:
            self._run(wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Disconnect and stop the private loop; idempotent, never raises."""
        client, self._client = self._client, None
        if client is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._run(client.disconnect(), 5.0)
        self._stop_loop()
