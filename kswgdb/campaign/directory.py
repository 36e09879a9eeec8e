"""The campaign directory, one per campaign and never mixed: `CampaignDir`.

Layout::

    DIR/command.txt            the campaign's own command line
    DIR/runs/NNNN/events.jsonl one event log per run (every hit is in these)
    DIR/runs/NNNN/*.elf        that run's vmcore (--on-hit freeze; one per signature kept)
    DIR/replay.txt             one `kswgdb run ... --seed S` line per run
    DIR/summary.json           the summary (schema: docs/campaign-summary.md)
    DIR/summary.txt            the rendered table and each signature's first panel

A directory that exists and is not empty is refused (bad input), so two
campaigns never share one; the default name carries the date and time.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from kswgdb.errors import BadInput


class CampaignDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path | None) -> CampaignDir:
        """Make the directory (0700); `BadInput` if it exists with anything in it."""
        if path is None:
            path = Path.cwd() / f"kswgdb-campaign-{time.strftime('%Y%m%d-%H%M%S')}"
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise BadInput(f"--dir {path}: exists and is not an empty directory "
                           "(one directory per campaign: give a new one)")
        try:
            (path / "runs").mkdir(parents=True, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise BadInput(f"--dir {path}: {exc.strerror or exc}") from None
        return cls(path)

    def run_dir(self, index: int) -> Path:
        run = self.path / "runs" / f"{index:04d}"
        run.mkdir(mode=0o700, exist_ok=True)
        return run

    def log_path(self, index: int) -> Path:
        return self.run_dir(index) / "events.jsonl"

    def write_command(self, argv: tuple[str, ...] | list[str]) -> None:
        self._write("command.txt", shlex.join(["kswgdb", *argv]) + "\n")

    def add_replay(self, index: int, seed: int, line: str) -> None:
        with open(self.path / "replay.txt", "a", encoding="utf-8") as fh:
            fh.write(f"# run {index} seed {seed}\n{line}\n")

    def write_summary(self, summary: dict[str, Any], table: str) -> None:
        self._write("summary.json", json.dumps(summary, indent=2) + "\n")
        self._write("summary.txt", table)

    def _write(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path / name)        # a reader never sees half a summary
