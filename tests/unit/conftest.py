"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


class QemuReached(BaseException):  # not an Exception: it passes the CLI's last resort
    """A command got as far as starting QEMU (bad input must be found before)."""


@pytest.fixture
def no_guest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run commands in ``tmp_path`` with QEMU's launch replaced by `QemuReached`."""
    from kswgdb.qemu import machine

    monkeypatch.chdir(tmp_path)          # the default event log goes to the cwd

    def reached(*_a, **_k):
        raise QemuReached("QEMU would have started")

    monkeypatch.setattr(machine.Machine, "launch", reached)
