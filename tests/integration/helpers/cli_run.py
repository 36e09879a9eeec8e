"""Run ``kswgdb run`` as a real process and check what it leaves behind.

The fault tests need the tool exactly as a user starts it (its own signal
handlers, its own exit status), so it runs as ``python -m kswgdb`` with stdout
and stderr in files (a pipe nobody reads could block the tool). `CliRun` finds
the QEMU the tool started (its child process) and the tool's private run
directory (named by its ``owner.pid``), so a test can assert both are gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def run_dirs_of(pid: int) -> list[Path]:
    """kswgdb run (and guest-RAM) directories whose owner file names ``pid``."""
    found = []
    for base in (Path(tempfile.gettempdir()), Path("/dev/shm")):
        for d in base.glob("kswgdb-*"):
            try:
                if int((d / "owner.pid").read_text().strip()) == pid:
                    found.append(d)
            except (OSError, ValueError):
                continue
    return found


class CliRun:
    """One ``kswgdb run ... --json --log LOG`` process, started in ``workdir``."""

    def __init__(self, args: list[str], workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "events.jsonl"
        self.out = workdir / "stdout.txt"
        self.err = workdir / "stderr.txt"
        argv = [sys.executable, "-m", "kswgdb", "run", *args, "--json", "--log", str(self.log)]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.qemu_pids: list[int] = []
        self.dirs: list[Path] = []

    def wait_qemu(self, timeout: float = 60.0) -> int:
        """The QEMU child's pid, once it exists (and note the run directory)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = [p for p in children(self.proc.pid) if _is_machine(p)]
            if kids:
                self.qemu_pids = kids
                self.dirs = run_dirs_of(self.proc.pid)
                return kids[0]
            assert self.proc.poll() is None, self.stderr()
            time.sleep(0.01)
        raise AssertionError(f"no QEMU child within {timeout}s: {self.stderr()}")

    def wait_hits(self, n: int = 1, timeout: float = 120.0) -> None:
        """Until the event log holds ``n`` hits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and self.log.read_text().count('"event": "hit"') >= n:
                return
            assert self.proc.poll() is None, f"ended early: {self.stderr()}"
            time.sleep(0.01)
        raise AssertionError(f"fewer than {n} hits within {timeout}s")

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def last_error_line(self) -> str:
        lines = [ln for ln in self.stderr().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def events(self, path: Path | None = None) -> list[dict]:
        """Every line of the log (or of stdout), parsed: each must be one JSON object."""
        text = (path or self.log).read_text()
        assert text == "" or text.endswith("\n"), "the last log line is cut"
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def assert_nothing_left(self, sweep_expected: bool = False) -> None:
        """No QEMU child alive; no run directory (after a sweep if the tool was SIGKILLed)."""
        deadline = time.monotonic() + 10
        while any(alive(p) for p in self.qemu_pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [p for p in self.qemu_pids if alive(p)], "QEMU outlived the tool"
        assert not children(self.proc.pid)
        if sweep_expected:
            from kswgdb.qemu.rundir import sweep_stale

            sweep_stale()
        assert not run_dirs_of(self.proc.pid), "run directory left behind"

    def assert_log_complete(self, expect_end: bool = True) -> list[dict]:
        """All lines parse; hit seqs are 1..n in order; what stdout showed is in the log."""
        events = self.events()
        hits = [e for e in events if e["event"] == "hit"]
        assert [h["seq"] for h in hits] == list(range(1, len(hits) + 1))
        shown = [e["seq"] for e in self.events(self.out) if e.get("event") == "hit"]
        assert shown == [h["seq"] for h in hits][:len(shown)]
        assert len(shown) <= len(hits)
        if expect_end:
            assert events[-1]["event"] == "end", events[-1]
            assert events[-2]["event"] == "summary"
        return hits


def _is_machine(pid: int) -> bool:
    """A guest's QEMU, not a ``qemu-system-x86_64 -version`` run by the version check.

    A QEMU wrapper script (kswgdb.qemu.fetch's) execs QEMU under its own pid, so
    the arguments (``-name kswgdb-...``) identify the machine before and after.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg.startswith(b"kswgdb-") for arg in argv)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
