"""Shared helpers for the gdbstub unit tests: recorded QEMU data and a fake stub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.fake import FakeStub
from kswgdb.gdbstub.transport import Transport

DATA = Path(__file__).parent / "data"


def xml_files() -> dict[str, str]:
    """target.xml and i386-64bit.xml as QEMU 7.2 serves them (recorded)."""
    return {
        "target.xml": (DATA / "qemu72-target.xml").read_text(),
        "i386-64bit.xml": (DATA / "qemu72-i386-64bit.xml").read_text(),
    }


def recorded_g() -> dict:
    """A recorded g reply with the p reply of every register, from the same stop."""
    return json.loads((DATA / "qemu72-g-reply.json").read_text())


@contextmanager
def connected(
    fake: FakeStub, *, ack_mode: str = "lazy", handshake: bool = True, timeout: float = 5.0
) -> Iterator[RemoteClient]:
    """A RemoteClient talking to `fake` over a socket pair; both ends torn down after."""
    sock, thread = fake.start()
    client = RemoteClient(Transport(sock, ack_mode=ack_mode, trace=True), timeout=timeout)
    try:
        if handshake:
            client.handshake()
        yield client
    finally:
        client.close()
        thread.join(timeout)
