"""The `kswgdb tui` screen: watches, polls, hits, the selected hit and the console, live.

The app never touches the guest itself. It polls a `LiveSession` (a few
times a second) for a `Snapshot`, new hits and new console lines, and turns
key presses into the session's commands; the session's worker thread does
the rest while the guest is stopped. A config typed into the add box is
checked at once in this thread, so a mistake is a one-line error on screen
and changes nothing; so is a poll spec typed into the poll box.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Input, Log, Static

from kswgdb.errors import BadInput
from kswgdb.poll.poller import PollHit
from kswgdb.render.hit import render_hit
from kswgdb.render.pollhit import render_poll_hit
from kswgdb.run.live import LiveSession
from kswgdb.tui import view
from kswgdb.watch.hits import Hit

#: Seconds between two looks at the session.
REFRESH_SECONDS = 0.25
#: At most this many new console lines are drawn per refresh.
CONSOLE_BATCH = 50


class KswApp(App[None]):
    """One live session on screen; `q` closes the machine before the app exits."""

    CSS_PATH = "app.tcss"
    TITLE = "kswgdb"
    BINDINGS = [
        Binding("a", "add_watch", "Add watch"),
        Binding("p", "add_poll", "Add poll"),
        Binding("d", "remove_selected", "Remove"),
        Binding("f", "freeze", "Freeze"),
        Binding("c", "continue_guest", "Continue"),
        Binding("enter", "show_hit", "Hit detail", show=True),
        Binding("l", "toggle_console", "Console"),
        Binding("w", "focus('watches')", "Watches", show=False),
        Binding("h", "focus('hits')", "Hits", show=False),
        Binding("o", "focus('polls')", "Polls", show=False),
        Binding("escape", "cancel_add", "Cancel", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, session: LiveSession) -> None:
        super().__init__()
        self.session = session
        self._hits: list[Hit] = []
        self._console_seen = 0
        self._notice_seq = 0
        self._shown_hit: int | None = None
        self._poll_hits: list[PollHit] = []
        #: Hit-list row key -> the hit (watch hits "1", "2"...; poll hits "P1", "P2"...).
        self._by_key: dict[str, Hit | PollHit] = {}

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static(id="header")
        watches = DataTable(id="watches", cursor_type="row", zebra_stripes=True)
        watches.border_title = "watches (a add, d remove)"
        yield watches
        polls = DataTable(id="polls", cursor_type="row", zebra_stripes=True)
        polls.border_title = "physical-memory polls (p add, d remove)"
        yield polls
        with Horizontal(id="main"):
            hits = DataTable(id="hits", cursor_type="row", zebra_stripes=True)
            hits.border_title = "hits (enter: detail)"
            yield hits
            detail = VerticalScroll(Static("no hit yet", id="detail-body"), id="detail")
            detail.border_title = "hit detail"
            yield detail
        console = Log(id="console", max_lines=500)
        console.border_title = "guest console (l hides)"
        yield console
        yield Static("", id="message")
        yield Input(placeholder="KStackWatch config, e.g. fn=s3_victim fo=0x23   "
                                "(enter: add, esc: cancel)", id="add")
        yield Input(placeholder="poll spec, e.g. pa=0x1146a8 len=8 to=0x33   "
                                "(enter: add, esc: cancel)", id="addpoll")
        yield Footer()

    def on_mount(self) -> None:
        watches = self.query_one("#watches", DataTable)
        for label, key in view.WATCH_COLUMNS:
            watches.add_column(label, key=key)
        polls = self.query_one("#polls", DataTable)
        for label, key in view.POLL_COLUMNS:
            polls.add_column(label, key=key)
        hits = self.query_one("#hits", DataTable)
        for label, key in view.HIT_COLUMNS:
            hits.add_column(label, key=key)
        self.session.start()
        self.refresh_from_session()
        self.set_interval(REFRESH_SECONDS, self.refresh_from_session)
        watches.focus()

    # ----------------------------------------------------------- polling
    def refresh_from_session(self) -> None:
        """Bring every part of the screen up to the session's latest state."""
        session = self.session
        snap = session.snapshot()
        image = session.image.name if session.image is not None else "?"
        self.query_one("#header", Static).update(view.header(
            image, session.options.scenario, session.accel, snap, session.symbols_path,
            session.options.log_path))
        self._refresh_watches(snap.watches)
        self._refresh_polls(snap.polls)
        self._refresh_hits()
        self._refresh_poll_hits()
        self._refresh_console()
        if snap.notice_seq != self._notice_seq:
            self._notice_seq = snap.notice_seq
            self.say(snap.notice, error=snap.notice.startswith("error:"))

    def _refresh_watches(self, rows) -> None:
        table = self.query_one("#watches", DataTable)
        for row in rows:
            cells = view.watch_cells(row)
            key = str(row.index)
            if key in table.rows:
                for column, cell in cells.items():
                    table.update_cell(key, column, cell, update_width=True)
            else:
                table.add_row(*(cells[k] for _, k in view.WATCH_COLUMNS), key=key)

    def _refresh_polls(self, rows) -> None:
        table = self.query_one("#polls", DataTable)
        for row in rows:
            cells = view.poll_cells(row)
            key = str(row.id)
            if key in table.rows:
                for column, cell in cells.items():
                    table.update_cell(key, column, cell, update_width=True)
            else:
                table.add_row(*(cells[k] for _, k in view.POLL_COLUMNS), key=key)

    def _refresh_poll_hits(self) -> None:
        new = self.session.poll_hits(len(self._poll_hits))
        if not new:
            return
        table = self.query_one("#hits", DataTable)
        for hit in new:
            cells = view.poll_hit_cells(hit)
            key = f"P{hit.seq}"
            self._by_key[key] = hit
            table.add_row(*(cells[k] for _, k in view.HIT_COLUMNS), key=key)
        self._poll_hits += new
        if self._shown_hit is None:
            self.show_hit(new[0])

    def _refresh_hits(self) -> None:
        new = self.session.hits(len(self._hits))
        if not new:
            return
        table = self.query_one("#hits", DataTable)
        for hit in new:
            cells = view.hit_cells(hit)
            self._by_key[str(hit.seq)] = hit
            table.add_row(*(cells[k] for _, k in view.HIT_COLUMNS), key=str(hit.seq))
        self._hits += new
        if self._shown_hit is None:
            self.show_hit(self._hits[0])

    def _refresh_console(self) -> None:
        lines, self._console_seen = self.session.console_since(self._console_seen)
        if lines:
            # A busy guest prints hundreds of lines a second; the pane shows a
            # few, the whole console is in the run's console log anyway.
            console = self.query_one("#console", Log)
            console.write_lines(lines[-CONSOLE_BATCH:], scroll_end=False)
            console.scroll_end(animate=False)

    # ---------------------------------------------------------- messages
    def say(self, text: str, error: bool = False) -> None:
        """One line under the console: what just happened, or what was wrong."""
        message = self.query_one("#message", Static)
        message.update(Text(text))          # never markup: configs contain [brackets]
        message.set_class(error, "error")

    def show_hit(self, hit: Hit | PollHit) -> None:
        self._shown_hit = hit.seq
        if isinstance(hit, PollHit):
            self.query_one("#detail-body", Static).update(render_poll_hit(hit))
            self.query_one("#detail", VerticalScroll).border_title = f"poll hit P{hit.seq}"
            return
        self.query_one("#detail-body", Static).update(render_hit(hit))
        self.query_one("#detail", VerticalScroll).border_title = f"hit #{hit.seq}"

    # ----------------------------------------------------------- actions
    def action_add_watch(self) -> None:
        self._open_box("#add")

    def action_add_poll(self) -> None:
        self._open_box("#addpoll")

    def _open_box(self, box_id: str) -> None:
        box = self.query_one(box_id, Input)
        box.add_class("visible")
        box.focus()

    def action_cancel_add(self) -> None:
        for box_id, table_id in (("#add", "#watches"), ("#addpoll", "#polls")):
            box = self.query_one(box_id, Input)
            if box.has_class("visible"):
                box.remove_class("visible")
                box.value = ""
                self.query_one(table_id, DataTable).focus()

    @on(Input.Submitted, "#addpoll")
    def poll_submitted(self, event: Input.Submitted) -> None:
        self._submit(event.value.strip(), self.session.add_poll,
                     lambda text, poll_id: f"poll P{poll_id} sampling: {text} "
                                           "(the guest was not stopped)")

    @on(Input.Submitted, "#add")
    def add_submitted(self, event: Input.Submitted) -> None:
        self._submit(event.value.strip(), self.session.add_watch,
                     lambda text, resolved: f"adding {text}: {resolved.describe()} "
                                            "(applied at the next stop)")

    def _submit(self, text: str, add, done) -> None:
        """Add what the box holds; a bad one leaves the box open with its text, to fix it."""
        try:
            added = add(text)
        except BadInput as exc:
            self.say(f"error: {' '.join(str(exc).split())}", error=True)
            return
        self.say(done(text, added))
        self.action_cancel_add()

    def action_remove_selected(self) -> None:
        """`d`: the selected poll when the poll table has focus, else the selected watch."""
        focused = self.focused
        if focused is not None and focused.id == "polls":
            self.action_remove_poll()
        else:
            self.action_remove_watch()

    def action_remove_poll(self) -> None:
        self._remove_selected("#polls", "poll", self.session.remove_poll,
                              lambda key, spec: f"poll P{key} removed: {spec.canonical()}")

    def action_remove_watch(self) -> None:
        self._remove_selected("#watches", "watch", self.session.remove_watch,
                              lambda key, _none: f"removing watch #{key}...")

    def _remove_selected(self, table_id: str, what: str, remove, done) -> None:
        """Remove the row under the cursor of ``table_id`` through ``remove(int key)``."""
        table = self.query_one(table_id, DataTable)
        if table.row_count == 0:
            self.say(f"no {what} to remove", error=True)
            return
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        self._command(lambda: remove(int(key.value)),
                      lambda removed: done(key.value, removed))

    def action_freeze(self) -> None:
        self._command(self.session.freeze, "freezing the guest and dumping a vmcore...")

    def action_continue_guest(self) -> None:
        self._command(self.session.resume, "continuing...")

    def _command(self, send, doing) -> None:
        """Run ``send()``; say ``doing`` (or ``doing(result)``), or the one-line error."""
        try:
            result = send()
        except BadInput as exc:
            self.say(f"error: {exc}", error=True)
            return
        self.say(doing(result) if callable(doing) else doing)

    def action_show_hit(self) -> None:
        table = self.query_one("#hits", DataTable)
        if table.row_count == 0:
            self.say("no hit yet")
            return
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        self.show_hit(self._by_key[key.value])

    @on(DataTable.RowSelected, "#watches")
    def watch_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a watch: the latest hit of that watch."""
        row = next((r for r in self.session.snapshot().watches
                    if str(r.index) == event.row_key.value), None)
        mine = [h for h in self._hits if row is not None and h.config == row.config]
        if mine:
            self.show_hit(mine[-1])
        else:
            self.say("no hit for this watch yet")

    @on(DataTable.RowSelected, "#hits")
    def hit_selected(self, event: DataTable.RowSelected) -> None:
        self.show_hit(self._by_key[event.row_key.value])

    @on(DataTable.RowSelected, "#polls")
    def poll_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a poll: the latest hit of that poll."""
        mine = [h for h in self._poll_hits if str(h.poll_id) == event.row_key.value]
        if mine:
            self.show_hit(mine[-1])
        else:
            self.say("no hit for this poll yet")

    def action_toggle_console(self) -> None:
        self.query_one("#console", Log).toggle_class("hidden")

    def action_quit(self) -> None:
        """Close the machine first (the worker stops it in well under a second), then exit."""
        self.session.close()
        self.exit()
