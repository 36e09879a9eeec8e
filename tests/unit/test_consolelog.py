"""The guest's console in the event log: every line while few, head and tail when many."""

from __future__ import annotations

import json
from pathlib import Path

from kswgdb.run.consolelog import MAX_LINE_CHARS, ConsoleRecorder
from kswgdb.watch.hits import EventLog


def _events(path: Path) -> list[dict]:
    """The log's events without the fields every event has (`time`, `run_id`)."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in ("time", "run_id")} for e in events]


def test_every_line_is_logged_and_shown_while_within_the_head(tmp_path: Path) -> None:
    log, shown = EventLog(tmp_path / "e.jsonl"), []
    rec = ConsoleRecorder(log, shown.append)
    for line in ("KSWTEST boot", "sh: can't create /sys/kernel/debug/x: nonexistent directory"):
        rec.line(line)
    rec.finish()
    rec.line("after the end")           # ignored: the log has its console-end already
    log.close()
    events = _events(tmp_path / "e.jsonl")
    assert events == [
        {"event": "console", "n": 1, "line": "KSWTEST boot"},
        {"event": "console", "n": 2,
         "line": "sh: can't create /sys/kernel/debug/x: nonexistent directory"},
        {"event": "console-end", "lines": 2, "logged": 2, "dropped": 0},
    ]
    assert shown == ["KSWTEST boot",
                     "sh: can't create /sys/kernel/debug/x: nonexistent directory"]


def test_a_chatty_guest_keeps_the_head_and_the_tail_and_counts_the_rest(tmp_path: Path) -> None:
    log, shown = EventLog(tmp_path / "e.jsonl"), []
    rec = ConsoleRecorder(log, shown.append, head=3, tail=2)
    for i in range(1, 11):
        rec.line(f"line {i}")
    assert [e["n"] for e in _events(tmp_path / "e.jsonl")] == [1, 2, 3]   # head: as it came
    rec.finish()
    rec.finish()                        # once only
    log.close()
    events = _events(tmp_path / "e.jsonl")
    assert [(e["event"], e.get("n")) for e in events] == [
        ("console", 1), ("console", 2), ("console", 3), ("console", 9), ("console", 10),
        ("console-end", None)]
    assert events[-1] == {"event": "console-end", "lines": 10, "logged": 5, "dropped": 5}
    assert len(shown) == 10             # --console shows every line, bounded or not


def test_a_huge_line_is_cut_and_marked(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl")
    rec = ConsoleRecorder(log)
    rec.line("x" * (MAX_LINE_CHARS + 50))
    rec.finish()
    log.close()
    first = _events(tmp_path / "e.jsonl")[0]
    assert first["cut"] is True and len(first["line"]) == MAX_LINE_CHARS
