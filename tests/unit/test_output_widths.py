"""``disasm`` and ``symbols`` at 80 columns, at 40, piped and with NO_COLOR: nothing cut.

Issue 12: piped, ``kswgdb disasm s3_victim | grep -c 'arm here'`` gave 0 (the offset
column read ``+0…`` and the note column was gone), and long names were wrapped.
These run the real command in a pseudo-terminal of a given width and in a pipe, and
compare with what the listing holds: every offset, instruction and note token whole.
"""

from __future__ import annotations

import pytest

from kswgdb.image import IMAGES_DIR
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program
from tests.output_capture import assert_whole, in_terminal, piped, strip_ansi

ELF = IMAGES_DIR / "kswtest.elf"


@pytest.fixture(scope="module")
def listing():
    if not ELF.is_file():
        pytest.fail("images/kswtest.elf is missing: run `make guest` first")
    return build_listing(Program.load(ELF), "s3_victim")


def _expected(listing) -> list[str]:
    wanted = [f"+{row.offset:#x}" for row in listing.rows]
    wanted += [f"{row.insn.text} {row.comment}".strip() for row in listing.rows]
    wanted += ["; ".join(row.marks) for row in listing.rows if row.marks]
    return wanted + [f"suggested watch: {listing.suggested_config}"]


def test_disasm_piped_keeps_every_column_on_its_line(listing) -> None:
    proc = piped(["disasm", "s3_victim"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum("arm here" in line for line in lines) > 0           # the grep -c
    assert_whole(proc.stdout, _expected(listing))
    for row in listing.rows:
        if row.marks:          # offset, instruction and note on the same line
            line = next(ln for ln in lines if ln.split()[:1] == [f"+{row.offset:#x}"])
            assert "; ".join(row.marks) in line and row.insn.text in line, line
    assert f"suggested watch: {listing.suggested_config}" in [ln.strip() for ln in lines]
    assert "\x1b[" not in proc.stdout                                # plain text in a pipe


@pytest.mark.parametrize("columns", [80, 72])
def test_disasm_in_a_narrow_terminal_grows_rows_never_cuts(listing, columns: int) -> None:
    status, raw = in_terminal(["disasm", "s3_victim"], columns)
    assert status == 0, raw
    text = strip_ansi(raw)
    assert_whole(text, _expected(listing))
    assert max(len(line) for line in text.splitlines()) <= columns
    assert "<- arm here" in text


def test_disasm_no_color_in_a_terminal(listing) -> None:
    status, raw = in_terminal(["disasm", "s3_victim"], 80, env={"NO_COLOR": "1"})
    assert status == 0
    assert_whole(strip_ansi(raw), _expected(listing))
    assert "\x1b[3" not in raw          # no foreground colour codes


@pytest.mark.parametrize("columns", [80, 40])
def test_symbols_lines_are_never_wrapped(columns: int) -> None:
    program = Program.load(ELF)
    names = sorted(program.symtab.names("func"))
    longest = max(names, key=len)
    status, raw = in_terminal(["symbols"], columns)
    assert status == 0, raw
    lines = [ln for ln in strip_ansi(raw).splitlines() if ln.strip()]
    assert len(lines) == len(names)                     # one line per function, none split
    assert [ln.split()[-1] for ln in lines] == names
    if columns == 40:
        assert len(longest) + 27 > columns, "the test needs a name longer than the terminal"
    piped_lines = piped(["symbols"]).stdout.splitlines()
    assert piped_lines == lines
