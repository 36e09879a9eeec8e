"""``kswgdb disasm FUNC`` as a rich table.

One row per instruction (offset, bytes, text, marks), a dim row whenever the
source line changes, the suggested arming instruction highlighted, and the
ready-to-paste config string as the caption, so the user never computes an
offset by hand.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from kswgdb.symbols.listing import Listing

_MAX_BYTES = 8


def render_disasm(listing: Listing) -> Table:
    """The listing as a table; print it with any rich Console."""
    sym = listing.function
    title = Text(f"{sym.name} @ {sym.addr:#x}, {sym.size:#x} bytes", overflow="fold")
    if listing.canary is not None:
        title.append(f" - canary {listing.canary.location} from {listing.canary.guard_ref}")
    table = Table(title=title, box=None, show_header=True, header_style="bold",
                  pad_edge=False, caption=_caption(listing), caption_justify="left")
    # Narrow terminals: rows grow (bytes, instruction and note wrap at spaces), offsets
    # keep their full width; nothing is ever ellipsized.
    off_width = max((len(f"+{row.offset:#x}") for row in listing.rows), default=3)
    table.add_column("off", justify="right", no_wrap=True, min_width=off_width)
    table.add_column("bytes", overflow="fold", style="dim", max_width=3 * _MAX_BYTES + 2)
    texts = [f"{row.insn.text} {row.comment}" for row in listing.rows]
    notes = ["; ".join(row.marks) for row in listing.rows]
    table.add_column("instruction", overflow="fold", min_width=_longest_word(texts))
    table.add_column("note", overflow="fold", min_width=_longest_word(notes))
    for row in listing.rows:
        if row.source is not None:
            table.add_row("", "", Text(f"{row.source.basename}:{row.source.line}", style="dim"),
                          "")
        raw = Text(row.insn.raw.hex(" "))
        if len(row.insn.raw) > _MAX_BYTES:
            raw = Text(row.insn.raw[:_MAX_BYTES].hex(" ") + " ..")
        style = "bold green" if row.suggested else ""
        note_style = "yellow" if any(m.startswith("canary") for m in row.marks) else "cyan"
        table.add_row(
            Text(f"+{row.offset:#x}", style=style), raw,
            Text(f"{row.insn.text} {row.comment}".rstrip(), style=style),
            Text("; ".join(row.marks), style="bold green" if row.suggested else note_style),
        )
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
