"""The engine against a fake guest: arming, disarming, depth, pool, hits."""

from __future__ import annotations

import dataclasses
import json

from kswgdb.watch.engine import Engine
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hits import EventLog, SourceLine
from kswgdb.watch.slots import SlotPool
from kswgdb.watch.spec import ArmSpec, GuardSource
from kswgdb.watch.target import Registers
from tests.unit.fake_target import GUARD, GUARD_ADDR, Event, FakeTarget, Program

PROBE = 0x40_1010
RET_SITE = 0x40_2222
WRITER_PC = 0x40_3007
PROBE_B = 0x40_5010

LAYOUT = GuestLayout(flavour="fake", current_gs_offset=0)


class FakeSymbols:
    def symbol(self, addr: int) -> str:
        return f"fn+{addr & 0xff:#x}/0x100"

    def function(self, addr: int) -> str | None:
        return "corrupter" if addr >> 12 == 0x403 else "victim"

    def source(self, addr: int) -> SourceLine | None:
        return SourceLine("guest/x.c", addr & 0xff)

    def writer(self, pc: int, regs: Registers):
        return pc - 3, "mov qword ptr [rax], rdx", ((pc - 3, "mov qword ptr [rax], rdx"),)


def canary_spec(depth: int = 0, max_watch: int = 0, text: str = "fn=victim fo=0x10") -> ArmSpec:
    return ArmSpec(
        text=text, func="victim", func_addr=0x40_1000, func_size=0x100, probe_addr=PROBE,
        cfa_offset=Program.CFA_FROM_SP, mode="canary", base="rbp", offset=-8, length=8,
        what="canary of victim", depth=depth, max_watch=max_watch,
        guard=GuardSource("global", addr=GUARD_ADDR),
    )


def make(specs, fake, pool=None, log=None, exit_hook=None):
    engine = Engine(fake, specs, LAYOUT, FakeSymbols(), pool or SlotPool(capacity=64),
                    log=log, exit_hook_addr=exit_hook)
    engine.install()
    return engine


def test_corrupting_write_into_live_frame_is_a_hit_naming_the_writer():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00,
               cpu=1)
    prog.ret(task=0xA000, frame=f)
    engine = make([canary_spec()], fake)
    result = engine.run()
    assert result.reason == "exit"
    assert len(result.hits) == 1
    hit = result.hits[0]
    assert hit.addr == f["canary"]
    assert hit.writer.insn_addr == WRITER_PC - 3
    assert hit.writer.function == "corrupter"
    assert hit.owner.task == 0xA000 and hit.writer_task.task == 0xB000
    assert bytes.fromhex(hit.old) != bytes.fromhex(hit.new) == b"\x41" * 8
    assert hit.cpu == 1
    stats = engine.stats[0]
    assert (stats.calls, stats.armed, stats.returns, stats.hits) == (1, 1, 1, 1)
    assert fake.watchpoints == set()          # disarmed at return
    assert fake.breakpoints == {PROBE}        # return breakpoint given back


class StoreSymbols(FakeSymbols):
    """A symbolizer that can say whether a store explains a stop (the real ones can)."""

    def is_store(self, pc: int) -> bool:
        return pc == WRITER_PC


def test_foreign_write_of_the_same_value_is_a_hit_marked_unchanged():
    """A hardware watchpoint fires on a store of the value already there; a foreign write
    into a live frame is the bug whatever it wrote. A report with no store behind it is
    dropped, and both are counted in the summary."""
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=GUARD, pc=WRITER_PC, sp=0x9000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=GUARD, pc=WRITER_PC + 0x40, sp=0x9000_3f00)
    prog.ret(task=0xA000, frame=f)
    engine = Engine(fake, [canary_spec()], LAYOUT, StoreSymbols(), SlotPool(capacity=64))
    engine.install()
    hits = engine.run().hits
    assert len(hits) == 1 and hits[0].unchanged and hits[0].old == hits[0].new
    row = engine.summary()[0]
    assert (row["hits"], row["unchanged_hits"], row["filtered_reports"]) == (1, 1, 1)
    event = hits[0].to_json()
    assert event["unchanged"] is True
    assert event["new"] == f"{int.from_bytes(GUARD, 'little'):#018x}"   # as the panel shows it
    assert event["new_bytes"] == GUARD.hex()


class MissingStoreSymbols(StoreSymbols):
    """The store at ``WRITER_PC`` provably wrote elsewhere (its address from registers)."""

    def store_misses(self, pc: int, regs: Registers, addr: int, length: int) -> bool:
        return pc == WRITER_PC


def test_same_value_report_whose_store_went_elsewhere_is_dropped_and_counted():
    """QEMU 7.2 reported `vfs_getattr_nosec`'s ``mov [rsi+4], 0`` against `vfs_statx`'s
    canary (value unchanged, 46 of 48 calls): a store that provably missed the slot
    is a stub report, not a write."""
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xA000, addr=f["canary"], value=GUARD, pc=WRITER_PC, sp=0x8000_3e00)
    prog.ret(task=0xA000, frame=f)
    engine = Engine(fake, [canary_spec()], LAYOUT, MissingStoreSymbols(), SlotPool(capacity=64))
    engine.install()
    assert engine.run().hits == []
    row = engine.summary()[0]
    assert (row["hits"], row["filtered_reports"]) == (0, 1)


def test_write_after_return_is_not_a_hit():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.ret(task=0xA000, frame=f)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00)
    engine = make([canary_spec()], fake)
    assert engine.run().hits == []


def test_recursion_arms_only_the_configured_depth_and_matches_returns_by_sp():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    frames = [prog.call(task=0xA000, sp=0x8000_3f00 - 0x100 * d) for d in range(6)]
    for d in reversed(range(6)):
        prog.store(task=0xA000, addr=frames[d]["canary"], value=bytes([d]) * 8, pc=WRITER_PC,
                   sp=frames[d]["sp"])
        prog.ret(task=0xA000, frame=frames[d])
    engine = make([canary_spec(depth=3)], fake)
    hits = engine.run().hits
    assert [h.depth for h in hits] == [3]
    assert hits[0].addr == frames[3]["canary"]
    stats = engine.stats[0]
    assert (stats.calls, stats.armed, stats.skipped_depth, stats.returns) == (6, 1, 5, 6)
    assert fake.watchpoints == set() and fake.breakpoints == {PROBE}


def test_probe_in_a_loop_does_not_rearm_the_same_frame():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.call(task=0xA000, sp=0x8000_3f00)
    prog.call(task=0xA000, sp=0x8000_3f00)
    prog.ret(task=0xA000, frame=f)
    engine = make([canary_spec()], fake)
    engine.run()
    stats = engine.stats[0]
    assert (stats.calls, stats.reentries, stats.armed, stats.returns) == (1, 2, 1, 1)
    assert fake.max_watchpoints_seen == 1


def test_return_of_another_task_through_the_same_site_does_not_disarm():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    fa = prog.call(task=0xA000, sp=0x8000_3f00, cpu=0)
    fb = prog.call(task=0xB000, sp=0x9000_3f00, cpu=1)
    prog.ret(task=0xB000, frame=fb, cpu=1)
    prog.store(task=0xC000, addr=fa["canary"], value=b"\x00" * 8, pc=WRITER_PC, sp=0x7000_3f00)
    prog.ret(task=0xA000, frame=fa, cpu=1)      # migrated to the other CPU meanwhile
    engine = make([canary_spec()], fake)
    hits = engine.run().hits
    assert len(hits) == 1 and hits[0].owner.task == 0xA000
    assert engine.stats[0].returns == 2 and fake.watchpoints == set()


def test_pool_exhaustion_is_counted_and_calls_add_up():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    frames = [prog.call(task=0x1000 * (t + 1), sp=0x8000_3f00 + 0x10000 * t) for t in range(6)]
    for t, f in enumerate(frames):
        prog.ret(task=0x1000 * (t + 1), frame=f)
    pool = SlotPool.for_run("kvm")
    engine = make([canary_spec()], fake, pool=pool)
    engine.run()
    stats = engine.stats[0]
    assert stats.armed == 4 and stats.refused_pool == 2
    assert stats.calls == stats.armed + stats.not_armed == 6
    assert fake.max_watchpoints_seen == 4 and pool.in_use == 0


def test_the_pool_comes_from_the_accelerator_alone():
    assert SlotPool.for_run("tcg", tcg_slots=7).capacity == 7
    assert SlotPool.for_run("kvm").capacity == 4


def test_each_config_has_its_own_mw_and_the_pool_is_shared():
    """fn=a mw=1 next to fn=b (no mw): b is never limited by a's mw (issue 15)."""
    fake = FakeTarget()
    prog_a = Program(fake, PROBE, RET_SITE)
    prog_b = Program(fake, PROBE_B, RET_SITE)
    frames = []
    for t in range(3):          # three tasks inside both functions at once
        task = 0x1000 * (t + 1)
        frames.append((task, prog_a.call(task=task, sp=0x8000_3f00 + 0x10000 * t),
                       prog_b.call(task=task, sp=0x8000_3e00 + 0x10000 * t)))
    for task, fa, fb in frames:
        prog_b.ret(task=task, frame=fb)
        prog_a.ret(task=task, frame=fa)
    pool = SlotPool(capacity=64)
    spec_b = dataclasses.replace(canary_spec(max_watch=2, text="fn=b fo=0x10 mw=2"),
                                 probe_addr=PROBE_B)
    engine = make([canary_spec(max_watch=1), spec_b], fake, pool=pool)
    engine.run()
    a, b = engine.stats
    assert (a.armed, a.refused_max_watch, a.live_high) == (1, 2, 1)
    assert (b.armed, b.refused_max_watch, b.live_high) == (2, 1, 2)
    assert a.refused_pool == b.refused_pool == 0 and pool.high_water == 3 and pool.in_use == 0
    rows = engine.summary()
    assert [r["max_watch"] for r in rows] == [1, 2]
    assert [r["refused_max_watch"] for r in rows] == [2, 1]


def test_canary_not_at_prologue_slot_falls_back_to_scan():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00, canary=b"\x11" * 8)
    real_slot = f["sp"] + 0x10
    fake.write(real_slot, fake.read(GUARD_ADDR, 8))
    prog.store(task=0xB000, addr=real_slot, value=b"\x42" * 8, pc=WRITER_PC, sp=0x9000_3f00)
    prog.ret(task=0xA000, frame=f)
    engine = make([canary_spec()], fake)
    hits = engine.run().hits
    assert engine.stats[0].found_by_scan == 1
    assert [h.addr for h in hits] == [real_slot]


def test_no_canary_anywhere_is_refused_and_counted():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00, canary=b"\x11" * 8)
    prog.ret(task=0xA000, frame=f)
    engine = make([canary_spec()], fake)
    engine.run()
    assert engine.stats[0].refused_check == 1 and engine.stats[0].armed == 0


def test_task_exit_hook_drops_frames_of_the_dying_task():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    exit_hook = 0x40_9000
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    fake.script.append(
        Event("probe", task=0xA000, regs={"rsp": 0x8000_3e00, "rbp": 0}, pc=exit_hook))
    prog.store(task=0xD000, addr=f["canary"], value=b"\x01" * 8, pc=WRITER_PC, sp=0x8000_3f00)
    engine = make([canary_spec()], fake, exit_hook=exit_hook)
    assert engine.run().hits == []
    assert engine.stats[0].stale == 1 and fake.watchpoints == set()


def test_hit_is_in_the_event_log_before_the_callback_runs(tmp_path):
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00)
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    seen = []

    def on_hit(hit):
        lines = path.read_text().splitlines()
        seen.append(json.loads(lines[-1]))

    engine = Engine(fake, [canary_spec()], LAYOUT, FakeSymbols(), SlotPool(64), log=log,
                    on_hit=on_hit)
    engine.install()
    engine.run()
    assert seen and seen[0]["event"] == "hit" and seen[0]["addr"] == hex(f["canary"])
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_panic_hit_freezes():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00)
    prog.ret(task=0xA000, frame=f)
    spec = canary_spec()
    spec = type(spec)(**{**spec.__dict__, "panic": True})
    engine = make([spec], fake)
    result = engine.run()
    assert result.reason == "freeze" and len(result.hits) == 1
