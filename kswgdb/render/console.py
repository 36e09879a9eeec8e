"""The consoles the command line prints to: a terminal's width, or whole lines in a pipe.

rich lays everything out for 80 columns when the output is not a terminal, so a
piped ``kswgdb disasm`` lost its offset and note columns (``+0…``) and long lines
were wrapped mid-path. Nothing kswgdb prints may be cut: in a pipe or a file the
width is `PIPE_WIDTH` (tables and panels are as wide as their content, never
stretched to it), and on a terminal the tables let rows grow instead of
ellipsizing (`kswgdb.render.disasm`). ``NO_COLOR`` and a pipe both mean plain text
(rich's own rules).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

#: Width used when the output is not a terminal: wider than any line kswgdb prints.
PIPE_WIDTH = 1000


class WholeLineConsole(Console):
    """A Console whose plain-text lines are never wrapped by rich (``soft_wrap``).

    A status line, a console line of the guest, a ``symbols`` row or the ``inspect:``
    command is written whole and left to the terminal to wrap, so it can be copied
    and grepped; tables and panels (renderables) keep rich's layout.
    """

    def print(self, *objects: Any, **kw: Any) -> None:  # type: ignore[override]
        if "soft_wrap" not in kw and objects and all(isinstance(o, str) for o in objects):
            kw["soft_wrap"] = True
        super().print(*objects, **kw)


def output_console(stderr: bool = False) -> Console:
    """A Console for stdout (or stderr) that never truncates or wraps a line in a pipe."""
    console = WholeLineConsole(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = WholeLineConsole(stderr=stderr, highlight=False, width=PIPE_WIDTH)
    return console
