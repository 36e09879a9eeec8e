"""No silent nothing: never-armed watches are named with their reason, and exit 4.

The engine's summary rows come from a real `Engine` run on the fake target, so
"never called" means a probe that no event reached, not a hand-written zero.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kswgdb import commands
from kswgdb.cli import main
from kswgdb.qemu import reaper
from kswgdb.qemu.accel import AccelDecision
from kswgdb.symbols.slide import KernelSlide
from kswgdb.watch.engine import Engine, EngineResult
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.slots import SlotPool
from kswgdb.watch.spec import ArmSpec
from kswgdb.watch.unarmed import PendingModule, run_warnings, unarmed_warnings, why_unarmed
from tests.unit.fake_target import FakeTarget
from tests.unit.fake_target import Program as Script


class _Sym:
    def symbol(self, addr: int) -> str:
        return f"{addr:#x}"

    def function(self, addr: int) -> None:
        return None

    def source(self, addr: int) -> None:
        return None

    def writer(self, pc, regs):
        return pc, "mov", ()

    def stack_push(self, pc: int) -> bool:
        return False


def _spec(text: str, probe: int, depth: int = 0) -> ArmSpec:
    return ArmSpec(text=text, func=text.split()[0][3:], func_addr=probe - 4, func_size=0x40,
                   probe_addr=probe, cfa_offset=Script.CFA_FROM_SP, mode="offset", base="rbp",
                   offset=-8, depth=depth)


def _summary(slots: int = 4) -> list[dict]:
    """called (armed), never called, called only at depth 0 while watching depth 1."""
    fake = FakeTarget()
    called = Script(fake, probe=0x1004, ret_site=0x9000)
    frame = called.call(task=0x5000, sp=0x8000)
    called.ret(0x5000, frame)
    shallow = Script(fake, probe=0x3004, ret_site=0x9100)
    frame = shallow.call(task=0x5000, sp=0x8000)
    shallow.ret(0x5000, frame)
    specs = [_spec("fn=called fo=0x4", 0x1004), _spec("fn=never fo=0x4", 0x2004),
             _spec("fn=shallow fo=0x4 depth=1", 0x3004, depth=1)]
    engine = Engine(fake, specs, GuestLayout(), _Sym(), SlotPool(slots))
    engine.install()
    assert engine.run().reason == "exit"
    return engine.summary()


def test_each_never_armed_watch_gets_one_line_with_its_reason() -> None:
    lines = unarmed_warnings(_summary())
    assert lines == [
        "watch 'fn=never fo=0x4' was never armed: never was never called",
        "watch 'fn=shallow fo=0x4 depth=1' was never armed: shallow never reached the "
        "watch's depth (1 call(s) at other depths)",
    ]


def test_no_slot_and_timeout_and_modules_are_named() -> None:
    rows = _summary(slots=0)
    assert why_unarmed(rows[0]) == ("none of the 1 call(s) of called could be armed: "
                                    "1 no free watch slot (raise --slots)")
    lines = unarmed_warnings(rows, ended_by_timeout=30, pending=[PendingModule("fn=x", "lkdtm")])
    assert "never was never called before --timeout 30s ended the run" in lines[1]
    assert lines[-1] == ("watch 'fn=x' was never armed: module lkdtm was never loaded "
                         "before --timeout 30s ended the run")


def test_a_kernel_never_located_leaves_every_watch_unarmed_with_that_reason() -> None:
    placement = SimpleNamespace(unarmed_reason=lambda: "the symbols do not match")
    lines = run_warnings(_summary(), [], placement, EngineResult("mismatch"), 120)
    assert len(lines) == 2 and all(ln.endswith(": the symbols do not match") for ln in lines)


def _report(hits: int = 0, unarmed: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(
        summary=[], polls=[], result=EngineResult("exit"), guest_exit=None, seconds=1.0,
        packets=0, steps=0, accel=AccelDecision("tcg", "test", "probe"), backtrace="fp",
        verdict=None, vmcore=None, poll_vmcores=[], hits=[object()] * hits,
        hit_count=hits, poll_hits=[], console_log=["KSWTEST boot"],
        fault=None, unarmed=list(unarmed), symbols=None, pool="",
        slide=KernelSlide(0x3000_0000, None, "first kernel-map write"))


@pytest.mark.parametrize(("hits", "unarmed", "allow", "status"), [
    (0, ("watch 'fn=f' was never armed: f was never called",), False, 4),
    (0, ("watch 'fn=f' was never armed: f was never called",), True, 0),
    (1, ("watch 'fn=f' was never armed: f was never called",), False, 1),
    (0, (), False, 0),
])
def test_exit_status_4_unless_allowed(monkeypatch, capsys, hits, unarmed, allow, status) -> None:
    class Session:
        def __init__(self, options, **_kw) -> None:
            self.resolved = []

        def prepare(self) -> None:
            pass

        def run(self):
            return _report(hits, unarmed)

    monkeypatch.setattr(commands, "WatchSession", Session)
    monkeypatch.setattr(reaper, "_signalled", None)     # another test's signal, not ours
    argv = ["run", "--watch", "fn=f", "--log", "/dev/null"] + (["--allow-unarmed"] if allow else [])
    assert main(argv) == status
    captured = capsys.readouterr()
    for line in unarmed:
        assert f"kswgdb: warning: {line}" in captured.err
    assert "kaslr slide +0x30000000" in " ".join(captured.out.split())
    # Nothing caught, or a watch never armed: the guest's last console lines are shown.
    shown = "  | KSWTEST boot" in captured.err.splitlines()
    assert shown == (hits == 0 or bool(unarmed))


def test_timeout_default_is_in_the_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 120)" in out and "--allow-unarmed" in out


def test_a_live_session_does_not_count_the_watches_the_user_removed() -> None:
    from kswgdb.watch.unarmed import live_warnings

    rows = [{"config": c, "func": f, "calls": 0, "armed": 0, "skipped_depth": 0}
            for c, f in (("fn=a fo=1", "a"), ("fn=b fo=2", "b"))]
    assert live_warnings(rows, removed={0}) == [
        "watch 'fn=b fo=2' was never armed: b was never called"]
    assert live_warnings(rows, removed={0, 1}) == []
