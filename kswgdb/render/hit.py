"""One caught write as one rich panel.

The headline answers the question a kernel developer asks first: *who* wrote
*what*. The rest is the evidence in the order it is usually checked: the value
change, the two tasks, the source line, the instruction in context, the stack.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kswgdb.watch.hits import Hit, slot_value

#: Guest bytes as the number the slot holds (the event log writes the same form).
value = slot_value


def headline(hit: Hit) -> Text:
    text = Text()
    text.append(hit.writer.symbol, style="bold red")
    text.append(" corrupted the ")
    text.append(hit.what or f"slot of {hit.watched_func}", style="bold")
    if hit.interrupt:
        text.append("  (in interrupt context)", style="yellow")
    return text


def render_hit(hit: Hit) -> Panel:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column()
    facts.add_row("address", f"{hit.addr:#x} ({hit.length} bytes)")
    facts.add_row("value", Text.assemble(
        (value(hit.old), "green"), " -> ", (value(hit.new), "bold red"),
        ("  (value unchanged: the store wrote what was there)" if hit.unchanged else "",
         "yellow")))
    facts.add_row("writer", f"task {hit.writer_task} on CPU {hit.cpu}")
    owner = f"task {hit.owner}, {hit.watched_func} at depth {hit.depth}"
    if hit.owner.task == hit.writer_task.task:
        owner += "  (same task)"
    facts.add_row("owner", owner)
    facts.add_row("source", str(hit.writer.source) if hit.writer.source else "?")
    facts.add_row("config", hit.config)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(hit.wall_time))
    when = f"{stamp}.{int(hit.wall_time % 1 * 1e6):06d}"
    if hit.guest_time is not None:
        when += f"  (guest ticks {hit.guest_time})"
    facts.add_row("time", when)

    disasm = Text()
    context = hit.writer.context or ((hit.writer.insn_addr, hit.writer.disasm),)
    for addr, insn in context:
        mark = "=>" if addr == hit.writer.insn_addr else "  "
        line = f"{mark} {addr:#x}  {insn}"
        disasm.append(line + "\n", style="bold red" if mark == "=>" else "")
    disasm.rstrip()

    trace = Text()
    for frame in hit.backtrace:
        trace.append(f"#{frame.level:<2} {frame.symbol}")
        if frame.source:
            trace.append(f"  {frame.source}", style="dim")
        trace.append("\n")
    trace.rstrip()

    body = Group(
        headline(hit), Text(""), facts, Text(""),
        Text("writing instruction (x86 stops after the store):", style="dim"), disasm,
        Text(""), Text("backtrace:", style="dim"), trace,
    )
    return Panel(body, title=f"[bold]Caught stack corruption #{hit.seq}", title_align="left",
                 border_style="red", expand=False)
