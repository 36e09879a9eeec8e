"""The live status line: what it says, that a panel is never drawn through it, none in a pipe."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from rich.console import Console

from kswgdb.commands import TerminalSink
from kswgdb.render.statusline import PREFIX, StatusLine
from kswgdb.run.progress import RunProgress, progress_reader
from kswgdb.watch.engine import WatchStats
from tests.output_capture import strip_ansi


def _terminal(buf: io.StringIO) -> Console:
    return Console(file=buf, force_terminal=True, width=100, color_system=None)


def test_the_line_says_calls_armed_hits_time_and_the_slide() -> None:
    assert RunProgress(1000, 998, 1, 12.4).line() == "calls 1000, armed 998, hits 1, 12s"
    assert RunProgress(5, 5, 0, 1.0, slide=0x18a00000).line() == \
        "calls 5, armed 5, hits 0, 1s; kaslr slide +0x18a00000"


def test_progress_is_read_from_a_rig_and_survives_a_broken_one() -> None:
    a, b = WatchStats(), WatchStats()
    a.calls, a.armed, b.calls, b.armed = 10, 9, 3, 3
    engine = SimpleNamespace(stats=[a, b], hit_count=2)
    rig = SimpleNamespace(engine=engine, phys=SimpleNamespace(poller=SimpleNamespace(hits=[1])),
                          placement=SimpleNamespace(slide=SimpleNamespace(virtual=0x200000)),
                          started=time.monotonic() - 3)
    read = progress_reader(rig)
    got = read()
    assert (got.calls, got.armed, got.hits, got.slide) == (13, 12, 3, 0x200000)
    assert 2.5 < got.elapsed < 10
    rig.engine = SimpleNamespace()          # mid-change: the last numbers stay
    assert read() == got


def test_a_panel_pauses_the_line_and_it_comes_back() -> None:
    buf = io.StringIO()
    err = _terminal(buf)
    line = StatusLine(err, lambda: RunProgress(4, 4, 1, 2.0))
    line.start()
    time.sleep(0.4)                         # a refresh or two
    with line.paused():
        assert line._live is None           # off the screen while the panel prints
        err.print("PANEL")
    assert line._live is not None
    line.stop()
    line.stop()                             # idempotent
    text = strip_ansi(buf.getvalue())
    assert f"{PREFIX}calls 4, armed 4, hits 1, 2s" in text
    assert "PANEL" in text.splitlines()     # a whole line, not drawn into the status


def test_terminal_sink_status_line_only_on_a_terminal() -> None:
    progress = lambda: RunProgress(1, 1, 0, 0.0)  # noqa: E731
    piped = Console(file=io.StringIO(), width=100)
    sink = TerminalSink(piped, piped, json_out=False)
    with sink:
        sink.running(progress)
        sink.status("guest running, watches installed")
        assert sink.status_line is None and sink.spinner is None

    buf = io.StringIO()
    tty = _terminal(buf)
    sink = TerminalSink(tty, tty, json_out=False)
    with sink:
        sink.running(progress)
        sink.status("guest running, watches installed")
        assert sink.status_line is not None and sink.status_line._live is not None
    assert sink.status_line._live is None   # gone before the summary
    assert f"{PREFIX}calls 1" in strip_ansi(buf.getvalue())
