"""The sync QMP wrapper against a scripted fake QEMU on a socketpair."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kswgdb.qemu.errors import MachineTimeout
from kswgdb.qemu.qmp import Qmp, QmpCommandError

GREETING = {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7},
                                "package": ""}, "capabilities": ["oob"]}}


class FakeQemu(threading.Thread):
    """Answers QMP commands with `handler(cmd, args) -> reply dict | None (hang up)`."""

    def __init__(self, sock: socket.socket,
                 handler: Callable[[str, dict[str, Any]], dict[str, Any] | None]) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.handler = handler
        self.received: list[dict[str, Any]] = []
        self.fds: list[int] = []

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\r\n")

    def run(self) -> None:
        self.send(GREETING)
        decoder = json.JSONDecoder()
        buf = ""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 4)
            except OSError:
                return
            self.fds += fds
            if not data:
                return
            buf += data.decode()
            while buf.strip():
                # QMP messages are concatenated JSON objects, not necessarily lines
                try:
                    msg, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                self.received.append(msg)
                cmd = msg.get("execute")
                if cmd == "qmp_capabilities":
                    reply: dict[str, Any] | None = {"return": {}}
                else:
                    reply = self.handler(cmd, msg.get("arguments", {}))
                if reply is None:
                    self.sock.close()
                    return
                if "id" in msg:
                    reply["id"] = msg["id"]
                try:
                    self.send(reply)
                except OSError:         # the client hung up first (e.g. a given-up wait)
                    return


def _event(name: str, **data: Any) -> dict[str, Any]:
    return {"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 2}}


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[Qmp, FakeQemu]]]:
    made: list[Qmp] = []

    def factory(handler: Callable[[str, dict[str, Any]], dict[str, Any] | None]
                ) -> tuple[Qmp, FakeQemu]:
        ours, theirs = socket.socketpair()
        fake = FakeQemu(theirs, handler)
        fake.start()
        q = Qmp(ours, timeout=2.0, argv=["qemu-x"])
        made.append(q)
        return q, fake

    yield factory
    for q in made:
        q.close()


def test_status_stop_cont(make: Callable[..., tuple[Qmp, FakeQemu]]) -> None:
    state = {"status": "prelaunch"}

    def handler(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "query-status":
            return {"return": {"status": state["status"], "running": False}}
        state["status"] = {"stop": "paused", "cont": "running"}[cmd]
        return {"return": {}}

    q, _ = make(handler)
    assert q.status() == "prelaunch"
    q.cont()
    assert q.status() == "running"
    q.stop()
    assert q.status() == "paused"
    assert q.connected


def test_error_reply_keeps_command(make: Callable[..., tuple[Qmp, FakeQemu]]) -> None:
    q, _ = make(lambda c, a: {"error": {"class": "GenericError", "desc": "nope"}})
    with pytest.raises(QmpCommandError, match="nope") as info:
        q.execute("system_reset")
    assert info.value.command == "system_reset"
    assert info.value.argv == ["qemu-x"]


def test_events_and_shutdown_reason(make: Callable[..., tuple[Qmp, FakeQemu]]) -> None:
    fake_ref: list[FakeQemu] = []

    def handler(cmd: str, args: dict[str, Any]) -> dict[str, Any] | None:
        fake = fake_ref[0]
        if cmd == "cont":
            fake.send(_event("RESUME"))
            for _ in range(3000):                # many stops must not pile up anywhere
                fake.send(_event("STOP"))
            fake.send(_event("RESET", guest=True, reason="guest-reset"))
            fake.send(_event("SHUTDOWN", guest=True, reason="guest-reset"))
            return {"return": {}}
        return None                              # anything else: QEMU "exits"

    q, fake = make(handler)
    fake_ref.append(fake)
    mark = q.mark()
    q.cont()
    ev = q.wait_event("SHUTDOWN", 60, since=mark)   # generous: a loaded CI machine
    assert ev["data"] == {"guest": True, "reason": "guest-reset"}
    assert q.count("STOP") == 3000
    assert len(q.events()) <= 1024               # bounded history
    assert q.shutdown_event()["data"]["reason"] == "guest-reset"   # type: ignore[index]
    assert [e["event"] for e in q.events(["RESET"])] == ["RESET"]
    q.quit()                                      # peer hangs up instead of replying: fine
    assert q.wait_disconnected(30)
    assert not q.connected


def test_wait_event_timeout(make: Callable[..., tuple[Qmp, FakeQemu]]) -> None:
    q, _ = make(lambda c, a: {"return": {}})
    with pytest.raises(MachineTimeout):
        q.wait_event("SHUTDOWN", 0.05)


def test_dump_guest_memory_passes_an_fd_0600(make: Callable[..., tuple[Qmp, FakeQemu]],
                                             tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def handler(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        seen[cmd] = args
        return {"return": {}}

    q, fake = make(handler)
    out = q.dump_guest_memory(tmp_path / "core.elf")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    name = seen["getfd"]["fdname"]
    assert seen["dump-guest-memory"] == {"paging": False, "protocol": f"fd:{name}"}
    assert len(fake.fds) == 1
    os.write(fake.fds[0], b"ELF")                # the fd QEMU got is our file
    os.close(fake.fds[0])
    assert out.read_bytes() == b"ELF"


def test_close_is_idempotent(make: Callable[..., tuple[Qmp, FakeQemu]]) -> None:
    q, _ = make(lambda c, a: {"return": {}})
    q.close()
    q.close()
    with pytest.raises(QmpCommandError):
        q.status()


def test_a_command_caught_by_qemus_shutdown_is_not_awaited_for_its_whole_timeout(
        make: Callable[..., tuple[Qmp, FakeQemu]]) -> None:
    """QEMU (10.0) can leave a command in flight unanswered for ever when the guest's
    end lands during it (`kswgdb.qemu.exitnudge`): once SHUTDOWN came, the reply is
    given up after a grace, and the error says why."""
    fake_ref: list[FakeQemu] = []
    release = threading.Event()

    def handler(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        fake_ref[0].send(_event("SHUTDOWN", guest=True, reason="guest-shutdown"))
        release.wait(60)                         # the reply that never comes in time
        return {"return": ""}

    q, fake = make(handler)
    fake_ref.append(fake)
    try:
        with pytest.raises(QmpCommandError, match="no reply, QEMU is shutting down"):
            q.execute("human-monitor-command", {"command-line": "xp /1gx 0"}, timeout=60)
    finally:
        release.set()
