"""Bench-only instrumentation shared by the benchmarks: console line times, last Machine.

Importing this module patches two things in this process (nothing is edited on
disk): `Console._append` stamps, with the host's monotonic clock, the first
console line containing each key given to `stamp_lines`, and `Machine.__enter__`
remembers the machine last started (``LAST_MACHINE``), so a benchmark can reach
the console and QMP of a machine that a `WatchSession` started for it.
"""

from __future__ import annotations

import time

from kswgdb.qemu import console as console_mod
from kswgdb.qemu import machine as machine_mod
from kswgdb.qemu.machine import Machine

KEYS: list[str] = []
LAST_MACHINE: list[Machine] = []
_orig_append = console_mod.Console._append
_orig_enter = machine_mod.Machine.__enter__


def stamp_lines(*keys: str) -> None:
    """Stamp the first console line that contains each of ``keys``."""
    KEYS.extend(k for k in keys if k not in KEYS)


def stamps(console) -> dict[str, tuple[float, str]]:
    """Key -> (host monotonic time the line arrived, the line), for one console."""
    return getattr(console, "bench_stamps", {}) if console is not None else {}


def _stamping_append(self, raw_lines):
    _orig_append(self, raw_lines)
    now = time.monotonic()
    seen = self.__dict__.setdefault("bench_stamps", {})
    for raw in raw_lines:
        text = raw.decode("utf-8", "replace")
        for key in KEYS:
            if key in text and key not in seen:
                seen[key] = (now, text)


def _remembering_enter(self):
    result = _orig_enter(self)
    LAST_MACHINE[:] = [self]
    return result


console_mod.Console._append = _stamping_append
machine_mod.Machine.__enter__ = _remembering_enter
