"""What a gdb connecting to a frozen guest lent by ``--gdb-listen`` must find."""

from __future__ import annotations

from kswgdb.gdbstub.client import RemoteClient


def check_read_only_stub(address: str) -> None:
    """Connect as gdb would: a stop, registers, and neither writes nor resuming."""
    with RemoteClient.connect(address, timeout=10) as client:
        client.handshake()
        assert client.request("?").startswith("T")
        regs = client.request("g")
        assert len(regs) > 100 and set(regs) <= set("0123456789abcdefx")
        assert client.request("M1000,1:00") == "E01"      # read-only: no writes
        assert client.request("c") == "E01"               # and no resuming
