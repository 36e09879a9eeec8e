"""Physical-memory polls against the booted test kernel (TCG), scenarios 8-10.

The ground truth is the guest's own ``KSWTEST corrupt writer=W addr=A len=8``
line; a poll hit counts only at that address with the value the guest wrote.
Scenario 8's writer is a PCI device (edu) doing DMA: a CPU write watchpoint on
the same bytes (a gdbstub Z2 on the identity-mapped address) must stay silent
while the poll sees the change. Scenario 9's writer is a CPU store: both see it.
"""

from __future__ import annotations

import re

import pytest

from kswgdb import image as image_mod
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.errors import StubClosed, StubError
from kswgdb.poll.config import parse_poll
from kswgdb.poll.physrun import PhysWatch
from kswgdb.qemu.machine import Machine
from kswgdb.run.oneshot import WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.program import Program
from kswgdb.watch.hits import EventLog

CORRUPT = re.compile(r"KSWTEST corrupt writer=(\S+) addr=(0x[0-9a-f]+) task=\S+ len=(\d+)")
EDU_BAR0 = 0xFEA00000
S8_OFFSET = 0x6A8


@pytest.fixture(scope="module")
def img():
    return image_mod.load(None)


@pytest.fixture(scope="module")
def program(img):
    return Program.load(img.symbols)


def truth(lines: list[str]) -> list[tuple[str, int, int]]:
    return [(m.group(1), int(m.group(2), 16), int(m.group(3)))
            for m in map(CORRUPT.search, lines) if m]


def run_with_cpu_watch(img, program, scenario: int, addr: int, poll: str, tmp_path):
    """Boot paused, start the poll, arm a Z2 at the same (identity-mapped) address, run.

    Returns (poll hits, watch stops as (pc, symbol, value after), console lines).
    The boot code's BSS clearing is a CPU store too (0 over 0): it shows up here
    with value 0, which is why the tests look at the value each stop left.
    """
    stops: list[tuple[int, str, int]] = []
    with Machine(img, accel="tcg", scenario=scenario, shared_ram="file", paused=True) as m:
        log = EventLog(tmp_path / "events.jsonl")
        phys = PhysWatch(m, program, [parse_poll(poll)], log=log, engine_attached=True)
        phys.start()
        client = RemoteClient.connect(str(m.gdb_socket), timeout=10.0)
        try:
            client.handshake()
            client.insert_watchpoint(addr, 8, "write")
            client.cont()
            while True:
                try:
                    stop = client.wait_stop(60.0)
                except (StubClosed, StubError):
                    break                     # isa-debug-exit: the connection just closes
                if stop.exited:
                    break
                if stop.is_watchpoint:
                    pc = client.read_registers(names=["rip"])["rip"]
                    sym = program.symbolize(pc)
                    value = int.from_bytes(client.read_memory(addr, 8), "little")
                    stops.append((pc, sym.name if sym else "?", value))
                client.cont()
        finally:
            client.close()
        gone = m.wait_exit(30.0)
        phys.close()
        log.close()
        assert gone.code == 0x10 + scenario, (gone, m.console.lines()[-5:])
        return list(phys.poller.hits), stops, m.console.lines()


def test_scenario8_dma_seen_by_the_poll_not_by_a_cpu_watchpoint(img, program, tmp_path):
    addr = program.global_address("s8_zero_page") + S8_OFFSET
    hits, stops, lines = run_with_cpu_watch(
        img, program, 8, addr, f"pa={addr:#x} len=8 to=0x33 interval=100us", tmp_path)
    assert ("edu-dma", addr, 8) in truth(lines), lines[-6:]
    assert "result=corrupted" in lines[-1] or any("result=corrupted" in ln for ln in lines)
    assert not [s for s in stops if s[2] == 0x33], f"a CPU watchpoint fired on DMA: {stops}"
    assert {sym for _, sym, _ in stops} <= {"pvh_entry"}, stops   # only boot's BSS clear
    [hit] = hits
    assert (hit.addr, hit.kind, hit.old, hit.new) == (addr, "dram", "00" * 8, "33" + "00" * 7)
    assert hit.context.hint and f"{addr:#x}" in hit.context.hint


def test_scenario9_cpu_store_seen_by_both(img, program, tmp_path):
    addr = program.global_address("s9_word")
    hits, stops, lines = run_with_cpu_watch(
        img, program, 9, addr, f"pa={addr:#x} len=8 to=0x33 interval=1ms", tmp_path)
    assert ("s9_poke", addr, 8) in truth(lines)
    assert [(sym, v) for _, sym, v in stops if v] == [("s9_poke", 0x33)], stops
    [hit] = hits
    assert (hit.addr, hit.old, hit.new) == (addr, "00" * 8, "33" + "00" * 7)
    events = (tmp_path / "events.jsonl").read_text()
    assert '"event": "poll-hit"' in events


def test_scenario10_changes_from_through_the_run_command(img, program, tmp_path):
    addr = program.global_address("s10_constant")
    log = tmp_path / "events.jsonl"
    session = WatchSession(RunOptions(
        scenario=10, accel="tcg", timeout=90, log_path=log,
        polls=[f"pa={addr:#x} len=8 from=0x5eed5eed5eed5eed interval=1ms"]))
    report = session.run()
    assert report.result.reason == "exit" and report.guest_exit.code == 0x1A
    assert ("s10_flip", addr, 8) in truth(report.console_log)
    [hit] = report.poll_hits
    assert hit.trigger == "from" and hit.addr == addr
    assert int.from_bytes(bytes.fromhex(hit.old), "little") == 0x5EED5EED5EED5EED
    assert int.from_bytes(bytes.fromhex(hit.new), "little") == 0x5EED5EED5EED5EED ^ (1 << 17)
    # Polls-only runs pause the guest for the vCPU snapshot: every vCPU is named.
    assert len(hit.context.vcpus) == 2 and all(v.symbol for v in hit.context.vcpus)
    assert hit.context.guest_time is not None and hit.context.guest_time >= 20
    [status] = report.polls
    assert status.samples > 10 and status.kind == "dram"
    assert '"event": "poll-hit"' in log.read_text()


def test_mmio_poll_reads_the_edu_dma_register_through_qemu(img, tmp_path):
    """An MMIO register (edu's DMA command) is classified as i/o and read via QEMU."""
    statuses: list[str] = []
    session = WatchSession(RunOptions(
        scenario=8, accel="tcg", timeout=90, log_path=tmp_path / "e.jsonl",
        polls=[f"pa={EDU_BAR0 + 0x98:#x} len=4 to=0x1 mask=0x1 interval=1ms once=1"]),
        on_status=statuses.append)
    report = session.run()
    assert report.guest_exit is not None and report.guest_exit.code == 0x18
    assert any("mmio" in s and "pause the guest" in s for s in statuses), statuses
    [hit] = report.poll_hits
    assert hit.kind == "mmio" and hit.addr == EDU_BAR0 + 0x98
    assert int.from_bytes(bytes.fromhex(hit.new), "little") & 1 == 1   # DMA running


def test_poll_added_while_the_guest_runs(img, program, tmp_path):
    """add_poll on a running guest (the TUI's path) works and catches the later write."""
    addr = program.global_address("s9_word")
    with Machine(img, accel="tcg", scenario=9, shared_ram="file", paused=True, gdb=False) as m:
        phys = PhysWatch(m, program, [], engine_attached=False)
        phys.start()
        m.resume()
        m.wait_for("KSWTEST start scenario=9", 30.0)
        pid = phys.poller.add_poll(f"pa={addr:#x} len=8 to=0x33 interval=200us")
        gone = m.wait_exit(60.0)
        phys.close()
    assert gone.code == 0x19
    [hit] = phys.poller.hits
    assert hit.poll_id == pid and hit.new == "33" + "00" * 7


def test_polls_alongside_watches_in_one_run(img, program, tmp_path):
    """--watch (gdbstub engine) and --poll together: both report, neither disturbs the other."""
    from kswgdb.watch.scenarios import scenario_watch

    jiffies = program.global_address("jiffies")
    report = WatchSession(RunOptions(
        scenario=3, accel="tcg", timeout=90, log_path=tmp_path / "e.jsonl",
        watches=[scenario_watch(img, 3, program)],
        polls=[f"pa={jiffies:#x} len=8 any=1 interval=1ms"])).run()
    assert report.result.reason == "exit" and report.guest_exit.code == 0x13
    assert report.hits, "the stack watch caught nothing with a poll running"
    [hit] = report.poll_hits
    assert hit.addr == jiffies and hit.trigger == "any"
    assert "live" in hit.context.note       # no QMP pause while the engine owns the vCPUs


def test_cli_exit_status_and_json_events(program, tmp_path):
    import json
    import subprocess
    import sys

    addr = program.global_address("s9_word")
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", "--scenario", "9", "--accel", "tcg", "--json",
         "--log", str(tmp_path / "e.jsonl"), "--poll", f"pa={addr:#x} len=8 to=0x33"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-500:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    [hit] = [e for e in events if e["event"] == "poll-hit"]
    assert hit["addr"] == hex(addr) and hit["new_bytes"] == "33" + "00" * 7
    assert hit["new"] == "0x0000000000000033"     # the number, as a watch hit's


def test_on_hit_freeze_stops_the_guest_and_dumps(program, tmp_path):
    addr = program.global_address("s9_word")
    report = WatchSession(RunOptions(
        scenario=9, accel="tcg", timeout=90, log_path=tmp_path / "e.jsonl",
        polls=[f"pa={addr:#x} len=8 to=0x33 interval=100us on-hit=freeze"])).run()
    assert report.result.reason == "freeze" and report.guest_exit is None
    assert report.vmcore is not None and report.vmcore.read_bytes()[:4] == b"\x7fELF"
    assert report.vmcore.parent == tmp_path
    [hit] = report.poll_hits
    assert hit.context.vmcore == str(report.vmcore) and "frozen" in hit.context.note
    assert not any("verdict" in ln for ln in report.console_log), "the guest ran on"


def test_on_hit_dump_keeps_the_guest_running(program, tmp_path):
    addr = program.global_address("s10_constant")
    report = WatchSession(RunOptions(
        scenario=10, accel="tcg", timeout=90, log_path=tmp_path / "e.jsonl",
        polls=[f"pa={addr:#x} len=8 from=0x5eed5eed5eed5eed on-hit=dump"])).run()
    assert report.result.reason == "exit" and report.guest_exit.code == 0x1A
    [core] = report.poll_vmcores
    assert core.read_bytes()[:4] == b"\x7fELF"


def test_freeze_from_a_poll_stops_a_watch_run_too(img, program, tmp_path):
    """A poll's freeze must not be undone by the watch engine resuming the guest."""
    from kswgdb.watch.scenarios import scenario_watch

    jiffies = program.global_address("jiffies")
    report = WatchSession(RunOptions(
        scenario=3, accel="tcg", timeout=90, log_path=tmp_path / "e.jsonl",
        watches=[scenario_watch(img, 3, program)],
        polls=[f"pa={jiffies:#x} len=8 from=0 interval=1ms on-hit=freeze"])).run()
    assert report.result.reason == "stopped" and report.guest_exit is None
    [hit] = report.poll_hits
    assert hit.context.vmcore and not any("verdict" in ln for ln in report.console_log)


def test_region_poll_names_the_offset_the_device_wrote(program, tmp_path):
    page = program.global_address("s8_zero_page")
    report = WatchSession(RunOptions(
        scenario=8, accel="tcg", timeout=90, log_path=tmp_path / "e.jsonl",
        polls=[f"region={page:#x}-{page + 0x1000:#x} interval=100us"])).run()
    assert report.guest_exit is not None and report.guest_exit.code == 0x18
    [hit] = report.poll_hits
    assert (hit.region_offset, hit.addr, hit.length) == (S8_OFFSET, page + S8_OFFSET, 1)
    assert (hit.old, hit.new) == ("00", "33")
