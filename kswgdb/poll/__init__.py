"""Physical-memory polls (`--poll`): watching guest RAM from the host, no gdbstub.

- `config`    `PollSpec` and `parse_poll`: the ``--poll`` syntax (BadInput on anything wrong)
- `memmap`    DRAM vs MMIO ranges from QMP ``info mtree -f``
- `physmem`   reading guest physical memory: the shared RAM file, or HMP ``xp`` for the rest
- `poller`    the sampling thread: `Poller`, `PollHit`, `PollStatus`
- `physrun`   `PhysWatch`: a poller wired to a launched machine (vCPU snapshot, freeze, dump)
- `live`      `LivePolls`: one interactive session's polls, rows and hits (thread-safe)
"""
