"""A Linux guest's seed: `kswgdb run --seed S` (and every campaign run) hands the
reproducer ``$KSWGDB_SEED``, with a guest command after `` -- `` left whole."""

from __future__ import annotations

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
        timeout=400, cmdline="-- echo SEEDIS=$KSWGDB_SEED words=$#",
        log_path=tmp_path / "events.jsonl")).run()
    assert report.fault is None, report.fault
    assert "SEEDIS=4242 words=0" in report.console_log, report.console_log[-5:]
    assert "KSWGDB-INIT done status=0" in report.console_log
