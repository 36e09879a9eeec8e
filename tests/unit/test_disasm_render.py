"""``kswgdb disasm FUNC``: the annotated listing rendered as text at a fixed width."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from kswgdb.render.disasm import render_disasm
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program
from kswgdb.watch.config import parse_watch
from kswgdb.watch.resolve import resolve_watch
from tests.fixtures.build import binary


def _render(flavour: str, func: str, var: str | None = None, width: int = 120) -> str:
    prog = Program.load(binary(flavour), cache=False)
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, legacy_windows=False).print(
        render_disasm(build_listing(prog, func, var)))
    return buf.getvalue()


def _row(text: str, offset: int) -> str:
    (line,) = [ln for ln in text.splitlines() if re.match(rf"\s*\+{offset:#x}\s", ln)]
    return line


def test_canary_function_listing() -> None:
    prog = Program.load(binary("global"), cache=False)
    analysis = prog.analyze("recurse")
    canary = analysis.canary
    fo = analysis.suggest_offset()
    text = _render("global", "recurse")
    lines = text.splitlines()
    assert lines[0].strip() == (f"recurse @ {analysis.symbol.addr:#x}, {analysis.symbol.size:#x} "
                                "bytes - canary [rbp-0x18] from __stack_chk_guard")
    assert "off" in lines[1] and "bytes" in lines[1] and "instruction" in lines[1]
    load = _row(text, canary.load_addr - analysis.symbol.addr)
    assert "mov rax, qword ptr [rip + 0x" in load
    assert "<__stack_chk_guard>" in load and "canary load (__stack_chk_guard)" in load
    store = _row(text, canary.store_addr - analysis.symbol.addr)
    assert "48 89 45 e8" in store and "canary store [rbp-0x18]" in store
    assert "<- arm here" in _row(text, fo)
    assert sum("arm here" in ln for ln in lines) == 1
    assert "init mark" in _row(text, 0x18) and "writes mark" in _row(text, 0x33)
    assert "canary check" in text and "<__stack_chk_fail>" in text
    assert "kswfix.c:75" in text                     # source line where it changes
    assert "stack locals: mark: volatile int at CFA-0x2c (rbp-0x1c)" in text
    assert lines[-1].strip() == f"suggested watch: fn=recurse fo={fo:#x}"
    # the suggestion is a config that resolves cleanly
    r = resolve_watch(parse_watch(lines[-1].split(": ", 1)[1]), prog)
    assert r.warnings == () and r.slot.base == "rbp"


def test_gs_guard_and_named_local_suggestion() -> None:
    text = _render("gs", "array32", var="words")
    assert "canary load (gs:0x28)" in text
    assert "mov rax, qword ptr gs:[0x28]" in text
    last = text.splitlines()[-1].strip()
    assert re.fullmatch(r"suggested watch: fn=array32 fo=0x[0-9a-f]+ var=words\[31\]", last)


def test_function_without_canary_suggests_sp_offset() -> None:
    text = _render("nofp", "no_canary")
    assert "- canary" not in text.splitlines()[0]
    assert "no canary in no_canary: watching local scratch instead" in text
    last = text.splitlines()[-1].strip()
    assert re.fullmatch(r"suggested watch: fn=no_canary fo=0x[0-9a-f]+ so=0x[0-9a-f]+ wl=4", last)
    assert "(rbp" not in text                        # no frame pointer: only CFA offsets


def test_rep_stos_marked_as_initialising_the_buffer() -> None:
    text = _render("global", "rep_victim")
    (row,) = [ln for ln in text.splitlines() if "rep stosq" in ln]
    assert "init buf" in row


def test_narrow_terminal_keeps_the_config_intact() -> None:
    text = _render("global", "recurse", width=60)
    assert re.search(r"suggested watch: fn=recurse fo=0x[0-9a-f]+\s*$", text)


@pytest.mark.parametrize("color", [None, "truecolor"])
@pytest.mark.parametrize("width", [1000, 80, 60])
def test_rows_written_directly_are_laid_out_as_rich_lays_out_the_table(color, width) -> None:
    """The table is written row by row (rich's layout costs 3 s for 4,000 rows), at
    rich's column widths and wrapping where it does not fit: the text must be exactly
    what rich's Table gives, padding included."""
    from kswgdb.render.disasm import _rich_table

    prog = Program.load(binary("global"), cache=False)
    for func in ("recurse", "rep_victim"):
        table = render_disasm(build_listing(prog, func))
        texts = []
        for renderable in (table, _rich_table(table.cells)):
            buf = io.StringIO()
            Console(file=buf, width=width, color_system=color, legacy_windows=False,
                    highlight=False).print(renderable)
            texts.append(re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue()))
        assert texts[0] == texts[1]
        assert texts[0].count("\n") > len(table.cells.rows)
