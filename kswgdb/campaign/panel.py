"""A hit's panel (what `kswgdb run` prints) as plain text, to keep in a summary."""

from __future__ import annotations

import io

from rich.console import Console

from kswgdb.poll.poller import PollHit
from kswgdb.render.hit import render_hit
from kswgdb.render.pollhit import render_poll_hit
from kswgdb.watch.hits import Hit

PANEL_WIDTH = 120


def panel_text(hit: Hit | PollHit) -> str:
    out = io.StringIO()
    console = Console(width=PANEL_WIDTH, file=out, color_system=None, highlight=False)
    console.print(render_hit(hit) if isinstance(hit, Hit) else render_poll_hit(hit))
    return out.getvalue()
