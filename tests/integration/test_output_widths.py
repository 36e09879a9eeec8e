"""``run`` and ``boot`` at 80 columns and piped: offsets, notes and commands whole.

Issue 12: piped or in an 80-column terminal, ``boot`` wrapped console lines, the
vmcore "inspect" command was split over lines, and the spinner stayed up over the
first hit panel. The real command runs in a pseudo-terminal of 80 columns and in a
pipe; what it must show whole comes from the event log and the guest's console.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kswgdb.image import IMAGES_DIR
from tests.output_capture import assert_whole, in_terminal, piped, strip_ansi

SPINNER = "booting the guest and arming watches"


def _run_argv(log: Path, *extra: str) -> list[str]:
    return ["run", "--scenario", "3", "--watch", "fn=s3_victim fo=0x23", "--accel", "tcg",
            "--log", str(log), "--timeout", "240", *extra]


def _hits(log: Path) -> list[dict]:
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in events if e.get("event") == "hit"]


def _check_run_output(text: str, log: Path, ending: str) -> None:
    hits = _hits(log)
    assert hits, "scenario 3 must be caught"
    hit = hits[0]
    assert_whole(text, [
        hit["writer"]["symbol"], "config fn=s3_victim fo=0x23", f"event log: {log}",
        ending, "s3_victim+0x23: canary",
    ])
    lines = [line.strip() for line in text.splitlines()]
    assert f"event log: {log}" in lines
    assert any(line.startswith(ending) and "backtraces" in line
               for line in lines), "the ending line was wrapped"
    if ending.startswith("guest ended"):
        assert any(line.startswith("guest: KSWTEST verdict scenario=3") and "migrations=" in line
                   for line in lines), "the verdict line was wrapped"


def test_run_at_80_columns_with_a_vmcore(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    status, raw = in_terminal(_run_argv(log, "--on-hit", "freeze"), 80, timeout=300)
    text = strip_ansi(raw)
    assert status == 1, text[-2000:]
    _check_run_output(text, log, "freeze;")
    vmcores = sorted(tmp_path.glob("*vmcore*"))
    assert vmcores, text[-2000:]
    symbols = IMAGES_DIR / "kswtest.elf"
    inspect = f"inspect: gdb {symbols} {vmcores[0]}"
    assert any(line.strip().startswith(inspect) for line in text.splitlines()), \
        "the inspect command is not on one line"
    # The spinner ended when the guest ran: it is never drawn after the first hit panel.
    first_panel = raw.index("Caught stack corruption")
    assert SPINNER in raw[:first_panel]
    assert SPINNER not in raw[first_panel:]


def test_run_piped_and_no_color(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    proc = piped(_run_argv(log), timeout=300, env={"NO_COLOR": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    _check_run_output(proc.stdout + proc.stderr, log, "guest ended: debug-exit")
    assert "\x1b[" not in proc.stdout + proc.stderr
    assert SPINNER not in proc.stderr                  # no spinner in a pipe
    status = [line for line in proc.stderr.splitlines() if line.startswith("accelerator:")]
    assert status == ["accelerator: tcg (requested)"]


@pytest.mark.parametrize("mode", ["terminal", "pipe"])
def test_boot_console_lines_are_never_wrapped(mode: str) -> None:
    argv = ["boot", "--scenario", "3", "--accel", "tcg", "--timeout", "240"]
    if mode == "terminal":
        status, raw = in_terminal(argv, 80, timeout=300)
        out = strip_ansi(raw)
    else:
        proc = piped(argv, timeout=300)
        status, out = proc.returncode, proc.stdout
    assert status == 0, out[-2000:]
    lines = [line.rstrip() for line in out.splitlines()]
    console = [line for line in lines if line.startswith("KSWTEST")]
    verdict = [line for line in console if line.startswith("KSWTEST verdict scenario=3")]
    assert len(verdict) == 1 and len(verdict[0]) > 80, "the check needs a line over 80 columns"
    assert verdict[0].split()[-1].startswith("migrations="), verdict[0]
    # every console line starts with KSWTEST: a wrapped one would leave a stray fragment
    stray = [line for line in lines if line and not line.startswith(("KSWTEST", "guest ended",
                                                                       "accelerator"))]
    assert stray == [], stray
