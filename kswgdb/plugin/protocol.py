"""What the plugin says on its socket, turned into kswgdb's own hit records.

The plugin writes one JSON object per line: ``hello`` once it is installed,
``hit`` for every caught write (exact store instruction, registers at the
store, the writer's frame-pointer chain, owner and writer task, old and new
bytes, counters so far) and ``end`` with the final counters when QEMU exits.
Everything symbolic (names, source lines, disassembly) is added here from the
kernel's symbols, so a plugin hit renders exactly like a gdbstub engine hit.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kswgdb.errors import InfraError
from kswgdb.watch.engine import Symbolizer
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hits import BacktraceFrame, Hit, TaskInfo, Writer
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.target import Registers

#: The counters the plugin keeps per watch (a subset of `WatchStats`, plus same_value).
STAT_NAMES = ("calls", "armed", "skipped_depth", "refused_pool", "refused_check", "reentries",
              "returns", "stale", "hits", "found_by_scan", "dead_frame_writes", "rep_repeats",
              "same_value")


class PluginProtocolError(InfraError):
    """A line from the plugin that is not what it promises to send."""


def parse_line(line: bytes | str) -> dict[str, Any]:
    """One event; `PluginProtocolError` on anything that is not a JSON object with ``event``."""
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise PluginProtocolError(f"the plugin sent a line that is not JSON: {line!r:.120}") \
            from exc
    if not isinstance(event, dict) or "event" not in event:
        raise PluginProtocolError(f"the plugin sent no event: {line!r:.120}")
    return event


def _task(raw: dict[str, Any]) -> TaskInfo:
    pid = raw.get("pid", -1)
    return TaskInfo(task=int(raw["task"], 16), pid=None if pid < 0 else pid,
                    name=raw.get("comm") or f"task@{raw['task']}")


def summary(stats: list[dict[str, int]], specs: list[ArmSpec]) -> list[dict[str, Any]]:
    """Per-watch counts in the shape of `Engine.summary` (``not_armed`` included)."""
    out = []
    for spec, counts in zip(specs, stats, strict=False):
        row: dict[str, Any] = {"config": spec.text, "func": spec.func, "mode": spec.mode}
        row.update({name: int(counts.get(name, 0)) for name in STAT_NAMES})
        row["not_armed"] = row["skipped_depth"] + row["refused_pool"] + row["refused_check"]
        out.append(row)
    return out


def hit_from_event(event: dict[str, Any], specs: list[ArmSpec], sym: Symbolizer,
                   layout: GuestLayout) -> Hit:
    """A `Hit` from a ``hit`` event, named with the kernel's symbols."""
    try:
        spec = specs[event["spec"]]
        pc = int(event["pc"], 16)
        regs = Registers({name: int(value, 16) for name, value in event["regs"].items()})
        chain = [int(ret, 16) for ret in event.get("fp_chain", [])]
        old, new = event["old"], event["new"]
        bytes.fromhex(old + new)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise PluginProtocolError(f"malformed hit from the plugin: {exc!r}") from exc
    insn_addr, text, context = _store_at(pc, regs, sym)
    backtrace = [BacktraceFrame(0, insn_addr, sym.symbol(insn_addr), sym.source(insn_addr))]
    for ret in chain:
        # A return address follows its call: the call's line is the one to show.
        backtrace.append(BacktraceFrame(len(backtrace), ret, sym.symbol(ret), sym.source(ret - 1)))
    irq = any((sym.function(f.pc) or "") in layout.irq_functions for f in backtrace)
    return Hit(
        seq=int(event["seq"]), wall_time=time.time(), guest_time=None, cpu=int(event["vcpu"]),
        config=spec.text, addr=int(event["addr"], 16), length=int(event["len"]),
        what=spec.what, watched_func=spec.func, depth=int(event["depth"]), old=old, new=new,
        owner=_task(event["owner"]), writer_task=_task(event["writer"]),
        writer=Writer(pc_reported=pc, insn_addr=insn_addr, symbol=sym.symbol(insn_addr),
                      function=sym.function(insn_addr) or "?", disasm=text,
                      source=sym.source(insn_addr), context=context),
        registers=dict(regs.values), backtrace=tuple(backtrace), interrupt=irq,
    )


def _store_at(pc: int, regs: Registers, sym: Symbolizer) -> tuple[int, str, tuple]:
    """The plugin reports the storing instruction itself; the symbolizer wants the next one."""
    program = getattr(sym, "program", None)
    func = program.disasm.function_at(pc) if program is not None else None
    insn = func.at(pc) if func is not None else None
    if insn is None:
        return pc, "(not an instruction boundary of a known function)", ()
    return sym.writer(insn.end, regs)
