"""The subcommands behind ``kswgdb``: each parses nothing and prints what it is given.

Kept apart from `kswgdb.cli` (argument parsing) so the TUI and tests can call
the same functions, and apart from the engine so the engine never imports the UI.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

from rich.console import Console

from kswgdb import image as image_mod
from kswgdb.argtypes import check_against_image
from kswgdb.exitcodes import ExitStatus, status_of_run
from kswgdb.filecommands import cmd_disasm, cmd_symbols
from kswgdb.poll.poller import PollHit
from kswgdb.render.console import output_console
from kswgdb.render.hit import render_hit
from kswgdb.render.pollhit import render_poll_hit, render_poll_summary
from kswgdb.render.statusline import StatusLine
from kswgdb.render.summary import render_summary
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions, default_log_path, options_from_args
from kswgdb.run.progress import RunProgress
from kswgdb.run.rig import Sink
from kswgdb.symbols.slide import gdb_symbols
from kswgdb.watch.hits import Hit
from kswgdb.watch.scenarios import scenario_watch

#: How a wedged guest's run is said to have ended (kswgdb.run.hang).
HUNG = "the guest hung"
#: A run that ends without a hit, or badly, shows the guest's last console lines.
CONSOLE_TAIL_LINES = 20
#: The prefix of a guest console line on stderr (``--console``, and the last lines).
CONSOLE_PREFIX = "  | "
#: The test-kernel scenario the demo runs (3: silent corruption by another thread).
DEMO_SCENARIO = 3


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "boot":
        check_against_image(args)   # run and tui: `kswgdb.run.prepare` checks all
    handler = {
        "run": cmd_run, "boot": cmd_boot, "disasm": cmd_disasm, "symbols": cmd_symbols,
        "accel": cmd_accel, "demo": cmd_demo, "tui": cmd_tui, "campaign": _cmd_campaign,
        "attach": _cmd_attach,
    }[args.command]
    return handler(args)


def _cmd_campaign(args: argparse.Namespace) -> int:
    from kswgdb.campaign.command import cmd_campaign

    return cmd_campaign(args, getattr(args, "argv", ()))


def _cmd_attach(args: argparse.Namespace) -> int:
    from kswgdb.attach_cli import cmd_attach

    return cmd_attach(args)


def _stderr() -> Console:
    return output_console(stderr=True)


def cmd_run(args: argparse.Namespace) -> int:
    return run_and_render(options_from_args(args), json_out=args.json)


class TerminalSink(Sink):
    """A run's news on the terminal: hit panels on stdout (or JSONL with --json), status
    lines on stderr; the boot spinner stops when the guest runs or a hit comes, and on a
    terminal a live status line (`kswgdb.render.statusline`) takes its place until the
    run ends. Used as a context manager around the run: both are gone after it."""

    def __init__(self, out: Console, err: Console, json_out: bool,
                 console: bool = False) -> None:
        self.out, self.err, self.json_out, self.show_console = out, err, json_out, console
        live = not json_out and err.is_terminal
        self.spinner = err.status("booting the guest and arming watches...", spinner="dots") \
            if live else None
        self.status_line: StatusLine | None = None
        self._live = live

    def __enter__(self) -> TerminalSink:
        if self.spinner is not None:
            self.spinner.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_spinner()
        if self.status_line is not None:
            self.status_line.stop()

    def running(self, progress: Callable[[], RunProgress]) -> None:
        if self._live:
            self.status_line = StatusLine(self.err, progress)

    def status(self, text: str) -> None:
        self.err.print(f"[dim]{text}", soft_wrap=True)
        if text.startswith("guest running"):
            self.stop_spinner()     # the guest runs: nothing may print over a live spinner
            if self.status_line is not None:
                self.status_line.start()
        elif text.startswith("guest frozen") and self.status_line is not None:
            self.status_line.stop()     # lent to gdb: nothing runs any more

    def hit(self, hit: Hit) -> None:
        if not self.json_out:
            self.stop_spinner()
            with self._above_status():
                self.out.print(render_hit(hit))

    def poll_hit(self, hit: PollHit) -> None:
        if not self.json_out:
            with self._above_status():
                self.out.print(render_poll_hit(hit))

    def _above_status(self) -> contextlib.AbstractContextManager:
        """The status line off the screen while a panel goes to stdout (the same tty)."""
        return self.status_line.paused() if self.status_line is not None \
            else contextlib.nullcontext()

    def logged(self, line: str) -> None:
        if self.json_out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def console(self, line: str) -> None:
        if self.show_console:       # --console: the guest's console, live, on stderr
            self.err.print(CONSOLE_PREFIX + line, markup=False, highlight=False, soft_wrap=True)

    def stop_spinner(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()


def run_and_render(options: RunOptions, json_out: bool = False) -> int:
    out = output_console()
    err = _stderr()
    sink = TerminalSink(out, err, json_out, console=options.console)
    session = WatchSession(options, sink=sink)
    session.prepare()
    for resolved in session.resolved:
        err.print(f"[dim]watch {resolved.config.text or resolved.config.canonical()}: "
                  f"{resolved.describe()}", soft_wrap=True)
        for warning in resolved.warnings:
            err.print(f"[yellow]warning: {warning}")
    try:
        with sink:
            report = session.run()
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C, SIGTERM, SIGHUP: the run is over but what it found is not lost. The
        # summary goes out first; the CLI then says how it ended and picks the status.
        so_far = session.report_so_far()
        if so_far is not None:
            _render_report(so_far, options, out if not json_out else err)
        raise
    _render_report(report, options, out if not json_out else err)
    # What the guest or QEMU said last comes first: the error stays the last line.
    _console_tail(report, options)
    if report.fault:
        for line in report.qemu_stderr:
            print(f"qemu: {line}", file=sys.stderr)
        if report.qemu_log is not None:
            print(f"QEMU's log kept: {report.qemu_log}", file=sys.stderr)
        print(f"kswgdb: error: {report.fault}; {report.hit_count} hit(s) in the event log",
              file=sys.stderr)
    else:
        for line in report.unarmed:
            print(f"kswgdb: warning: {line}", file=sys.stderr)
    return status_of_run(report.hit_count + len(report.poll_hits), report.fault,
                         unarmed=bool(report.unarmed) and not options.allow_unarmed)


def _console_tail(report: RunReport, options: RunOptions) -> None:
    """The guest's last console lines on stderr when the run found nothing or failed.

    A reproducer that never ran (a typo, a missing file) says so on the console
    only: a run without a hit shows it rather than a bare "0 hit(s)". Not with
    ``--console``, which has shown every line already.
    """
    caught = report.hit_count + len(report.poll_hits)
    if options.console or not report.console_log or (
            caught and not report.fault and not report.unarmed):
        return
    shown = report.console_log[-CONSOLE_TAIL_LINES:]
    print(f"the guest's last console lines: ({len(shown)} of {len(report.console_log)}; "
          "all of them: --console, or the log's console events)", file=sys.stderr)
    for line in shown:
        print(CONSOLE_PREFIX + line, file=sys.stderr)


def _render_report(report: RunReport, options: RunOptions, out: Console) -> None:
    if report.summary or not report.polls:
        out.print(render_summary(report.summary))
    if report.pool:
        out.print(f"[dim]{report.pool}")
    if report.polls:
        out.print(render_poll_summary(report.polls))
    ending = report.result.reason
    if report.guest_exit is not None:
        ending = f"guest ended: {report.guest_exit.brief}"
        if report.guest_exit.panic:
            out.print(f"the guest kernel panicked: {report.guest_exit.panic}",
                      markup=False, style="bold")
    elif report.fault and report.fault.startswith(HUNG):
        ending = "guest wedged, ended by the hang watchdog"
    elif ending == "freeze" and options.on_hit == "detach":
        ending = "detached at the first hit (--on-hit detach), the guest runs on"
    elif ending == "deadline":
        ending = f"stopped after --timeout {options.timeout:g}s (guest still running)"
    elif ending == "mismatch":
        ending = "stopped: the running kernel does not match the symbol file"
    slide = report.slide
    kaslr = (f"; kaslr slide {slide.virtual:+#x}" if slide is not None
             and slide.found_by != "no KASLR" else "")
    out.print(f"[dim]{ending}; {report.seconds:.2f}s; {report.packets} packets, "
              f"{report.steps} steps; accelerator {report.accel.accel}; "
              f"backtraces {report.backtrace}{kaslr}", soft_wrap=True)
    if report.verdict:
        out.print(f"[dim]guest: {report.verdict}", soft_wrap=True)
    if options.log_path:
        out.print(f"[dim]event log: {options.log_path}", soft_wrap=True)
    if report.vmcore is not None:
        frozen = report.frozen
        ticks = f" (guest ticks {frozen.ticks})" if frozen and frozen.ticks is not None else ""
        out.print(f"[bold]guest frozen at the hit{ticks}; vmcore: {report.vmcore}", markup=True,
                  soft_wrap=True)
        inspect = frozen.inspect if frozen is not None else \
            f"gdb {gdb_symbols(report.symbols, report.slide)} {report.vmcore}"
        out.print(f"  inspect: {inspect}", markup=False, soft_wrap=True)
    for core in report.poll_vmcores:
        if core != report.vmcore:
            out.print(f"[dim]poll vmcore: {core}", markup=True, soft_wrap=True)
    hits = report.hit_count
    if report.polls:
        out.print(f"[bold {'red' if hits + len(report.poll_hits) else 'green'}]{hits} watch "
                  f"hit(s), {len(report.poll_hits)} poll hit(s)")
        return
    never = f", {len(report.unarmed)} watch(es) never armed" if report.unarmed else ""
    colour = "red" if hits else "yellow" if never else "green"
    out.print(f"[bold {colour}]{hits} hit(s){never}")


def cmd_boot(args: argparse.Namespace) -> int:
    from kswgdb.qemu.binary import selected_path
    from kswgdb.qemu.machine import Machine
    from kswgdb.run.additions import check_additions
    from kswgdb.symbols.elf import SymbolTable

    img = image_mod.load(args.image)
    symtab = SymbolTable.load(img.symbols) if args.module else None
    additions = check_additions(args.module, args.drive, args.qemu_arg, img, symtab,
                                selected_path()[0])
    out = output_console()
    with Machine(img, accel=args.accel, scenario=args.scenario, extra_cmdline=args.cmdline,
                 paused=False, **additions.machine_kwargs()) as machine:
        err = _stderr()
        err.print(f"[dim]accelerator: {machine.accel_decision.accel} "
                  f"({machine.accel_decision.reason})", soft_wrap=True)
        for line in additions.describe():
            err.print(line, style="dim", soft_wrap=True, markup=False)
        if args.console:            # live, on stderr, as `run --console` shows it
            machine.console.follow(lambda line: err.print(
                CONSOLE_PREFIX + line, markup=False, highlight=False, soft_wrap=True))
        ended = machine.wait_exit(args.timeout)
        for line in [] if args.console else machine.console.lines():
            out.print(line, markup=False, soft_wrap=True)
        out.print(f"[dim]guest ended: {ended}", soft_wrap=True)
        if ended.kind == "timeout":
            return ExitStatus.INFRA
    return ExitStatus.OK


def cmd_accel(args: argparse.Namespace) -> int:
    from kswgdb.qemu.accel import decide

    decision = decide("auto")
    output_console().print(f"{decision.accel}: {decision.reason}", soft_wrap=True)
    return ExitStatus.OK


def cmd_demo(args: argparse.Namespace) -> int:
    img = image_mod.load(None)
    watch = scenario_watch(img, DEMO_SCENARIO)
    _stderr().print(f"[bold]kswgdb demo[/]: scenario {DEMO_SCENARIO} (silent corruption) of "
                    f"{img.name}, watching with: [bold]{watch}", soft_wrap=True)
    options = RunOptions(image=None, scenario=DEMO_SCENARIO, watches=[watch],
                         log_path=default_log_path(), log_exclusive=True)
    return demo_status(run_and_render(options))


def demo_status(run_status: int) -> int:
    """The demo's exit status from its run's: caught is success (0), nothing caught is 5.

    A demo that shows nothing must not look like one that worked, so ``make demo``
    fails; a fault keeps the run's own status (3) and its one line.
    """
    if run_status == ExitStatus.HIT:
        return ExitStatus.OK
    if run_status == ExitStatus.OK:
        print(f"kswgdb: error: the demo caught nothing: scenario {DEMO_SCENARIO} ran to its "
              "end and no watch fired", file=sys.stderr)
        return ExitStatus.DEMO_MISSED
    return run_status


def cmd_tui(args: argparse.Namespace) -> int:
    from kswgdb.tui.command import run_tui  # lazy: textual is only needed here

    return run_tui(args)
