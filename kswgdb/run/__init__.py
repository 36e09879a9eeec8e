"""Preparing and wiring a watched run; the drivers on top of it.

- `options`      `RunOptions`, filled the same way from `run` and `tui` arguments
- `seed`         the seed's kernel command-line word (``--seed``, campaigns)
- `prepare`      `prepare(options) -> Plan`: every check before QEMU starts (exit 2)
- `additions`    ``--module``, ``--drive``, ``--qemu-arg`` checked (`Additions`)
- `attach`       the rig's parts for a QEMU the user started (`kswgdb attach`): attached
                 machine, kernel placed where it runs, symbols checked, detach at the end
- `rig`          `Rig` / `open_rig(plan, sink)`: one guest's resources (machine, stub,
                 target, engine, unwinder, polls, event log, watchdog), all released on
                 every ending, the log closed with ``summary`` and ``end``; `Sink`, where
                 a rig's news goes
- `startevent`   the event log's ``start`` event (schema version, QEMU version, ...)
- `stub_target`  `StubTarget`: the engine's `Target` over the gdbstub (host emulation,
                 queued Z2, batched reads)
- `consolelog`   the guest's console in the event log (``console`` events, bounded) and
                 on the sink (``--console``)
- `progress`     a running rig's counts (calls, armed, hits, elapsed, slide), from any
                 thread: the terminal's live status line
- `faults`       which guest endings are faults (exit 3), and the hang/QMP `Watchdog`
- `qemucrash`    QEMU's last stderr lines shown and its log kept after a fault
- `hang`         a wedged guest told from a quiet one (its clock read through QMP), and
                 the kernel's own stall reports
- `vmcore`       the frozen guest's dump, its tick count at the dump, and the command
                 that opens it (drgn for Linux, whose dump carries VMCOREINFO; gdb)
- `oneshot`      the `kswgdb run` driver (`WatchSession`) and its `RunReport`
- `live`         the TUI's controller (`LiveSession`): a worker thread, a command queue,
                 snapshots, a `RunState`
- `livestate`    the live controller's commands and `Snapshot`s
"""
