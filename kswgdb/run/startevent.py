"""The event log's first event, ``start``: what was asked for, and with what.

Kept apart from the rig so the one event a script reads first is assembled in
one place (docs/events.md documents each field): the schema version the log
follows, kswgdb's and QEMU's versions, the image, the accelerator, the watches
and polls as given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kswgdb import __version__
from kswgdb.watch.eventschema import SCHEMA_VERSION

if TYPE_CHECKING:
    from kswgdb.qemu.machine import Machine
    from kswgdb.run.prepare import Plan


def start_fields(plan: Plan, machine: Machine | None, *, stub: bool,
                 interactive: bool) -> dict[str, Any]:
    """The ``start`` event's fields for ``plan`` run on ``machine`` (None: never launched)."""
    opts = plan.options
    qemu = getattr(machine, "qemu", None)       # detected at launch; absent if it failed
    fields: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kswgdb_version": __version__,
        "qemu_version": str(qemu.version) if qemu is not None else None,
        "qemu_binary": str(qemu.path) if qemu is not None else None,
        "image": str(plan.image.path) if plan.image is not None else None,
        "accel": plan.accel.accel,
        "accel_reason": plan.accel.reason,
        "scenario": opts.scenario,
        "seed": opts.seed,
        "watches": [r.describe() for r in plan.watches],
        "configs": [s.text for s in plan.specs],
        "polls": [p.canonical() for p in plan.poll_specs],
        "backtrace": plan.backtrace_mode if stub else None,
        "engine": plan.engine.engine,
        "engine_reason": plan.engine.reason,
    }
    if interactive:
        fields["interactive"] = True
    fields.update(plan.additions.log_fields())      # modules, drives, qemu_args if given
    fields.update(getattr(machine, "log_fields", {}))   # `kswgdb attach`: what it attached to
    return fields
