"""kswgdb: KStackWatch from outside the guest, through QEMU's gdbstub."""

__version__ = "0.1.0"
