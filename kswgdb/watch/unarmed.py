"""No silent nothing: which watches of a run were never armed, and why, in one line each.

"0 hits" means something only if the watch was armed at least once. A watch
whose function was never called, that never reached its depth, that found no
free slot or no canary, or whose symbols do not match the running kernel
(kswgdb.watch.kaslr), watched nothing: the run says so per watch, and the CLI
gives such a run its own exit status (4) unless the user asked for it
(``--allow-unarmed``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_REFUSALS = (
    ("skipped_depth", "not at the watch's depth"),
    ("refused_pool", "no free watch slot (raise --slots)"),
    ("refused_check", "no canary at the slot (wrong fo or offset?)"),
    ("refused_stub", "the gdbstub refused the watchpoint"),
)


@dataclass(frozen=True)
class PendingModule:
    """A watch on a module's function whose module never loaded during the run."""

    config: str
    module: str


def why_unarmed(row: dict) -> str:
    """Why a summary row with ``armed == 0`` watched nothing, in words."""
    calls, func = row["calls"], row["func"]
    if calls == 0:
        return f"{func} was never called"
    if row["skipped_depth"] == calls:
        return f"{func} never reached the watch's depth ({calls} call(s) at other depths)"
    parts = [f"{row[key]} {words}" for key, words in _REFUSALS if row.get(key)]
    return f"none of the {calls} call(s) of {func} could be armed: " + ", ".join(parts)


def unarmed_warnings(summary: Iterable[dict], *, pending: Iterable[PendingModule] = (),
                     kernel_reason: str | None = None, ended_by_timeout: float | None = None,
                     removed: Iterable[str] = ()) -> list[str]:
    """One line per watch that was never armed (empty: every watch was armed at least once).

    ``kernel_reason``: why no watch could be armed at all (the kernel was never
    located); ``ended_by_timeout``: the ``--timeout`` that ended the run, said
    next to "never called"; ``removed``: configs the user removed (a live session).
    """
    gone = set(removed)
    lines = []
    suffix = (f" before --timeout {ended_by_timeout:g}s ended the run"
              if ended_by_timeout is not None else "")
    for row in summary:
        if row["armed"] or row["config"] in gone:
            continue
        why = kernel_reason or why_unarmed(row)
        if not kernel_reason and row["calls"] == 0:
            why += suffix
        lines.append(f"watch {row['config']!r} was never armed: {why}")
    for mod in pending:
        why = kernel_reason or f"module {mod.module} was never loaded{suffix}"
        lines.append(f"watch {mod.config!r} was never armed: {why}")
    return lines


def _pending(module_watches: Iterable) -> list[PendingModule]:
    return [PendingModule(m.resolved.config.text or m.resolved.config.canonical(), m.module)
            for m in module_watches if m.armed_index is None]


def live_warnings(summary: list[dict], removed: Iterable[int],
                  module_watches: Iterable = ()) -> list[str]:
    """`unarmed_warnings` for an interactive session (`kswgdb tui`): a watch the user
    removed (``removed``: the engine's indices) is not held against the session."""
    gone = [summary[i]["config"] for i in removed if 0 <= i < len(summary)]
    return unarmed_warnings(summary, pending=_pending(module_watches), removed=gone)


def run_warnings(summary: list[dict], module_watches: Iterable, placement, result,
                 timeout: float) -> list[str]:
    """`unarmed_warnings` for a `WatchSession` run (its module watches, kernel placement
    (`kswgdb.watch.kaslr.KernelPlacement` or None) and engine result (None: it raised))."""
    pending = _pending(module_watches)
    reason = placement.unarmed_reason() if placement is not None else None
    if result is None and not summary and reason is None:
        return []       # the run failed before any watch could be: the failure says why
    by_timeout = timeout if result is not None and result.reason == "deadline" else None
    return unarmed_warnings(summary, pending=pending, kernel_reason=reason,
                            ended_by_timeout=by_timeout)


__all__ = ["PendingModule", "run_warnings", "unarmed_warnings", "why_unarmed"]
