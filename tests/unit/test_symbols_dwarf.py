"""DWARF: line table, frame locals and struct layouts, checked against gdb."""

from __future__ import annotations

import re
import subprocess

import pytest

from kswgdb.errors import BadInput
from kswgdb.symbols.dwarf import DwarfInfo
from kswgdb.symbols.lines import LineTable
from kswgdb.symbols.locals import find_local, frame_variables
from kswgdb.symbols.program import Program
from tests.fixtures.build import binary, gdb_output, gdb_values, needs_gdb


def _program(flavour: str) -> Program:
    return Program.load(binary(flavour), cache=False)


@pytest.mark.parametrize("flavour", ["global", "dwarf4"])
def test_line_table_matches_gdb(flavour: str) -> None:
    needs_gdb()
    prog = _program(flavour)
    version = prog.dwarf.cu_at(prog.function("recurse").addr).header.version
    assert version == (4 if flavour == "dwarf4" else 5)
    lines = LineTable(prog.dwarf)
    for func in ["recurse", "array32", "canary_victim"]:
        code = prog.analyze(func).code
        addrs = [i.addr for i in code.instructions if i.flow is None][:12]
        out = gdb_output(binary(flavour), [f"info line *{a:#x}" for a in addrs])
        expected = [int(m) for m in re.findall(r'^Line (\d+) of "', out, re.M)]
        got = [lines.lookup(a) for a in addrs]
        assert len(expected) == len(addrs)
        assert [g.line for g in got] == expected
        assert all(g.file.endswith("tests/fixtures/kswfix.c") for g in got)


def test_no_dwarf_is_bad_input(tmp_path) -> None:
    stripped = tmp_path / "nodebug"
    subprocess.run(["strip", "--strip-debug", "-o", str(stripped), str(binary("global"))],
                   check=True)
    with pytest.raises(BadInput, match=r"has no DWARF debug info \(build it with -g\)"):
        DwarfInfo.open(stripped)
    prog = Program.load(stripped, cache=False)
    assert prog.source_line(prog.function("recurse").addr) is None
    assert prog.locals_at(prog.function("recurse").addr) == []


@pytest.mark.parametrize("flavour,reg", [("global", "$rbp"), ("dwarf4", "$rbp"),
                                         ("nofp", "$rsp"), ("gs", "$rbp")])
def test_stack_locals_match_gdb_at_run_time(flavour: str, reg: str) -> None:
    """The CFA offset DWARF gives, placed at the arming pc, is where gdb says the
    variable is while the program runs."""
    needs_gdb()
    prog = _program(flavour)
    for func, name in [("recurse", "mark"), ("array32", "words"), ("canary_victim", "buf"),
                       ("rep_victim", "buf")]:
        analysis = prog.analyze(func)
        pc = analysis.symbol.addr + analysis.suggest_offset()
        var = find_local(prog.dwarf, func, name, pc)
        state = analysis.frame.state_before(pc)
        base, offset = state.from_cfa(var.cfa_offset)
        assert f"${base}" == reg
        (truth,) = gdb_values(binary(flavour), f"*{pc:#x}", [f"(long)&{name} - (long){reg}"])
        assert offset == truth, (func, name)
        if reg == "$rbp":
            assert var.rbp_offset == truth


def test_locals_of_recurse() -> None:
    prog = _program("global")
    rec = prog.function("recurse")
    by_name = {v.name: v for v in frame_variables(prog.dwarf, rec.addr + 0x1b)}
    assert set(by_name) == {"depth", "mark"}
    mark = by_name["mark"]
    assert (mark.size, mark.count, mark.type_name, mark.on_stack) == (4, None, "volatile int", True)
    assert by_name["depth"].is_param and by_name["depth"].location.kind == "register"
    words = {v.name: v for v in frame_variables(prog.dwarf, prog.function("array32").addr + 0x20)}
    assert (words["words"].size, words["words"].count, words["words"].total_size) == (8, 32, 256)
    assert words["words"].type_name == "u64[32]"


def test_register_only_variable_is_refused_with_a_reason() -> None:
    prog = _program("global")
    rec = prog.function("recurse")
    with pytest.raises(BadInput, match=r"'depth' lives in register r\w+ at recurse\+0x[0-9a-f]+, "
                                       r"not on the stack \(optimised into a register\)"):
        find_local(prog.dwarf, "recurse", "depth", rec.addr + 0x30)
    with pytest.raises(BadInput, match=r"recurse has no local or parameter 'nope' "
                                       r"\(it has: depth, mark\)"):
        find_local(prog.dwarf, "recurse", "nope", rec.addr + 0x30)


@pytest.mark.parametrize("flavour", ["global", "dwarf4"])
def test_struct_layout_and_globals_match_gdb(flavour: str) -> None:
    needs_gdb()
    prog = _program(flavour)
    queries = [("task", "stack"), ("task", "pid"), ("task", "comm"), ("struct task", "comm[3]"),
               ("percpu", "current"), ("percpu", "canary"), ("percpu", "pad[2]")]
    exprs = [f"&((struct {t.split()[-1]} *)0)->{m}" for t, m in queries]
    exprs += ["sizeof(struct task)", "sizeof(struct percpu)", "&__stack_chk_guard",
              "&percpu_area", "&percpu_area[1].current"]
    truth = gdb_values(binary(flavour), "kmain", exprs)
    got = [prog.member_offset(t, m) for t, m in queries]
    got += [prog.type_size("task"), prog.type_size("struct percpu"),
            prog.global_address("__stack_chk_guard"), prog.global_address("percpu_area"),
            prog.global_address("percpu_area") + prog.type_size("percpu")
            + prog.member_offset("percpu", "current")]
    assert got == truth
    assert prog.types.member_size("task", "comm") == 16
    assert prog.types.global_address("percpu_area") == truth[-2]


def test_type_errors_suggest_names() -> None:
    prog = _program("global")
    with pytest.raises(BadInput, match=r"task has no member 'stak' \(did you mean stack\?\)"):
        prog.member_offset("task", "stak")
    with pytest.raises(BadInput, match=r"no type 'tsk' in the DWARF .*did you mean task"):
        prog.member_offset("tsk", "stack")
    with pytest.raises(BadInput, match=r"task.pid is not a struct or union"):
        prog.member_offset("task", "pid.x")
    with pytest.raises(BadInput, match=r"task.stack is not an array"):
        prog.member_offset("task", "stack[1]")
