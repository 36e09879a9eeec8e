"""The guest's console in the event log: ``console`` events, bounded, and what was left out.

A reproducer's own error ("sh: can't create /sys/...: No such file") is part of a
run's result: without it a run that never reproduced anything reads as a clean one.
So every console line goes to the event log as a ``console`` event, written as it
arrives (a JSONL follower sees it live; a run that dies keeps what was said), and to
the sink (``--console`` streams it on stderr).

The log stays bounded whatever the guest prints: the first `HEAD_LINES` lines go in
as they come; beyond that only the last `TAIL_LINES` are kept in memory and written
when the run ends, the end of a console being where a panic or an error is. One
``console-end`` event then says how many lines there were and how many were left
out. Lines longer than `MAX_LINE_CHARS` are cut, and marked so.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

#: Console lines logged as they arrive, then the last ones kept for the end.
HEAD_LINES = 2000
TAIL_LINES = 500
#: A console line longer than this is logged cut (``"cut": true``).
MAX_LINE_CHARS = 2000


class _Log(Protocol):
    def write(self, event: str, sync: bool = False, **data: object) -> None: ...


class ConsoleRecorder:
    """Feed it every console line (`line`, on the console's reader thread); `finish` once.

    :param log: the run's event log.
    :param show: called with every line too (the sink: ``--console``), bounded or not.
    """

    def __init__(self, log: _Log, show: Callable[[str], None] | None = None, *,
                 head: int = HEAD_LINES, tail: int = TAIL_LINES) -> None:
        self._log = log
        self._show = show
        self._head = head
        self._tail: deque[tuple[int, str]] = deque(maxlen=tail)
        self._lock = threading.Lock()
        self.lines = 0          # lines the guest printed
        self.logged = 0         # lines written as console events
        self.finished = False

    def line(self, text: str) -> None:
        """One console line: logged now if within the head, else kept for the tail."""
        with self._lock:
            if self.finished:
                return
            self.lines += 1
            if self.lines <= self._head:
                self._write(self.lines, text)
            else:
                self._tail.append((self.lines, text))
        if self._show is not None:
            self._show(text)

    def finish(self) -> None:
        """Write the kept tail and the ``console-end`` event (once; later lines are ignored)."""
        with self._lock:
            if self.finished:
                return
            self.finished = True
            for number, text in self._tail:
                self._write(number, text)
            self._log.write("console-end", lines=self.lines, logged=self.logged,
                            dropped=self.lines - self.logged)

    def _write(self, number: int, text: str) -> None:
        cut = len(text) > MAX_LINE_CHARS
        self._log.write("console", n=number, line=text[:MAX_LINE_CHARS],
                        **({"cut": True} if cut else {}))
        self.logged += 1
