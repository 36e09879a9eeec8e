"""The gdbstub socket of a Machine, used by the real remote client on the test kernel.

Starting paused (-S) matters: a watchpoint armed before the first guest
instruction catches even the boot code's own write of the stack-protector guard
(early_init, before kmain prints anything).
"""

from __future__ import annotations

import pytest
from elftools.elf.elffile import ELFFile

from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import StubClosed
from kswgdb.image import Image
from kswgdb.qemu.exitstatus import debug_exit_status
from tests.integration.helpers import MachineFactory

pytestmark = pytest.mark.integration


def _symbol(image: Image, name: str) -> int:
    with open(image.symbols, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        (sym,) = symtab.get_symbol_by_name(name)
        return int(sym["st_value"])


def test_watchpoint_armed_before_boot_catches_the_guard_write(
        machine: MachineFactory, kswtest_image: Image) -> None:
    guard = _symbol(kswtest_image, "__stack_chk_guard")
    m = machine(scenario=6)
    with RemoteClient.connect(str(m.gdb_socket), 10) as client:
        client.handshake()
        assert m.qmp.status() == "prelaunch"                # not one instruction ran
        client.insert_watchpoint(guard, 8, "write")
        client.cont()
        stop = client.wait_stop(30)
        assert stop.watch_addr == guard                     # early_init sets the guard
        # boot.S prints "KSWTEST boot" first; the guard is set before any C output
        assert set(m.console.lines()) <= {"KSWTEST boot"}
        client.remove_watchpoint(guard, 8, "write")
        client.cont()
        assert m.qemu is not None
        if m.qemu.quirks.debug_exit_via_shutdown:           # QEMU >= 9.1: W, then close
            end = client.wait_stop(60)
            assert (end.kind, end.exit_status) == ("W", debug_exit_status(0x16))
        else:
            with pytest.raises(StubClosed):                 # isa-debug-exit closes the stub
                client.wait_stop(60)
    gone = m.wait_exit(30)
    assert (gone.kind, gone.code) == ("debug-exit", 0x16)
    assert m.console.lines()[-1].startswith("KSWTEST verdict scenario=6 name=clean result=")
