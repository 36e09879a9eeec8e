"""The plugin's arguments, from the watch policy's numbers (`ArmSpec`, `GuestLayout`).

The C plugin decides nothing about the guest: where to probe, how to find the
frame and the slot, which guard to check, where the frame is released, all
come from ``kswgdb.watch.resolve`` exactly as the gdbstub engine gets them.
This module only writes them in the plugin's argument syntax (see the comment
at the top of ``kswplugin.c``), and refuses what the plugin cannot do yet.
"""

from __future__ import annotations

from kswgdb.errors import BadInput
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.spec import ArmSpec

#: Per the C side's MAX_SPECS / MAX_EXITS.
MAX_SPECS = 16
MAX_EXITS = 64
_REG = {"rsp": 0, "rbp": 1}
_GUARD = {None: 0, "global": 1, "gs": 2}


def spec_refusal(specs: list[ArmSpec]) -> str | None:
    """Why the plugin cannot take these watches (None: it can)."""
    for spec in specs:
        if not spec.exits:
            return (f"{spec.text}: the function's release points are unknown (its epilogue "
                    "could not be analysed)")
    if len(specs) > MAX_SPECS:
        return f"it takes at most {MAX_SPECS} watches"
    if sum(len(s.exits) for s in specs) > MAX_EXITS:
        return f"it takes at most {MAX_EXITS} release points in all"
    return None


def spec_args(index: int, spec: ArmSpec) -> list[str]:
    """``w=...`` and its ``x=...`` release points for watch ``index``."""
    guard = spec.guard if spec.mode == "canary" else None
    kind = _GUARD[guard.kind if guard is not None else None]
    value = 0 if guard is None else (guard.addr if guard.kind == "global" else guard.offset)
    fields = [index, spec.probe_addr, _REG[spec.cfa_base], spec.cfa_offset, _REG[spec.base],
              spec.offset, spec.length, spec.depth, kind, value, int(spec.panic)]
    out = ["w=" + "/".join(_num(f) for f in fields)]
    for addr, base, offset in spec.exits:
        out.append("x=" + "/".join(_num(f) for f in (index, addr, _REG[base], offset)))
    return out


def plugin_args(specs: list[ArmSpec], layout: GuestLayout, sock: str, *, pool: int,
                freeze: bool = False, task_exit: int | None = None) -> list[str]:
    """Every argument after the plugin's path, in order."""
    if (refusal := spec_refusal(specs)) is not None:
        raise BadInput(f"the plugin engine: {refusal}")
    if "," in sock:
        raise BadInput(f"socket path {sock!r} contains a comma (QEMU's option separator)")
    out = [f"sock={sock}",
           f"cur={_num(layout.current_gs_offset if layout.current_gs_offset is not None else -1)}",
           f"tsz={_num(layout.thread_size)}",
           f"pidoff={_num(layout.task_pid_offset if layout.task_pid_offset is not None else -1)}",
           f"comm={_num(layout.task_comm_offset if layout.task_comm_offset is not None else -1)}",
           f"pool={pool}", f"freeze={int(freeze)}"]
    if task_exit is not None:
        out.append(f"exitfn={_num(task_exit)}")
    for index, spec in enumerate(specs):
        out += spec_args(index, spec)
    return out


def plugin_option(path: str, args: list[str]) -> str:
    """The value of QEMU's ``-plugin`` option (``file=`` is implied by the first field)."""
    if "," in path:
        raise BadInput(f"plugin path {path!r} contains a comma (QEMU's option separator): "
                       "move the checkout or set KSWGDB_QEMU10_DIR to a path without one")
    return ",".join([path, *args])


def _num(value: int) -> str:
    return f"{value:#x}" if value >= 0 else f"-{-value:#x}"
