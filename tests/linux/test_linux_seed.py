"""A Linux guest's seed: `kswgdb run --seed S` (and every campaign run) hands the
reproducer ``$KSWGDB_SEED``, with a guest command after `` -- `` left whole.

The same boot proves that the console is part of the result (issue 11): the
reproducer's second command has a typo, and the shell's error is in the event log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kswgdb.image import IMAGES_DIR
from kswgdb.run.oneshot import WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program

LINUX_TOML = IMAGES_DIR / "linux.toml"


def test_the_reproducer_reads_its_seed_from_the_environment(tmp_path: Path) -> None:
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        pytest.fail("the Debian image is not built: run `make image-linux` (make test-linux does)")
    from kswgdb.image import load as load_image

    program = Program.load(load_image(LINUX_TOML).symbols)
    watch = build_listing(program, "do_sys_openat2").suggested_config
    report = WatchSession(RunOptions(
        image=LINUX_TOML, seed=4242, watches=[watch], accel="tcg", backtrace="fp",
        timeout=400, cmdline="-- echo SEEDIS=$KSWGDB_SEED words=$#; "
                             "echo CORRUPT_STAK > /sys/kernel/debug/provoke-crash/DIRECT",
        log_path=tmp_path / "events.jsonl")).run()
    assert report.fault is None, report.fault
    assert "SEEDIS=4242 words=0" in report.console_log, report.console_log[-5:]
    # The typo: LKDTM refuses the name, the shell says so, the reproducer fails.
    assert "KSWGDB-INIT done status=1" in report.console_log, report.console_log[-5:]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    logged = [e["line"] for e in events if e["event"] == "console"]
    assert "sh: write error: Invalid argument" in logged, logged[-5:]
    assert logged == report.console_log     # every line, in order (a Linux boot: ~340)
    end = next(e for e in events if e["event"] == "console-end")
    assert end["lines"] == len(logged) and end["dropped"] == 0
