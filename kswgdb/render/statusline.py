"""The live status line at the bottom of a terminal while a run goes.

One dim line on stderr (``running: calls 1000, armed 998, hits 1, 12s; kaslr slide
+0x18a00000``), redrawn a few times a second from `kswgdb.run.progress`. It is a
transient rich ``Live``: whatever else is printed on the same console goes above
it, and `paused` takes it off the screen while a panel is printed on stdout (another
console on the same terminal), so a hit panel is never drawn through it. It is only
made on a terminal: a pipe gets no status line at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.text import Text

from kswgdb.run.progress import RunProgress

#: What the status line starts with (tests look for it).
PREFIX = "running: "


class StatusLine:
    """``start`` it once the guest runs, ``stop`` it before the summary; thread-safe."""

    def __init__(self, console: Console, read: Callable[[], RunProgress]) -> None:
        self._console = console
        self._read = read
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._wanted = False

    def __rich__(self) -> Text:
        return Text(PREFIX + self._read().line(), style="dim", no_wrap=True,
                    overflow="ellipsis")

    def start(self) -> None:
        with self._lock:
            self._wanted = True
            self._show()

    def stop(self) -> None:
        with self._lock:
            self._wanted = False
            self._hide()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Off the screen while the caller prints elsewhere on the terminal, then back."""
        with self._lock:
            self._hide()
            try:
                yield
            finally:
                if self._wanted:
                    self._show()

    def _show(self) -> None:
        if self._live is None:
            self._live = Live(self, console=self._console, transient=True,
                              refresh_per_second=4, redirect_stdout=False,
                              redirect_stderr=False)
            self._live.start()

    def _hide(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
