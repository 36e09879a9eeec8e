"""Bench-only instrumentation shared by the benchmarks: console line times, last Machine.

Importing this module patches two things in this process (nothing is edited on
disk): `Console._append` stamps, with the host's monotonic clock, the first
console line containing each key given to `stamp_lines`, and `Machine.launch`
(which ``with Machine(...)`` and a `kswgdb.run.rig.Rig` both call) remembers the
machine last started (``LAST_MACHINE``), so a benchmark can reach the console and
QMP of a machine that a `WatchSession` started for it. With each stamp goes QEMU's
CPU time so far (user + system of all its threads, `cpu_stamps`): on a shared host
the guest's wall time depends on when it gets a core, QEMU's CPU time much less.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kswgdb.qemu import console as console_mod
from kswgdb.qemu import machine as machine_mod
from kswgdb.qemu.machine import Machine

KEYS: list[str] = []
LAST_MACHINE: list[Machine] = []
_orig_append = console_mod.Console._append
_orig_launch = machine_mod.Machine.launch


def stamp_lines(*keys: str) -> None:
    """Stamp the first console line that contains each of ``keys``."""
    KEYS.extend(k for k in keys if k not in KEYS)


def stamps(console) -> dict[str, tuple[float, str]]:
    """Key -> (host monotonic time the line arrived, the line), for one console."""
    return getattr(console, "bench_stamps", {}) if console is not None else {}


def cpu_stamps(console) -> dict[str, float]:
    """Key -> QEMU's CPU seconds when that line arrived (the last machine started)."""
    return getattr(console, "bench_cpu", {}) if console is not None else {}


def process_cpu(pid: int | None) -> float | None:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stamping_append(self, raw_lines):
    _orig_append(self, raw_lines)
    now = time.monotonic()
    seen = self.__dict__.setdefault("bench_stamps", {})
    cpu = self.__dict__.setdefault("bench_cpu", {})
    for raw in raw_lines:
        text = raw.decode("utf-8", "replace")
        for key in KEYS:
            if key in text and key not in seen:
                seen[key] = (now, text)
                if LAST_MACHINE:
                    cpu[key] = process_cpu(getattr(LAST_MACHINE[0], "pid", None))


def _remembering_launch(self, *args, **kwargs):
    result = _orig_launch(self, *args, **kwargs)
    LAST_MACHINE[:] = [self]
    return result


console_mod.Console._append = _stamping_append
machine_mod.Machine.launch = _remembering_launch
