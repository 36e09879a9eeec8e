"""Keeps the Debian-kernel suite (tests/linux, minutes under TCG) out of a plain ``pytest``.

It runs with ``make test-linux`` (which sets ``KSWGDB_LINUX_TESTS=1``) or when a
path inside tests/linux is named on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LINUX_TESTS = Path(__file__).parent / "linux"


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("KSWGDB_LINUX_TESTS") == "1":
        return True
    for arg in config.args:
        p = Path(arg.split("::")[0]).resolve()
        if p == LINUX_TESTS or LINUX_TESTS in p.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == LINUX_TESTS and not _asked_for(config):
        return True
    return None
