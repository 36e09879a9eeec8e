"""A watch that is never armed is said, per watch, with exit status 4 (the test kernel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kswgdb.image import IMAGES_DIR
from kswgdb.image import load as load_image
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program


def test_never_called_function_is_a_warning_and_exit_status_4(tmp_path: Path) -> None:
    """Scenario 6 (clean) never calls scenario 5's victim: its watch watched nothing."""
    program = Program.load(load_image(IMAGES_DIR / "kswtest.toml").symbols)
    never = build_listing(program, "s5_victim").suggested_config
    called = "fn=s3_victim fo=0x23"
    log = tmp_path / "ev.jsonl"
    argv = [sys.executable, "-m", "kswgdb", "run", "--scenario", "6", "--accel", "tcg",
            "--cmdline", "iters=200",       # 200 calls of s3_victim are enough to arm it
            "--watch", called, "--watch", never, "--log", str(log)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 4, proc.stderr[-1000:]
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("kswgdb: warning:")]
    assert warnings == [f"kswgdb: warning: watch {never!r} was never armed: "
                        "s5_victim was never called"], proc.stderr[-1000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events][-4:] == ["console-end", "unarmed", "summary", "end"]
    # Nothing caught: the guest's last console lines are on stderr, all of them in the log.
    console = [e["line"] for e in events if e["event"] == "console"]
    verdict = next(line for line in console if line.startswith("KSWTEST verdict scenario=6"))
    tail = proc.stderr.split("the guest's last console lines:")[1]
    assert f"  | {verdict}" in tail.splitlines()
    assert events[-4]["lines"] == len(console) and events[-4]["dropped"] == 0
    rows = {r["config"]: r for r in events[-2]["watches"]}
    assert rows[called]["armed"] > 0 and rows[never]["calls"] == 0
    # Asked for: the same run is no failure.
    allowed = subprocess.run([*argv, "--allow-unarmed"], capture_output=True, text=True,
                             timeout=180)
    assert allowed.returncode == 0, allowed.stderr[-1000:]
    assert "was never armed: s5_victim was never called" in allowed.stderr
