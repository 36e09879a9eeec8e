"""Every test-kernel scenario boots, prints its verdict and exits with its own code.

One boot per scenario, no sleeps: the run ends when QEMU exits through
isa-debug-exit, and the verdict line is then already in the console lines.
The ABI (docs/contracts.md): exit code 0x10+N after scenario N, i.e. QEMU status
33+2N; 0x3d (status 123) when no scenario is given; the last line is
``KSWTEST verdict scenario=N name=NAME result=WORD ...``; names come from
images/kswtest.toml ``[scenarios.N]``.
"""

from __future__ import annotations

import re

import pytest

from kswgdb.image import Image
from kswgdb.image import load as load_image
from tests.integration.helpers import MachineFactory

pytestmark = pytest.mark.integration

#: Every scenario images/kswtest.toml describes.
SCENARIOS = sorted(int(n) for n in load_image("kswtest").scenarios)
#: Generous for TCG on a busy 2-core machine; a normal scenario takes well under 1 s.
SCENARIO_TIMEOUT = 60.0


@pytest.mark.parametrize("n", SCENARIOS)
def test_scenario_verdict_and_exit(n: int, machine: MachineFactory,
                                   kswtest_image: Image) -> None:
    meta = kswtest_image.scenarios.get(str(n))
    assert meta is not None, f"images/kswtest.toml has no [scenarios.{n}]"
    name = meta["name"]
    m = machine(scenario=n, paused=False)
    if meta.get("ends") == "wedge":
        # It stops every timer and halts: it never exits, and says so first.
        m.wait_for(rf"^KSWTEST wedge scenario={n} name={re.escape(name)} ", SCENARIO_TIMEOUT)
        gone = m.wait_exit(2.0)
        assert gone.kind == "timeout", gone
        return
    gone = m.wait_exit(SCENARIO_TIMEOUT)
    lines = m.console.lines()
    assert gone.kind == "debug-exit", f"{gone}\n" + "\n".join(lines[-20:])
    assert gone.code == 0x10 + n
    assert gone.status == 33 + 2 * n
    assert lines[0] == "KSWTEST boot"
    assert f"KSWTEST start scenario={n} name={name} seed=1" in lines
    verdict = re.compile(rf"^KSWTEST verdict scenario={n} name={re.escape(name)} "
                         r"result=(\S+)( \S+=\S+)*$")
    assert verdict.match(lines[-1]), lines[-1]
    assert not [line for line in lines if line.startswith("KSWTEST panic")]


def test_no_scenario_exits_0x3d(machine: MachineFactory) -> None:
    m = machine(paused=False)
    gone = m.wait_exit(SCENARIO_TIMEOUT)
    assert (gone.kind, gone.code, gone.status) == ("debug-exit", 0x3D, 123)
    assert any(line.startswith("KSWTEST no scenario") for line in m.console.lines())


def test_stopped_guest_times_out_with_last_lines(machine: MachineFactory) -> None:
    """A guest that stops making progress: GuestExit timeout, with the last serial lines.

    The guest is frozen through QMP at its first console line; a scenario takes
    50-100 ms after that, a QMP stop about 1 ms.
    """
    m = machine(scenario=0, paused=True)
    assert m.console.lines() == []             # -S: not one instruction ran
    m.resume()
    m.wait_for(r"^KSWTEST boot$", 30)
    m.qmp.stop()
    gone = m.wait_exit(0.5)
    assert gone.kind == "timeout", gone
    assert gone.lines[0] == "KSWTEST boot"
    assert list(gone.lines) == m.console.tail(20)   # frozen: nothing new since
    assert not [line for line in gone.lines if "verdict" in line]
    m.qmp.cont()                                 # and it can still finish normally
    assert m.wait_exit(SCENARIO_TIMEOUT).code == 0x10
