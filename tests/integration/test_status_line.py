"""On a terminal: the live status line while the guest runs, panels whole, the console live.

Issue 12: the spinner stayed up for the whole run and collided with the first hit
panel. Now a status line (`kswgdb.render.statusline`) says how far the run got and
steps aside for each panel; ``--console`` streams the guest's console above it. One
boot of scenario 3 in a 100-column pseudo-terminal checks all of it (a pipe gets no
status line: tests/integration/test_readme_commands.py runs piped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kswgdb.render.statusline import PREFIX
from tests.output_capture import in_terminal, strip_ansi


def test_status_line_panels_and_console_on_a_terminal(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    status, raw = in_terminal(
        ["run", "--scenario", "3", "--watch", "fn=s3_victim fo=0x23", "--accel", "tcg",
         "--backtrace", "fp", "--console", "--log", str(log)], 100, timeout=300)
    text = strip_ansi(raw)
    assert status == 1, text[-3000:]
    # The status line was drawn, with the run's own numbers, and is gone at the end.
    drawn = re.findall(re.escape(PREFIX) + r"calls (\d+), armed (\d+), hits (\d+), \d+s", text)
    assert drawn, text[-3000:]
    assert max(int(hits) for _, _, hits in drawn) >= 1
    assert PREFIX not in raw[raw.index("watch summary"):]
    # Each panel is whole: every row between its corners is one bordered line, and the
    # status line is never drawn inside it.
    lines = text.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.startswith("╭─ Caught stack corruption"))
    bottom = next(i for i in range(top, len(lines)) if lines[i].startswith("╰"))
    body = lines[top + 1:bottom]
    assert len(body) > 10
    assert all(ln.startswith("│") and ln.rstrip().endswith("│") for ln in body), body
    assert not any(PREFIX in ln for ln in body)
    # --console: the guest's lines, live and whole, the same as the log's console events.
    events = [json.loads(line) for line in log.read_text().splitlines()]
    console = [e["line"] for e in events if e["event"] == "console"]
    verdict = next(ln for ln in console if ln.startswith("KSWTEST verdict scenario=3"))
    assert f"  | {verdict}" in lines
    assert "the guest's last console lines" not in text     # shown live instead
