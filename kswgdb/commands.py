"""The subcommands behind ``kswgdb``: each parses nothing and prints what it is given.

Kept apart from `kswgdb.cli` (argument parsing) so the TUI and tests can call
the same functions, and apart from the engine so the engine never imports the UI.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from rich.console import Console

from kswgdb import image as image_mod
from kswgdb.errors import BadInput
from kswgdb.exitcodes import ExitStatus, status_of_run
from kswgdb.poll.poller import PollHit
from kswgdb.render.hit import render_hit
from kswgdb.render.pollhit import render_poll_hit, render_poll_summary
from kswgdb.render.summary import render_summary
from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions, default_log_path, options_from_args
from kswgdb.run.rig import Sink
from kswgdb.watch.hits import Hit
from kswgdb.watch.scenarios import scenario_watch


def dispatch(args: argparse.Namespace) -> ExitStatus:
    handler = {
        "run": cmd_run, "boot": cmd_boot, "disasm": cmd_disasm, "symbols": cmd_symbols,
        "accel": cmd_accel, "demo": cmd_demo, "tui": cmd_tui,
    }[args.command]
    return handler(args)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def cmd_run(args: argparse.Namespace) -> ExitStatus:
    return run_and_render(options_from_args(args), json_out=args.json)


class TerminalSink(Sink):
    """A run's news on the terminal: hit panels on stdout (or JSONL with --json), status
    lines on stderr."""

    def __init__(self, out: Console, err: Console, json_out: bool) -> None:
        self.out, self.err, self.json_out = out, err, json_out

    def status(self, text: str) -> None:
        self.err.print(f"[dim]{text}")

    def hit(self, hit: Hit) -> None:
        if not self.json_out:
            self.out.print(render_hit(hit))

    def poll_hit(self, hit: PollHit) -> None:
        if not self.json_out:
            self.out.print(render_poll_hit(hit))

    def logged(self, line: str) -> None:
        if self.json_out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def run_and_render(options: RunOptions, json_out: bool = False) -> int:
    out = Console(highlight=False)
    err = _stderr()
    session = WatchSession(options, sink=TerminalSink(out, err, json_out))
    session.prepare()
    for resolved in session.resolved:
        err.print(f"[dim]watch {resolved.config.text or resolved.config.canonical()}: "
                  f"{resolved.describe()}")
        for warning in resolved.warnings:
            err.print(f"[yellow]warning: {warning}")
    try:
        with err.status("booting the guest and arming watches...", spinner="dots") \
                if not json_out and err.is_terminal else contextlib.nullcontext():
            report = session.run()
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C, SIGTERM, SIGHUP: the run is over but what it found is not lost. The
        # summary goes out first; the CLI then says how it ended and picks the status.
        so_far = session.report_so_far()
        if so_far is not None:
            _render_report(so_far, options, out if not json_out else err)
        raise
    _render_report(report, options, out if not json_out else err)
    if report.fault:
        print(f"kswgdb: error: {report.fault}; {len(report.hits)} hit(s) in the event log",
              file=sys.stderr)
    return status_of_run(len(report.hits) + len(report.poll_hits), report.fault)


def _render_report(report: RunReport, options: RunOptions, out: Console) -> None:
    if report.summary or not report.polls:
        out.print(render_summary(report.summary))
    if report.polls:
        out.print(render_poll_summary(report.polls))
    ending = report.result.reason
    if report.guest_exit is not None:
        ending = f"guest ended: {report.guest_exit.brief}"
        if report.guest_exit.panic:
            out.print(f"the guest kernel panicked: {report.guest_exit.panic}",
                      markup=False, style="bold")
    elif ending == "deadline":
        ending = f"stopped after --timeout {options.timeout:g}s (guest still running)"
    out.print(f"[dim]{ending}; {report.seconds:.2f}s; {report.packets} packets, "
              f"{report.steps} steps; accelerator {report.accel.accel}; "
              f"backtraces {report.backtrace}")
    if report.verdict:
        out.print(f"[dim]guest: {report.verdict}")
    if options.log_path:
        out.print(f"[dim]event log: {options.log_path}")
    if report.vmcore is not None:
        out.print(f"[bold]guest frozen at the hit; vmcore: {report.vmcore}", markup=True)
        out.print(f"  inspect: gdb {report.symbols} {report.vmcore}   "
                  f"(or: crash {report.symbols} {report.vmcore})", markup=False)
    for core in report.poll_vmcores:
        if core != report.vmcore:
            out.print(f"[dim]poll vmcore: {core}", markup=True)
    hits = len(report.hits)
    if report.polls:
        out.print(f"[bold {'red' if hits + len(report.poll_hits) else 'green'}]{hits} watch "
                  f"hit(s), {len(report.poll_hits)} poll hit(s)")
        return
    out.print(f"[bold {'red' if hits else 'green'}]{hits} hit(s)")


def cmd_boot(args: argparse.Namespace) -> int:
    from kswgdb.qemu.machine import Machine

    img = image_mod.load(args.image)
    out = Console(highlight=False)
    with Machine(img, accel=args.accel, scenario=args.scenario, extra_cmdline=args.cmdline,
                 paused=False) as machine:
        _stderr().print(f"[dim]accelerator: {machine.accel_decision.accel} "
                        f"({machine.accel_decision.reason})")
        ended = machine.wait_exit(args.timeout)
        for line in machine.console.lines():
            out.print(line, markup=False)
        out.print(f"[dim]guest ended: {ended}")
        if ended.kind == "timeout":
            return ExitStatus.INFRA
    return ExitStatus.OK


def cmd_disasm(args: argparse.Namespace) -> int:
    from kswgdb.render.disasm import render_disasm
    from kswgdb.symbols.listing import build_listing
    from kswgdb.symbols.program import Program

    img = image_mod.load(args.image)
    program = Program.load(img.symbols)
    if not program.symtab.lookup_all(args.func):
        from kswgdb.watch.modules import find_module_function

        found = find_module_function(img.modules_dir, args.func)
        if found is not None:       # a module function (addresses are placeholders)
            program = found[1]
    Console(highlight=False).print(render_disasm(build_listing(program, args.func, var=args.var)))
    return ExitStatus.OK


def cmd_symbols(args: argparse.Namespace) -> int:
    from kswgdb.symbols.program import Program

    img = image_mod.load(args.image)
    program = Program.load(img.symbols)
    out = Console(highlight=False)
    names = [n for n in program.symtab.names("func") if args.pattern in n]
    if not names:
        raise BadInput(f"no function matches {args.pattern!r} in {img.symbols}")
    for name in sorted(names):
        sym = program.symtab.function(name)
        out.print(f"{sym.addr:#018x} {sym.size:#7x} {name}", markup=False)
    return ExitStatus.OK


def cmd_accel(args: argparse.Namespace) -> int:
    from kswgdb.qemu.accel import decide

    decision = decide("auto")
    Console(highlight=False).print(f"{decision.accel}: {decision.reason}")
    return ExitStatus.OK


def cmd_demo(args: argparse.Namespace) -> int:
    img = image_mod.load(None)
    watch = scenario_watch(img, 3)
    _stderr().print(f"[bold]kswgdb demo[/]: scenario 3 (silent corruption) of {img.name}, "
                    f"watching with: [bold]{watch}")
    options = RunOptions(image=None, scenario=3, watches=[watch], log_path=default_log_path())
    run_and_render(options)
    return ExitStatus.OK


def cmd_tui(args: argparse.Namespace) -> int:
    from kswgdb.tui.command import run_tui  # lazy: textual is only needed here

    return run_tui(args)
