"""A guest that ends while QMP commands are in flight: QEMU exits with the guest's status.

QEMU 10.0's ``monitor_cleanup`` can wait for ever on a QMP command that the guest's
end caught in flight (`kswgdb.qemu.exitnudge`): the run's verdict is printed, QEMU
never exits, and the plugin engine's runs ended as "the guest hung" (its hang
watchdog reads the guest's clock through QMP). This boots the test kernel's clean
scenario on QEMU 10 alone (no plugin, no gdbstub) while threads read guest memory
through QMP back to back, as the watchdog does, and checks that every run ends the
way the guest ended it. Without the fix about half of such runs never exited
(5 of 10 with four readers, on the loaded 2-core host), so four runs catch a
regression almost always; each takes a second or two.
"""

from __future__ import annotations

import threading

import pytest

from kswgdb.poll.physmem import xp_command
from kswgdb.qemu.fetch import FetchError, fetch
from kswgdb.qemu.machine import Machine
from kswgdb.qemu.qmp import QmpCommandError

pytestmark = [pytest.mark.integration, pytest.mark.one_qemu]

RUNS, READERS = 4, 4
#: Scenario 6's isa-debug-exit status (33 + 2 * scenario).
CLEAN_EXIT = 45


@pytest.fixture(scope="module")
def qemu10():
    try:
        return fetch()
    except FetchError as exc:
        pytest.fail(f"QEMU 10 unavailable: {exc}")


def read_guest_memory_until_the_end(machine: Machine) -> None:
    command, _ = xp_command(0x1000, 8)
    while machine.running:
        try:
            machine.qmp.execute("human-monitor-command", {"command-line": command})
        except QmpCommandError:
            return              # QEMU said SHUTDOWN, or is gone


def test_the_guests_end_during_qmp_reads_is_its_exit_not_a_hang(qemu10):
    for _ in range(RUNS):
        with Machine("kswtest", accel="tcg", scenario=6, paused=False,
                     qemu_binary=str(qemu10.binary), gdb=False) as machine:
            readers = [threading.Thread(target=read_guest_memory_until_the_end,
                                        args=(machine,), daemon=True) for _ in range(READERS)]
            for reader in readers:
                reader.start()
            ended = machine.wait_exit(60)
            for reader in readers:
                reader.join(30)
        assert (ended.kind, ended.status) == ("debug-exit", CLEAN_EXIT), ended
