"""One physical-memory poll hit as one rich panel, and the polls' summary table.

A poll hit answers *what changed, when, and where the vCPUs were*, never *who
wrote it*: the panel says so, and says how to get the writer when it is a CPU.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kswgdb.poll.config import format_interval
from kswgdb.poll.poller import PollHit, PollStatus
from kswgdb.render.hit import value


def render_poll_hit(hit: PollHit) -> Panel:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column()
    where = f"pa {hit.addr:#x} ({hit.length} bytes)"
    if hit.region_offset is not None:
        where += f", region offset {hit.region_offset:#x}"
    facts.add_row("address", where)
    facts.add_row("value", Text.assemble((value(hit.old), "green"), " -> ",
                                         (value(hit.new), "bold red"),
                                         "  (already so at the first sample)"
                                         if hit.first_sample else ""))
    how = ("DRAM, read from the shared RAM file (guest never paused)" if hit.kind == "dram"
           else "MMIO, read through QEMU (briefly pauses the guest)")
    facts.add_row("memory", f"{hit.label}: {how}")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(hit.wall_time))
    when = f"{stamp}.{int(hit.wall_time % 1 * 1e6):06d}"
    if hit.context.guest_time is not None:
        when += f"  (guest jiffies {hit.context.guest_time})"
    facts.add_row("seen", when)
    facts.add_row("window", f"changed within the last {hit.window * 1e6:.0f} us "
                            "(since the previous sample)")
    facts.add_row("config", hit.config)
    if hit.context.vmcore:
        facts.add_row("vmcore", hit.context.vmcore)

    cpus = Text()
    for vcpu in hit.context.vcpus:
        cpus.append(f"  {vcpu}\n")
    cpus.rstrip()
    parts = [Text.assemble(("physical memory changed", "bold red"),
                           f" at pa {hit.addr:#x}"), Text(""), facts, Text(""),
             Text("vCPUs when the change was seen (a window, not the writer; "
                  f"{hit.context.note or 'no note'}):", style="dim"), cpus]
    if hit.context.hint:
        parts += [Text(""), Text("to catch a CPU writer exactly next time:", style="dim"),
                  Text(hit.context.hint)]
    return Panel(Group(*parts), title=f"[bold]Physical-memory poll hit #{hit.seq}",
                 title_align="left", border_style="red", expand=False)


def render_poll_summary(polls: list[PollStatus]) -> Table:
    table = Table(title="physical-memory polls", title_justify="left")
    for col in ("#", "poll", "memory", "samples", "median interval", "hits"):
        table.add_column(col, overflow="fold")
    for p in polls:
        interval = format_interval(p.median_interval) if p.median_interval else "-"
        table.add_row(str(p.id), p.config, f"{p.kind} ({p.label})", str(p.samples), interval,
                      str(p.hits))
    return table
