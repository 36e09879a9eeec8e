"""gdb itself, as a helper process: started, fed, and always killed by us.

- `backtrace`  `GdbUnwinder`: gdb's DWARF CFI backtrace of the vCPU that hit, through
               a read-only relay (`kswgdb.gdbstub.relay`) of the engine's stub connection;
               module symbol files placed with ``add-symbol-file`` first

The relay and gdb/MI parsing are protocol code and live in `kswgdb.gdbstub`.
"""
