"""The guest's serial console, drained continuously into a log and a line list.

QEMU writes COM1 to a Unix socket. If nobody reads it, the socket buffer fills and
QEMU stalls the guest's serial writes — so a background thread reads it all the
time, whether or not anyone is waiting for a line. Every byte goes to the console
log file in the run directory (the record a user reads after a failure); complete
lines are also kept in memory for `wait_for`, `lines` and `tail`.

Reading uses pexpect's ``fdspawn`` for what it is good at on a socket fd: a
blocking ``read_nonblocking`` with select, EOF detection, and ``logfile_read``
copying every byte to the log. Matching is *not* done with pexpect's ``expect``: it
is a pull API for one consumer that discards the text it has matched, while here
several threads may wait for different lines, a line printed before anyone waited
must still be found, and the full history must stay available for error messages.
So matching runs over our own line list under a condition variable.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import pexpect
import pexpect.fdpexpect

from kswgdb.qemu.errors import MachineError, MachineTimeout

#: Lines kept in memory; a Linux guest with debug output can print a lot.
MAX_LINES = 200_000
_READ_SIZE = 65536


class Console:
    """Reader of one serial socket. Starts draining at construction; `close` stops it.

    :param sock: the connected serial socket (ownership passes to the Console).
    :param log_path: file that receives every byte, in order.
    :param on_line: optional callback, called on the reader thread for each line.
    :param argv: the QEMU command line, only to enrich error messages.
    """

    def __init__(
        self,
        sock: socket.socket,
        log_path: Path,
        *,
        on_line: Callable[[str], None] | None = None,
        argv: Sequence[str] = (),
    ) -> None:
        self._sock = sock
        self.log_path = log_path
        self._argv = list(argv)
        self._on_line = on_line
        self._followers: list[Callable[[str], None]] = []
        self._log: BinaryIO = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._spawn = pexpect.fdpexpect.fdspawn(sock.fileno(), timeout=None, logfile=None)
        self._spawn.logfile_read = self._log
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._dropped = 0          # lines dropped from the front beyond MAX_LINES
        self._partial = b""
        self._eof = False
        self._thread = threading.Thread(target=self._drain, name="kswgdb-console", daemon=True)
        self._thread.start()

    # -- reader thread -----------------------------------------------------------

    def _drain(self) -> None:
        """Read until EOF (QEMU closed the socket, or `close` shut it down)."""
        try:
            while True:
                try:
                    data = self._spawn.read_nonblocking(_READ_SIZE, timeout=None)
                except pexpect.EOF:
                    break
                except (OSError, ValueError):  # fd closed under us during close()
                    break
                self._feed(data)
        finally:
            with self._cond:
                if self._partial:
                    self._append([self._partial])
                    self._partial = b""
                self._eof = True
                self._cond.notify_all()

    def _feed(self, data: bytes) -> None:
        """Split new bytes into lines; the last, unterminated piece waits for more."""
        pieces = (self._partial + data).split(b"\n")
        self._partial = pieces.pop()
        if pieces:
            with self._cond:
                self._append(pieces)
                self._cond.notify_all()

    def _append(self, raw_lines: list[bytes]) -> None:
        """Decode and store lines (caller holds the condition)."""
        new = [r.rstrip(b"\r").decode("utf-8", "replace") for r in raw_lines]
        self._lines.extend(new)
        if len(self._lines) > MAX_LINES:
            excess = len(self._lines) - MAX_LINES
            del self._lines[:excess]
            self._dropped += excess
        for listener in ([self._on_line] if self._on_line else []) + self._followers:
            for line in new:
                with contextlib.suppress(Exception):
                    listener(line)

    # -- public API --------------------------------------------------------------

    @property
    def eof(self) -> bool:
        """True once the socket closed (QEMU exited or `close` was called)."""
        return self._eof

    def mark(self) -> int:
        """The current line count; pass it as ``since`` to wait only for later lines."""
        with self._cond:
            return self._dropped + len(self._lines)

    def lines(self) -> list[str]:
        """All complete lines so far (the oldest may be dropped beyond MAX_LINES)."""
        with self._cond:
            return list(self._lines)

    def follow(self, listener: Callable[[str], None]) -> None:
        """Call ``listener`` with every line: those kept so far at once, then each new one.

        Under the same lock as the reader, so no line is missed or given twice; the
        listener runs on the reader thread and must be quick.
        """
        with self._cond:
            for line in self._lines:
                with contextlib.suppress(Exception):
                    listener(line)
            self._followers.append(listener)

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` lines, including an unterminated last line if any."""
        with self._cond:
            out = self._lines[-n:] if n > 0 else []
            if self._partial and n > 0:
                out = (out + [self._partial.decode("utf-8", "replace")])[-n:]
            return list(out)

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0
    ) -> re.Match[str]:
        """Wait for a line (index >= ``since``) that ``pattern`` matches (``re.search``).

        Lines printed before the call count, so there is no race with a fast guest.
        :raise MachineTimeout: no such line within ``timeout`` seconds.
        :raise MachineError: the console closed (QEMU exited) first.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            index = since
            while True:
                start = max(index - self._dropped, 0)
                for i in range(start, len(self._lines)):
                    m = regex.search(self._lines[i])
                    if m:
                        return m
                index = self._dropped + len(self._lines)
                if self._eof:
                    raise MachineError(
                        f"console closed before a line matched {regex.pattern!r}",
                        argv=self._argv, console_tail=self._lines[-20:],
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MachineTimeout(
                        f"no console line matched {regex.pattern!r} within {timeout:g}s",
                        argv=self._argv, console_tail=self._lines[-20:],
                    )
                self._cond.wait(left)

    def wait_closed(self, timeout: float) -> bool:
        """Wait until the reader saw EOF; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Stop the reader (after draining what QEMU already sent) and close the log."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5.0)
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self._log.close()
