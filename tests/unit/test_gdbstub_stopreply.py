"""Stop replies, including the exact forms QEMU 7.2 sends."""

from __future__ import annotations

import pytest

from kswgdb.gdbstub.stopreply import parse_stop_reply, parse_thread_id


def test_qemu_breakpoint_stop() -> None:
    s = parse_stop_reply("T05thread:01;")
    assert (s.kind, s.signal, s.thread, s.watch, s.exited) == ("T", 5, 1, None, False)


def test_qemu_multiprocess_thread_ids() -> None:
    assert parse_stop_reply("T05thread:p01.02;").thread == 2
    assert parse_thread_id("p1.-1") == -1
    assert parse_thread_id("-1") == -1
    assert parse_thread_id("0") == 0
    assert parse_thread_id("1f") == 0x1F


@pytest.mark.parametrize("kind", ["watch", "rwatch", "awatch"])
def test_watchpoint_stop(kind: str) -> None:
    s = parse_stop_reply(f"T05thread:02;{kind}:ffffc90000003ff8;")
    assert s.is_watchpoint and s.watch == kind
    assert s.watch_addr == 0xFFFFC90000003FF8 and s.thread == 2


def test_interrupt_stop() -> None:
    assert parse_stop_reply("T02thread:01;").signal == 2


def test_swbreak_hwbreak_core_inline_registers_and_unknown_keys() -> None:
    s = parse_stop_reply("T05swbreak:;thread:p1.3;core:1;06:0100000000000000;10:f0ff0000;library:;")
    assert s.breakpoint == "swbreak" and s.thread == 3 and s.core == 1
    assert s.registers == {6: "0100000000000000", 0x10: "f0ff0000"}
    assert s.extra == {"library": ""}
    assert parse_stop_reply("T05hwbreak:;").breakpoint == "hwbreak"


def test_plain_signal_exit_and_termination() -> None:
    assert parse_stop_reply("S05").kind == "S"
    w = parse_stop_reply("W00")
    assert w.exited and w.exit_status == 0
    assert parse_stop_reply("W01;process:2a").extra == {"process": "2a"}
    x = parse_stop_reply("X09")
    assert x.exited and x.signal == 9


def test_console_output_packet() -> None:
    s = parse_stop_reply("O" + b"hello\n".hex())
    assert s.kind == "O" and s.output == b"hello\n"


@pytest.mark.parametrize("bad", ["", "OK", "E22", "Q"])
def test_not_a_stop_reply(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_stop_reply(bad)
