"""Fakes for wiring a `Rig` without QEMU: machine, stub client, polls, unwinder.

Each records whether it was released, so a test can check that every resource
of a rig is let go on each way a run ends. The guest itself is
`tests.unit.fake_target.FakeTarget` (scripted stops).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from kswgdb.qemu.accel import AccelDecision
from kswgdb.qemu.exitnudge import ExitNudge
from kswgdb.qemu.exitstatus import GuestExit
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import Plan
from kswgdb.watch.spec import ArmSpec
from tests.unit.fake_target import FakeTarget
from tests.unit.test_engine import LAYOUT, FakeSymbols

DEBUG_EXIT = GuestExit("debug-exit", status=39, code=0x13, reason="isa-debug-exit")


class FakeConsole:
    def __init__(self) -> None:
        self.text = ["KSWTEST boot", "KSWTEST verdict scenario=3 result=corrupted"]

    def mark(self) -> int:
        return len(self.text)

    def lines(self) -> list[str]:
        return list(self.text)

    def follow(self, listener) -> None:
        for line in self.text:
            listener(line)


class FakeQmp:
    connected = True

    def __init__(self) -> None:
        self.dumps: list[Path] = []

    def dump_guest_memory(self, path: Path) -> None:
        path.write_bytes(b"ELF")
        self.dumps.append(path)


class FakeMachine:
    """What a rig asks of `kswgdb.qemu.machine.Machine`."""

    def __init__(self, image, *, exit: GuestExit = DEBUG_EXIT, **kwargs) -> None:
        self.image = image
        self.kwargs = kwargs
        self.exit = exit
        self.console = FakeConsole()
        self.qmp = FakeQmp()
        self.gdb_socket = Path("/nonexistent/gdb.sock")
        self.ram_path = None
        self.qemu_log_path: Path | None = None      # QEMU said nothing
        self.stderr_tail: list[str] = []
        self.launched = self.closed = self.running = False
        self.shutting_down = False
        self.exit_nudge = ExitNudge()

    def launch(self) -> None:
        self.launched = self.running = True

    def resume(self) -> None:
        pass

    def qemu_log_tail(self) -> list[str]:
        return list(self.stderr_tail)

    def wait_exit(self, timeout: float) -> GuestExit:
        return self.exit

    def close(self) -> None:
        self.closed, self.running = True, False


class FakeClient:
    """The stub client: a rig connects, hands it to its target, interrupts, closes."""

    def __init__(self) -> None:
        self.transport = SimpleNamespace(closed=False)
        self.running = False
        self.interrupts = 0
        self.closed = False

    def handshake(self) -> None:
        pass

    def interrupt(self) -> None:
        self.interrupts += 1

    def close(self) -> None:
        self.closed = self.transport.closed = True


class RigTarget(FakeTarget):
    """A `FakeTarget` with the counters a rig reads, and an ending to raise."""

    def __init__(self, raises: BaseException | None = None) -> None:
        super().__init__()
        self.packets_sent = self.steps = self.emulated = 0
        self.refusals: dict[str, int] = {}
        self.raises = raises

    def wait_stop(self, timeout):
        if not self.script and self.raises is not None:
            raise self.raises
        return super().wait_stop(timeout)


class FakeUnwinder:
    """Stands in for `GdbUnwinder` (no gdb): None means the frame-pointer walk."""

    made: list[FakeUnwinder] = []

    def __init__(self, *args, **kwargs) -> None:
        self.closed = False
        self.gdb_pid = None
        self.failures: list[str] = []
        self.seconds: list[float] = []
        FakeUnwinder.made.append(self)

    def __call__(self, stop, regs):
        return None

    def close(self) -> None:
        self.closed = True


class FakePoller:
    def __init__(self) -> None:
        self.hits: list = []
        self.failure = None
        self.stopped = False

    def polls(self) -> list:
        return []

    def stop(self) -> None:
        self.stopped = True


class FakePhys:
    """What a rig asks of `kswgdb.poll.physrun.PhysWatch` (no RAM file, no HMP)."""

    def __init__(self, machine, program, specs, **kwargs) -> None:
        self.poller = FakePoller()
        self.freeze = threading.Event()
        self.vmcores: list[Path] = []
        self.closed = False

    def start(self) -> list[int]:
        return []

    def describe(self) -> list[str]:
        return []

    def stop(self) -> None:
        self.poller.stop()

    def close(self) -> None:
        self.poller.stop()
        self.closed = True


@dataclass
class Wiring:
    """One rig's fakes, made by its factories, for the assertions afterwards."""

    target: RigTarget
    machines: list[FakeMachine] = field(default_factory=list)
    clients: list[FakeClient] = field(default_factory=list)
    phys: list[FakePhys] = field(default_factory=list)

    def rig_options(self) -> dict:
        return {"machine_factory": self._machine, "connect": self._connect,
                "target_factory": lambda client: self.target,
                "phys_factory": self._phys, "symbolizer": FakeSymbols()}

    def _machine(self, image, **kwargs) -> FakeMachine:
        self.machines.append(FakeMachine(image, **kwargs))
        return self.machines[-1]

    def _connect(self, path, timeout) -> FakeClient:
        self.clients.append(FakeClient())
        return self.clients[-1]

    def _phys(self, *args, **kwargs) -> FakePhys:
        self.phys.append(FakePhys(*args, **kwargs))
        return self.phys[-1]

    def all_released(self) -> bool:
        return (all(m.closed for m in self.machines) and all(c.closed for c in self.clients)
                and all(p.closed for p in self.phys)
                and all(u.closed for u in FakeUnwinder.made))


def fake_plan(tmp_path: Path, specs: list[ArmSpec], **options) -> Plan:
    """A checked plan for the fake guest (what `prepare` gives for a real image)."""
    image = SimpleNamespace(name="fake", path=tmp_path / "fake.toml",
                            symbols=tmp_path / "fake.elf", guest="kswtest", modules_dir=None)
    opts = RunOptions(**{"log_path": tmp_path / "events.jsonl", "timeout": 30.0, **options})
    return Plan(options=opts, image=image, program=None, layout=LAYOUT,
                accel=AccelDecision("tcg", "test", "requested"),
                backtrace_mode=opts.backtrace if opts.backtrace != "auto" else "fp",
                specs=list(specs))
