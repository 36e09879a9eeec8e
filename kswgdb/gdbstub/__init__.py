"""The GDB remote-protocol layer: the wire between kswgdb and QEMU's gdbstub.

It knows nothing about watching. One module per job, imports going one way::

    packet      bytes <-> packets (pure): checksum, framing, escapes, RLE, parser
    transport   a socket speaking packets: acks (lazy for QEMU), reassembly, deadlines
    requests    request payloads and reply checks (pure), for pipelined batches
    registers   the register layout from target.xml; g-reply decoding
    stopreply   stop replies (T/S/W/X/O) as data
    client      RemoteClient: the protocol rules, pipelining, QEMU extensions
    server      the server side (Listener, StubServer), for the relay and the fake
    attach      connecting to a stub someone else's QEMU serves, busy-stub checks
    relay       read-only relay lending a stopped guest to gdb; backtraces
    mi          a token-matched gdb/MI driver on pygdbmi
    fake        a scripted fake QEMU stub for tests of this layer and above
    errors      StubError and its subclasses
"""

from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import ErrorReply, StubClosed, StubError, StubTimeout, Unsupported
from kswgdb.gdbstub.stopreply import StopReply

__all__ = [
    "ErrorReply",
    "RemoteClient",
    "StopReply",
    "StubClosed",
    "StubError",
    "StubTimeout",
    "Unsupported",
]
