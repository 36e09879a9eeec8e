"""Preparing and wiring a watched run; the drivers on top of it.

- `options`   `RunOptions`, filled the same way from `run` and `tui` arguments
- `prepare`   `prepare(options) -> Plan`: every check before QEMU starts (exit 2)
- `rig`       `Rig` / `open_rig(plan, sink)`: one guest's resources, all released
              on every ending, the event log closed with ``summary`` and ``end``;
              `Sink`, where a rig's news goes
- `oneshot`   the `kswgdb run` driver (`WatchSession`) and its `RunReport`
"""
