"""``kswgdb demo`` (what ``make demo`` runs): 0 when it catches the corruption, 4 when not.

Both run the real command in a subprocess from an empty directory. The miss is
real too: the same demo on the test kernel's clean scenario (6: the same victim
called 1000 times, nothing corrupts it) runs to its end with nothing caught.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kswgdb.commands import EXIT_DEMO_MISSED

pytestmark = pytest.mark.integration

DEMO_ON_CLEAN_SCENARIO = (
    "import sys\n"
    "from kswgdb import cli, commands\n"
    "commands.DEMO_SCENARIO = 6\n"
    "sys.exit(cli.main(['demo']))\n")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_demo_that_catches_exits_0(tmp_path: Path) -> None:
    proc = _run(["-m", "kswgdb", "demo"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Caught stack corruption #1" in proc.stdout
    assert "s3_corrupt_write" in proc.stdout
    assert "error" not in proc.stderr


def test_demo_that_catches_nothing_exits_4(tmp_path: Path) -> None:
    proc = _run(["-c", DEMO_ON_CLEAN_SCENARIO], tmp_path)
    assert proc.returncode == EXIT_DEMO_MISSED, proc.stderr
    assert "Caught stack corruption" not in proc.stdout
    assert "result=clean" in proc.stdout                   # the guest ran to its verdict
    assert proc.stderr.strip().splitlines()[-1] == (
        "kswgdb: error: the demo caught nothing: scenario 6 ran to its end and no watch fired")
