"""A Linux guest's seed: `kswgdb run --seed S` (and every campaign run) hands the
reproducer ``$KSWGDB_SEED``, with a guest command after `` -- `` left whole.

The same boot proves that the console is part of the result (issue 11): the
reproducer's second command has a typo, and the shell's error is in the event log and
among the last console lines printed under the run's "0 hit(s)" (the CLI's own path).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kswgdb.commands import run_and_render
from kswgdb.exitcodes import ExitStatus
from kswgdb.image import IMAGES_DIR
from kswgdb.run.options import RunOptions
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program

LINUX_TOML = IMAGES_DIR / "linux.toml"


def test_the_reproducer_reads_its_seed_from_the_environment(tmp_path: Path, capsys) -> None:
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        pytest.fail("the Debian image is not built: run `make image-linux` (make test-linux does)")
    from kswgdb.image import load as load_image

    program = Program.load(load_image(LINUX_TOML).symbols)
    watch = build_listing(program, "do_sys_openat2").suggested_config
    log = tmp_path / "events.jsonl"
    status = run_and_render(RunOptions(
        image=LINUX_TOML, seed=4242, watches=[watch], accel="tcg", backtrace="fp",
        timeout=400, cmdline="-- echo SEEDIS=$KSWGDB_SEED words=$#; "
                             "echo CORRUPT_STAK > /sys/kernel/debug/provoke-crash/DIRECT",
        log_path=log))
    out, err = capsys.readouterr()
    assert status == ExitStatus.OK, err[-2000:]     # the watch was armed, nothing caught
    events = [json.loads(line) for line in log.read_text().splitlines()]
    console = [e["line"] for e in events if e["event"] == "console"]
    assert "SEEDIS=4242 words=0" in console, console[-5:]
    # The typo: LKDTM refuses the name, the shell says so, the reproducer fails, and the
    # user sees it: in the log, and under the "0 hit(s)" among the last console lines.
    assert "KSWGDB-INIT done status=1" in console, console[-5:]
    assert "sh: write error: Invalid argument" in console, console[-5:]
    tail = err.split("the guest's last console lines:")[1].splitlines()
    assert "  | sh: write error: Invalid argument" in tail, err[-2000:]
    assert "0 hit(s)" in out
    end = next(e for e in events if e["event"] == "console-end")
    assert end["lines"] == len(console) > 100 and end["dropped"] == 0
