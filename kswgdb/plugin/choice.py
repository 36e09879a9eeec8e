"""Which engine watches a run: ``--engine auto|gdbstub|plugin`` turned into a decision.

The TCG plugin engine (docs/plugin-engine.md) needs no breakpoint stop, but it
runs only where every one of these holds, checked before anything starts:

- the run is one-shot (the TUI adds and removes watches while the guest runs:
  the plugin's probes are fixed at translation time), with no ``--poll`` and
  no ``--gdb-listen`` (both need the gdbstub), at most `MAX_SPECS` watches
  (module watches included, armed when their module loads) whose release
  points are known, and no ``--backtrace gdb`` (the plugin walks frame
  pointers inside QEMU);
- the accelerator is TCG (plugins are a TCG feature);
- the QEMU in use (``--qemu``, ``KSWGDB_QEMU`` or PATH) is at least
  `PLUGIN_API_QEMU` (plugin API 4: ``qemu_plugin_read_memory_vaddr``) and
  was built with plugin support (``-plugin`` in its ``-help``);
- the plugin is built for that QEMU, or can be: the ``qemu-plugin.h`` of that
  very version is in the QEMU 10 cache (`kswgdb.qemu.fetch`) and gcc is on PATH.

``auto`` takes the plugin engine when all hold, else the gdbstub engine, and
says which and why (the ``start`` event's ``engine``/``engine_reason``, one
status line). ``plugin`` where one fails is bad input: one line, exit 2,
before boot. ``KSWGDB_ENGINE`` is the default when no ``--engine`` is given.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

from kswgdb.errors import BadInput, KswError
from kswgdb.plugin.args import spec_refusal
from kswgdb.qemu import binary
from kswgdb.qemu.fetch import Qemu10, located, upstream_of
from kswgdb.qemu.version import QemuVersion

ENGINES = ("auto", "gdbstub", "plugin")
ENV_VAR = "KSWGDB_ENGINE"
#: Plugin API 4 (qemu_plugin_read_memory_vaddr) came after QEMU 9.1.
PLUGIN_API_QEMU = QemuVersion(9, 2, 0)


@dataclass(frozen=True)
class EngineChoice:
    """The engine a run uses and why (one phrase, shown and logged)."""

    engine: str                     # "gdbstub" | "plugin"
    reason: str
    qemu10: Qemu10 | None = None    # where the plugin's header (and build) lives

    def describe(self) -> str:
        return f"engine: {self.engine} ({self.reason})"


@dataclass(frozen=True)
class RunShape:
    """What of a run decides whether the plugin engine can watch it."""

    specs: list                     # ArmSpec, file addresses
    module_watches: int = 0
    polls: int = 0
    gdb_listen: bool = False
    backtrace: str = "auto"         # as requested
    interactive: bool = False
    accel: str = "tcg"
    release_by_read: bool = False
    attached: bool = False          # kswgdb attach: QEMU was started without our plugin


def requested(engine: str | None) -> str:
    """``--engine`` as given, else ``KSWGDB_ENGINE``, else auto; bad input if unknown."""
    value = engine or os.environ.get(ENV_VAR, "").strip() or "auto"
    if value not in ENGINES:
        where = "--engine" if engine else ENV_VAR
        raise BadInput(f"{where} {value!r}: expected {', '.join(ENGINES)}")
    return value


def choose(engine: str | None, shape: RunShape) -> EngineChoice:
    """The decision (module docstring); `BadInput` for ``plugin`` where it cannot run."""
    want = requested(engine)
    if want == "gdbstub":
        return EngineChoice("gdbstub", "requested")
    obstacle = watch_obstacle(shape)
    qemu10 = None
    if obstacle is None:
        obstacle, qemu10 = qemu_obstacle()
    if obstacle is None:
        return EngineChoice("plugin", "requested" if want == "plugin" else
                            f"QEMU {binary.selected().version} with TCG plugins",
                            qemu10)
    if want == "plugin":
        raise BadInput(f"--engine plugin: {obstacle} (use --engine gdbstub or auto)")
    return EngineChoice("gdbstub", f"the plugin engine cannot: {obstacle}")


def watch_obstacle(shape: RunShape) -> str | None:
    """Why this run's watches need the gdbstub engine (None: the plugin can take them)."""
    if shape.attached:
        return "an attached QEMU was started without kswgdb's plugin"
    if shape.interactive:
        return "the TUI adds and removes watches while the guest runs"
    if not shape.specs and not shape.module_watches:
        return "no function watch"
    if shape.polls:
        return "--poll reads guest memory through the gdbstub run"
    if shape.gdb_listen:
        return "--gdb-listen lends the frozen guest through the gdbstub"
    if shape.backtrace == "gdb":
        return "--backtrace gdb needs the gdbstub (the plugin walks frame pointers)"
    if shape.release_by_read:
        return "release by read watchpoints is a gdbstub feature"
    if shape.accel != "tcg":
        return f"plugins are TCG only (accelerator: {shape.accel})"
    return spec_refusal(shape.specs)


def qemu_obstacle() -> tuple[str | None, Qemu10 | None]:
    """Why the QEMU in use cannot load the plugin (None: it can), and the header's cache."""
    try:
        qemu = binary.selected()
    except KswError as exc:
        return f"QEMU not usable: {exc}", None
    if qemu.version < PLUGIN_API_QEMU:
        return (f"QEMU {qemu.version} has no plugin API 4 (needs >= {PLUGIN_API_QEMU}; "
                "`make qemu10` fetches 10.0 into build/qemu10)"), None
    if not _has_plugins(qemu.path):
        return f"QEMU {qemu.version} ({qemu.path}) was built without TCG plugin support", None
    cache = located()
    fetched = cache.version()
    if fetched is None or not upstream_of(fetched).startswith(str(qemu.version)):
        return (f"no qemu-plugin.h for QEMU {qemu.version} (the QEMU 10 cache {cache.cache} "
                f"holds {upstream_of(fetched) if fetched else 'nothing'})"), None
    from kswgdb.plugin.build import plugin_path

    if not cache.headers_ready():
        return (f"qemu-plugin.h is not fetched into {cache.cache} (python3 -m "
                "kswgdb.qemu.fetch --plugin-headers)"), None
    if plugin_path(cache).exists():
        return None, cache
    if shutil.which("gcc") is None:
        return "gcc is not installed (the plugin is compiled for the QEMU in use)", None
    return None, cache


@functools.cache
def _has_plugins(path: str) -> bool:
    """``-plugin`` is in the QEMU's ``-help`` only when it was built with plugins."""
    try:
        out = subprocess.run([path, "-help"], capture_output=True, text=True,
                             timeout=binary.DETECT_TIMEOUT, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "\n-plugin " in out
