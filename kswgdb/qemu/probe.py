"""The accelerator probe: does a write watchpoint really fire under this accelerator?

Asking the stub is not enough: the software KVM on this project's machines
*accepts* ``Z2`` and then never reports a hit. The only proof is a hit: boot the
smallest possible guest (`pvh.watch_loop`, a loop storing an incrementing counter
to one RAM word), arm a 4-byte write watchpoint on that word through the gdbstub,
continue, and wait briefly for a ``watch:`` stop at that address. Anything else —
no stop, a stop for another reason (T06 on a KVM internal error), QEMU dying, a
refused ``Z2`` — counts as "does not fire".

This is the one place the machine layer talks to the gdbstub client (imported
lazily); the rest of ``kswgdb.qemu`` only hands out the socket path.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from kswgdb.errors import InfraError
from kswgdb.qemu import pvh
from kswgdb.qemu.accel import AccelDecision, AccelName, ProbeResult
from kswgdb.qemu.machine import Machine

#: Long enough for a slow (emulated) KVM to execute a store loop many times over.
PROBE_TIMEOUT = 5.0


def probe_watchpoint(
    accel: AccelName,
    *,
    qemu_binary: str | None = None,
    timeout: float = PROBE_TIMEOUT,
    machine: str = "pc",
    bios: str | None = "qboot",
) -> ProbeResult:
    """Boot the store loop under ``accel`` and report whether the watchpoint fired."""
    from kswgdb.gdbstub.client import RemoteClient
    from kswgdb.gdbstub.errors import StubClosed, StubTimeout

    prog = pvh.watch_loop()
    addr = prog.watch_addr
    assert addr is not None
    decision = AccelDecision(accel, "accelerator probe", "requested")
    start = time.monotonic()

    def result(fired: bool, detail: str) -> ProbeResult:
        return ProbeResult(fired, detail, time.monotonic() - start)

    with tempfile.TemporaryDirectory(prefix="kswgdb-probe-") as tmp:
        image = prog.image(Path(tmp) / "watch-probe.elf", name="accel-probe",
                           machine=machine, bios=bios, memory="32M", cpus=1)
        try:
            chosen = {"qemu_binary": qemu_binary} if qemu_binary else {}
            with Machine(image, accel=decision, paused=True, timeout=timeout, **chosen) as m:
                with RemoteClient.connect(str(m.gdb_socket), timeout) as client:
                    client.handshake()
                    client.insert_watchpoint(addr, 4, "write")
                    client.cont()
                    try:
                        stop = client.wait_stop(timeout)
                    except StubTimeout:
                        return result(False, f"no stop within {timeout:g}s"
                                      + _stores_seen(client, addr, timeout))
                    except StubClosed:
                        gone = m.wait_exit(2.0)
                        return result(False, f"QEMU ended before a stop: {gone}")
                if stop.watch_addr == addr:
                    return result(True, f"stopped at watch:{addr:#x} under {accel}")
                return result(False, f"stopped for another reason: {stop}")
        except InfraError as exc:
            return result(False, f"probe failed under {accel}: {exc}")


def _stores_seen(client: object, addr: int, timeout: float) -> str:
    """After a silent timeout: stop the guest and read the counter, to show it did run."""
    from kswgdb.gdbstub.client import RemoteClient

    assert isinstance(client, RemoteClient)
    try:
        client.halt(timeout)
        count = int.from_bytes(client.read_memory(addr, 4), "little")
    except InfraError:
        return ""
    return f", although the guest stored to the word {count} times"
