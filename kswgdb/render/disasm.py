"""``kswgdb disasm FUNC`` as a table.

One row per instruction (offset, bytes, text, marks), a dim row whenever the
source line changes, a heading row where a cold part (``NAME.cold``) begins, the
suggested arming instruction highlighted, and the ready-to-paste config string as
the caption, so the user never computes an offset by hand.

Laying out a rich `Table` costs about 0.7 ms a row (3 s for the Debian kernel's
4,000-instruction functions), nearly all of it measuring and wrapping cells that
never wrap. `DisasmTable` writes the same rows itself, padded to the widths rich would
give them: the natural ones when the table fits (always in a pipe, where the width is
`kswgdb.render.console.PIPE_WIDTH`); in a narrow terminal rich's own collapsed widths
(measured on the few rows that decide them), wrapping only the cells that do not fit,
as rich wraps them, so that rows grow and nothing is cut.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from kswgdb.symbols.listing import Listing

_MAX_BYTES = 8
#: Columns, their header, and how their cells are justified.
_COLUMNS = (("off", "right"), ("bytes", "left"), ("instruction", "left"), ("note", "left"))
#: Spaces between two columns (rich's padding of one on each side, none at the edges).
_GAP = 2

#: One cell: its text and style name ("" = none).
Cell = tuple[str, str]


@dataclass(frozen=True)
class _Rows:
    """The table's cells, computed once for either layout."""

    title: Text
    caption: Text
    rows: list[tuple[Cell, Cell, Cell, Cell]]
    off_width: int          # no offset is ever wrapped
    instr_words: int        # the longest word of an instruction (never split)
    note_words: int


def render_disasm(listing: Listing) -> DisasmTable:
    """The listing as a renderable; print it with any rich Console."""
    return DisasmTable(listing)


class DisasmTable:
    """The listing's table: written directly when it fits, else laid out by rich."""

    def __init__(self, listing: Listing) -> None:
        self.listing = listing
        self.cells = _cells(listing)

    def natural_widths(self) -> list[int]:
        """Each column's width with nothing wrapped (what rich gives a table that fits)."""
        widths = [len(name) for name, _ in _COLUMNS]
        for row in self.cells.rows:
            for i, (text, _style) in enumerate(row):
                if len(text) > widths[i]:
                    widths[i] = len(text)
        widths[0] = max(widths[0], self.cells.off_width)
        return widths

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = self.natural_widths()
        table_width = sum(widths) + _GAP * (len(widths) - 1)
        fits = table_width <= options.max_width
        if not fits:
            widths = _narrow_widths(console, options, self.cells)
            table_width = sum(widths) + _GAP * (len(widths) - 1)
        annotation = options.update(width=table_width, height=None, highlight=False)
        yield from console.render(self.cells.title, annotation.update(justify="center"))
        styles: dict[str, Style] = {}

        def style(name: str) -> Style | None:
            if not name:
                return None
            if name not in styles:
                styles[name] = console.get_style(name)
            return styles[name]

        header = [(name, "bold") for name, _ in _COLUMNS]
        if console.color_system is None and fits:
            # plain text that fits: one segment a line
            yield Segment("".join(_plain_line(row, widths) for row in (header, *self.cells.rows)))
            yield from console.render(self.cells.caption, annotation.update(justify="left"))
            return
        gap = Segment(" " * _GAP)
        for row in (header, *self.cells.rows):
            cells = [_wrap(console, text, width) for (text, _), width in zip(row, widths,
                                                                              strict=True)]
            for j in range(max(len(c) for c in cells)):
                for i, (lines, (_, name), width) in enumerate(zip(cells, row, widths,
                                                                  strict=True)):
                    text = lines[j] if j < len(lines) else ""
                    if i:
                        yield gap
                    pad = " " * (width - len(text))
                    cell_style = style(name)
                    if _COLUMNS[i][1] == "right":
                        yield Segment(pad + text, cell_style)
                    else:
                        yield Segment(text, cell_style)
                        if pad:
                            yield Segment(pad, cell_style)
                yield Segment.line()
        yield from console.render(self.cells.caption, annotation.update(justify="left"))


def _narrow_widths(console: Console, options: ConsoleOptions, cells: _Rows) -> list[int]:
    """The content widths rich gives the columns when the table does not fit. They depend
    only on each column's longest text and longest word, so rich measures just the rows
    that hold those (measuring 4,000 rows took it 1 s)."""
    keep: set[int] = set()
    for i in range(len(_COLUMNS) if cells.rows else 0):
        keep.add(max(range(len(cells.rows)), key=lambda r: len(cells.rows[r][i][0])))
        keep.add(max(range(len(cells.rows)),
                     key=lambda r: max((len(w) for w in cells.rows[r][i][0].split()),
                                       default=0)))
    sample = [cells.rows[r] for r in sorted(keep)]
    table = _rich_table(replace(cells, rows=sample))
    widths = table._calculate_column_widths(console, options)
    return [w - table._get_padding_width(i) for i, w in enumerate(widths)]


def _wrap(console: Console, text: str, width: int) -> list[str]:
    """A cell's lines at ``width``: itself when it fits, else wrapped as rich wraps it
    (at spaces, folding a word longer than the column)."""
    if len(text) <= width:
        return [text]
    return [line.plain.rstrip() for line in Text(text).wrap(console, width, overflow="fold")]


def _plain_line(row: tuple[Cell, ...], widths: list[int]) -> str:
    """One row as text, padded as rich pads a table's cells (trailing spaces too)."""
    parts = []
    for (text, _style), width, (_, justify) in zip(row, widths, _COLUMNS, strict=True):
        parts.append(text.rjust(width) if justify == "right" else text.ljust(width))
    return (" " * _GAP).join(parts) + "\n"


def _cells(listing: Listing) -> _Rows:
    """Title, caption and every row's cells (source-line and cold-part rows included)."""
    sym = listing.function
    title = Text(f"{sym.name} @ {sym.addr:#x}, {sym.size:#x} bytes", overflow="fold")
    if listing.canary is not None:
        title.append(f" - canary {listing.canary.location} from {listing.canary.guard_ref}")
    rows: list[tuple[Cell, Cell, Cell, Cell]] = []
    empty: Cell = ("", "")
    part = None
    texts, notes = [], []
    for row in listing.rows:
        if row.part is not part:
            part = row.part
            if part is not None:
                rows.append((empty, empty, (f"{part.name} @ {part.addr:#x} (cold part)",
                                            "bold"), empty))
        if row.source is not None:
            rows.append((empty, empty, (f"{row.source.basename}:{row.source.line}", "dim"),
                         empty))
        raw = row.insn.raw
        shown = raw.hex(" ") if len(raw) <= _MAX_BYTES else raw[:_MAX_BYTES].hex(" ") + " .."
        style = "bold green" if row.suggested else ""
        note = "; ".join(row.marks)
        note_style = "bold green" if row.suggested else \
            "yellow" if any(m.startswith("canary") for m in row.marks) else "cyan"
        text = f"{row.insn.text} {row.comment}".rstrip()
        texts.append(text)
        notes.append(note)
        rows.append(((f"+{row.offset:#x}", style), (shown, "dim"), (text, style),
                     (note, note_style)))
    off_width = max((len(f"+{row.offset:#x}") for row in listing.rows), default=3)
    return _Rows(title, _caption(listing), rows, off_width, _longest_word(texts),
                 _longest_word(notes))


def _rich_table(cells: _Rows) -> Table:
    """The same rows as a rich Table: rows grow in a narrow terminal, nothing is cut."""
    table = Table(title=cells.title, box=None, show_header=True, header_style="bold",
                  pad_edge=False, caption=cells.caption, caption_justify="left")
    # Narrow terminals: rows grow (bytes, instruction and note wrap at spaces), offsets
    # keep their full width; nothing is ever ellipsized.
    table.add_column("off", justify="right", no_wrap=True, min_width=cells.off_width)
    table.add_column("bytes", overflow="fold", style="dim", max_width=3 * _MAX_BYTES + 2)
    table.add_column("instruction", overflow="fold", min_width=cells.instr_words)
    table.add_column("note", overflow="fold", min_width=cells.note_words)
    for row in cells.rows:
        table.add_row(*(Text(text, style=style) for text, style in row))
    return table


def _longest_word(texts: list[str]) -> int:
    """The width a column needs so that no word in it is ever split."""
    return max((len(word) for text in texts for word in text.split()), default=1)


def _caption(listing: Listing) -> Text:
    text = Text()
    if listing.locals:
        parts = []
        for v in listing.locals:
            where = f"CFA{v.cfa_offset:+#x}" if v.cfa_offset is not None else "?"
            if listing.frame_pointer and v.rbp_offset is not None:
                where += f" (rbp{v.rbp_offset:+#x})"
            parts.append(f"{v.name}: {v.type_name} at {where}")
        text.append("stack locals: " + ", ".join(parts) + "\n")
    if listing.note:
        text.append(listing.note + "\n")
    if listing.suggested_config is not None:
        text.append("suggested watch: ")
        text.append(listing.suggested_config, style="bold green")
    else:
        text.append("no watch to suggest")
    return text
