"""DWARF answers remembered on disk: struct offsets, type sizes, global addresses.

Opening a Debian vmlinux's DWARF costs ~0.3 s and a few hundred MB (pyelftools
reads the debug sections into memory), yet a run usually needs only a dozen
facts from it (``task_struct.pid``, ``struct module.list``...). Each answer,
including "no such type", is stored in a small JSON file per ELF, keyed by
build-id, size and mtime, so the next run answers without opening the DWARF.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from kswgdb.errors import BadInput

_VERSION = 1


class FactCache:
    """question -> int (or the BadInput message it raised), persisted per ELF file."""

    def __init__(self, path: Path, build_id: str | None, directory: Path) -> None:
        st = path.stat()
        self._key = [_VERSION, str(path), build_id, st.st_size, st.st_mtime_ns]
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
        self._file = directory / f"facts-{path.name}-{digest}.json"
        self._facts: dict[str, list] = self._read()
        self.misses = 0

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads(self._file.read_text())
        except (OSError, ValueError):
            return {}
        return data.get("facts", {}) if data.get("key") == self._key else {}

    def answer(self, question: str, compute: Callable[[], int]) -> int:
        """The stored answer, or ``compute()``'s (stored for next time)."""
        stored = self._facts.get(question)
        if stored is None:
            self.misses += 1
            try:
                stored = ["ok", int(compute())]
            except BadInput as exc:
                stored = ["bad", str(exc)]
            self._facts[question] = stored
            self._write()
        if stored[0] == "bad":
            raise BadInput(stored[1])
        return int(stored[1])

    def _write(self) -> None:
        """Atomically; a read-only cache directory must not stop the tool."""
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"key": self._key, "facts": self._facts}))
            os.replace(tmp, self._file)
        except OSError:
            pass
