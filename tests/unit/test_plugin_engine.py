"""The plugin engine's host side without QEMU: arguments out, events in."""

from __future__ import annotations

import json

import pytest

from kswgdb.errors import BadInput
from kswgdb.plugin import protocol
from kswgdb.plugin.args import (
    MAX_SPECS,
    plugin_args,
    plugin_option,
    spec_args,
    spec_refusal,
)
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.hits import SourceLine
from kswgdb.watch.spec import ArmSpec, GuardSource
from kswgdb.watch.target import Registers

LAYOUT = GuestLayout(flavour="kswtest", current_gs_offset=0x10, task_pid_offset=0x20,
                     task_comm_offset=0x30, irq_functions=("timer_interrupt",))


def spec(**over) -> ArmSpec:
    base = dict(text="fn=victim fo=0x10", func="victim", func_addr=0xffffffff81001000,
                func_size=0x100, probe_addr=0xffffffff81001014, cfa_offset=0x10,
                cfa_base="rbp", mode="canary", base="rbp", offset=-8, length=8,
                what="canary of victim", guard=GuardSource("gs", offset=0x28),
                exits=((0xffffffff810010f0, "rbp", 0x10), (0xffffffff810010f8, "rsp", 0x8)))
    base.update(over)
    return ArmSpec(**base)


class FakeSymbols:
    def symbol(self, addr: int) -> str:
        return f"fn+{addr & 0xff:#x}/0x100"

    def function(self, addr: int) -> str | None:
        return "timer_interrupt" if addr == 0x5000 else "corrupter"

    def source(self, addr: int) -> SourceLine | None:
        return SourceLine("guest/x.c", addr & 0xff)

    def writer(self, pc: int, regs: Registers):
        raise AssertionError("the plugin reports the store itself: no guessing from the next pc")


def test_spec_args_carry_every_number_in_the_plugins_syntax():
    out = spec_args(3, spec())
    assert out[0] == ("w=0x3/0xffffffff81001014/0x1/0x10/0x1/-0x8/0x8/0x0/0x2/0x28/0x0")
    assert out[1:] == ["x=0x3/0xffffffff810010f0/0x1/0x10", "x=0x3/0xffffffff810010f8/0x0/0x8"]


def test_global_guard_offset_mode_and_panic():
    assert spec_args(0, spec(guard=GuardSource("global", addr=0x1234)))[0].split("/")[8:10] \
        == ["0x1", "0x1234"]
    # offset and var modes check no canary: no guard is passed even if one is known
    fields = spec_args(0, spec(mode="offset", base="rsp", offset=0x18, length=4,
                               panic=True))[0].split("/")
    assert fields[4:7] == ["0x0", "0x18", "0x4"] and fields[8:] == ["0x0", "0x0", "0x1"]


def test_a_watch_without_release_points_is_refused():
    assert "release points are unknown" in spec_refusal([spec(exits=())])
    with pytest.raises(BadInput, match="release points"):
        plugin_args([spec(exits=())], LAYOUT, "/tmp/s", pool=1)


def test_plugin_args_layout_and_limits():
    args = plugin_args([spec()], LAYOUT, "/tmp/kswgdb-x/plugin.sock", pool=4, freeze=True,
                       task_exit=0xffffffff81002000)
    assert args[:7] == ["sock=/tmp/kswgdb-x/plugin.sock", "cur=0x10", "tsz=0x4000",
                        "pidoff=0x20", "comm=0x30", "pool=4", "freeze=1"]
    assert "exitfn=0xffffffff81002000" in args
    no_layout = plugin_args([spec()], GuestLayout(), "/s", pool=1)
    assert no_layout[1] == "cur=-0x1" and no_layout[3] == "pidoff=-0x1"
    with pytest.raises(BadInput, match="comma"):
        plugin_args([spec()], LAYOUT, "/tmp/a,b", pool=1)
    with pytest.raises(BadInput, match="at most"):
        plugin_args([spec()] * (MAX_SPECS + 1), LAYOUT, "/s", pool=1)
    # Module watches only: nothing to probe until their module loads.
    assert not any(a.startswith("w=") for a in plugin_args([], LAYOUT, "/s", pool=1))
    assert plugin_option("/p/k.so", ["a=1", "b=2"]) == "/p/k.so,a=1,b=2"
    with pytest.raises(BadInput, match="comma"):
        plugin_option("/p,q/k.so", [])


def hit_event(**over) -> dict:
    event = {"event": "hit", "seq": 2, "spec": 0, "vcpu": 1, "pc": "0x4010", "addr": "0x9ff8",
             "len": 8, "depth": 0, "freeze": 0, "old": "1122334455667788",
             "new": "0000000000000000", "stats": [{"calls": 5, "armed": 4, "skipped_depth": 1,
                                                   "hits": 2}],
             "owner": {"task": "0x8000", "pid": 7, "comm": "victim"},
             "writer": {"task": "0x8800", "pid": -1, "comm": ""},
             "regs": {"rsp": "0x9f00", "rbp": "0x9f80", "rip": "0x4010"},
             "fp_chain": ["0x5000", "0x6000"]}
    event.update(over)
    return event


def test_hit_from_event_names_the_store_and_the_tasks():
    hit = protocol.hit_from_event(protocol.parse_line(json.dumps(hit_event())), [spec()],
                                  FakeSymbols(), LAYOUT)
    assert (hit.seq, hit.cpu, hit.addr, hit.length) == (2, 1, 0x9ff8, 8)
    assert hit.writer.insn_addr == 0x4010 and hit.writer.function == "corrupter"
    assert hit.owner.name == "victim" and hit.owner.pid == 7
    assert hit.writer_task.pid is None and hit.writer_task.name == "task@0x8800"
    assert hit.registers["rsp"] == 0x9f00
    assert [f.pc for f in hit.backtrace] == [0x4010, 0x5000, 0x6000]
    assert hit.backtrace[1].source == SourceLine("guest/x.c", 0xff)   # the call, ret - 1
    assert hit.interrupt            # timer_interrupt is on the chain
    assert (hit.what, hit.watched_func, hit.config) == ("canary of victim", "victim",
                                                         "fn=victim fo=0x10")


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"seq": 1}'])
def test_lines_that_are_not_events_are_protocol_errors(line):
    with pytest.raises(protocol.PluginProtocolError):
        protocol.parse_line(line)


@pytest.mark.parametrize("broken", [{"spec": 5}, {"pc": "zz"}, {"old": "xyz"}, {"regs": None}])
def test_malformed_hits_are_protocol_errors(broken):
    with pytest.raises(protocol.PluginProtocolError):
        protocol.hit_from_event(hit_event(**broken), [spec()], FakeSymbols(), LAYOUT)


def test_summary_has_the_engines_shape():
    rows = protocol.summary([{"calls": 5, "armed": 3, "skipped_depth": 1,
                              "refused_check": 1}], [spec()])
    assert rows[0]["config"] == "fn=victim fo=0x10"
    assert rows[0]["calls"] == rows[0]["armed"] + rows[0]["not_armed"] == 5
    assert rows[0]["hits"] == 0

