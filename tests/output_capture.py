"""Run ``kswgdb`` as a user would see it: in an N-column terminal, or piped.

Shared by the unit tests (disasm, symbols) and the integration tests (run, boot)
that check nothing important is truncated or wrapped mid-token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pexpect

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


def in_terminal(argv: list[str], columns: int, timeout: float = 120.0,
                env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit status and the raw text a ``columns``-wide terminal received (ANSI kept)."""
    child = pexpect.spawn(sys.executable, ["-m", "kswgdb", *argv], dimensions=(200, columns),
                          encoding="utf-8", timeout=timeout,
                          env={**os.environ, "COLUMNS": str(columns), "TERM": "xterm",
                               **(env or {})})
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def piped(argv: list[str], timeout: float = 120.0,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kswgdb", *argv], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          check=False)


def tokens(text: str) -> set[str]:
    return set(strip_ansi(text).split())


def assert_whole(text: str, needles: list[str]) -> None:
    """Every needle's tokens appear whole, and nothing was ellipsized."""
    found = tokens(text)
    assert "…" not in text, "output was ellipsized"
    for needle in needles:
        for token in needle.split():
            assert token in found, f"{token!r} (of {needle!r}) is cut or missing"
