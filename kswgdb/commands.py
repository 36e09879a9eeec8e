"""The subcommands behind ``kswgdb``: each parses nothing and prints what it is given.

Kept apart from `kswgdb.cli` (argument parsing) so the TUI and tests can call
the same functions, and apart from the engine so the engine never imports the UI.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from rich.console import Console

from kswgdb import image as image_mod
from kswgdb.argtypes import check_against_image
from kswgdb.errors import BadInput
from kswgdb.render.console import output_console
from kswgdb.render.hit import render_hit
from kswgdb.render.pollhit import render_poll_hit, render_poll_summary
from kswgdb.render.summary import render_summary
from kswgdb.symbols.slide import gdb_symbols
from kswgdb.watch.hits import Hit
from kswgdb.watch.scenarios import scenario_watch
from kswgdb.watch.session import RunOptions, RunReport, WatchSession

#: A wedged guest's run ends with its last console lines (kswgdb.watch.hang).
HUNG, HUNG_CONSOLE_LINES = "the guest hung", 10

EXIT_OK, EXIT_HIT, EXIT_INFRA, EXIT_UNARMED = 0, 1, 3, 4
#: `kswgdb demo` ran to the end and caught nothing: the demo failed (`make demo` fails).
EXIT_DEMO_MISSED = 5
#: The test-kernel scenario the demo runs (3: silent corruption by another thread).
DEMO_SCENARIO = 3


def dispatch(args: argparse.Namespace) -> int:
    check_against_image(args)
    handler = {
        "run": cmd_run, "boot": cmd_boot, "disasm": cmd_disasm, "symbols": cmd_symbols,
        "accel": cmd_accel, "demo": cmd_demo, "tui": cmd_tui,
    }[args.command]
    return handler(args)


def _stderr() -> Console:
    return output_console(stderr=True)


def default_log_path() -> Path:
    return Path.cwd() / f"kswgdb-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"


def cmd_run(args: argparse.Namespace) -> int:
    options = RunOptions(
        image=args.image, scenario=args.scenario, watches=args.watch, accel=args.accel,
        timeout=args.timeout, cmdline=args.cmdline, on_hit=args.on_hit,
        log_path=Path(args.log) if args.log else default_log_path(), slots=args.slots,
        polls=getattr(args, "poll", []),
        backtrace=args.backtrace,
        hang_timeout=args.hang_timeout, gdb_listen=args.gdb_listen,
        allow_unarmed=args.allow_unarmed,
    )
    if options.gdb_listen is not None:
        options.on_hit = "freeze"     # lending the guest to gdb means keeping it frozen
    return run_and_render(options, json_out=args.json)


def run_and_render(options: RunOptions, json_out: bool = False) -> int:
    out = output_console()
    err = _stderr()
    spinner = err.status("booting the guest and arming watches...", spinner="dots") \
        if not json_out and err.is_terminal else None

    def on_hit(hit: Hit) -> None:
        if not json_out:
            if spinner is not None:
                spinner.stop()
            out.print(render_hit(hit))

    def on_status(message: str) -> None:
        err.print(f"[dim]{message}", soft_wrap=True)
        if spinner is not None and message.startswith("guest running"):
            spinner.stop()      # the guest runs: nothing may print over a live spinner

    session = WatchSession(options, on_hit=on_hit, on_status=on_status,
                           log_echo=sys.stdout if json_out else None)
    session.on_poll_hit = lambda hit: None if json_out else out.print(render_poll_hit(hit))
    session.prepare()
    for resolved in session.resolved:
        err.print(f"[dim]watch {resolved.config.text or resolved.config.canonical()}: "
                  f"{resolved.describe()}", soft_wrap=True)
        for warning in resolved.warnings:
            err.print(f"[yellow]warning: {warning}")
    with spinner or contextlib.nullcontext():
        report = session.run()
    _render_report(report, options, out if not json_out else err)
    if report.fault:
        # What QEMU or the wedged guest said last comes first: the error stays the last line.
        if report.fault.startswith(HUNG):
            print("the guest's last console lines:", file=sys.stderr)
            for line in report.console_log[-HUNG_CONSOLE_LINES:]:
                print(f"  | {line}", file=sys.stderr)
        for line in report.qemu_stderr:
            print(f"qemu: {line}", file=sys.stderr)
        if report.qemu_log is not None:
            print(f"QEMU's log kept: {report.qemu_log}", file=sys.stderr)
        print(f"kswgdb: error: {report.fault}; {report.hit_count} hit(s) in the event log",
              file=sys.stderr)
        return EXIT_INFRA
    for line in report.unarmed:
        print(f"kswgdb: warning: {line}", file=sys.stderr)
    if report.hit_count or report.poll_hits:
        return EXIT_HIT
    return EXIT_UNARMED if report.unarmed and not options.allow_unarmed else EXIT_OK


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
        out.print(f"[bold]guest frozen at the hit; vmcore: {report.vmcore}", markup=True,
                  soft_wrap=True)
        out.print(f"  inspect: gdb {gdb_symbols(report.symbols, report.slide)} {report.vmcore}   "
                  f"(or: crash {report.symbols} {report.vmcore})", markup=False, soft_wrap=True)
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
    from kswgdb.qemu.machine import Machine

    img = image_mod.load(args.image)
    out = output_console()
    with Machine(img, accel=args.accel, scenario=args.scenario, extra_cmdline=args.cmdline,
                 paused=False) as machine:
        _stderr().print(f"[dim]accelerator: {machine.accel_decision.accel} "
                        f"({machine.accel_decision.reason})", soft_wrap=True)
        ended = machine.wait_exit(args.timeout)
        for line in machine.console.lines():
            out.print(line, markup=False, soft_wrap=True)
        out.print(f"[dim]guest ended: {ended}", soft_wrap=True)
        if ended.kind == "timeout":
            return 3
    return EXIT_OK


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
    request = disasm_request(args)
    listing = build_listing(program, args.func, var=request)
    if request.var is not None and all(v.name != request.var for v in listing.locals):
        raise BadInput(f"--var {args.var}: {listing.note}")
    output_console().print(render_disasm(listing))
    return EXIT_OK


def disasm_request(args: argparse.Namespace):
    """``--var``/``--so``/``--wl`` checked with the config parser's own rules."""
    from kswgdb.symbols.listing import WatchRequest
    from kswgdb.watch.config import parse_number, parse_var

    if args.var is not None and (args.so is not None or args.wl is not None):
        raise BadInput("--var takes its address and size from DWARF: drop --so/--wl")
    if (args.so is None) != (args.wl is None):
        raise BadInput("--so and --wl go together (SP offset and bytes to watch)")
    if args.var is not None:
        ref = parse_var(args.var)
        return WatchRequest(var=ref.name, index=ref.index)
    if args.so is not None:
        wl = parse_number(args.wl, "watch_len")
        if wl not in (1, 2, 4, 8):
            raise BadInput(f"--wl {args.wl}: a watch covers 1, 2, 4 or 8 bytes")
        return WatchRequest(so=parse_number(args.so, "sp_offset"), wl=wl)
    return WatchRequest()


def cmd_symbols(args: argparse.Namespace) -> int:
    from kswgdb.symbols.program import Program

    img = image_mod.load(args.image)
    program = Program.load(img.symbols)
    out = output_console()
    table = program.symtab
    found = sorted((s for s in table.symbols if s.kind == "func" and args.pattern in s.name),
                   key=lambda s: (s.name, s.addr))
    if not found:
        raise BadInput(f"no function matches {args.pattern!r} in {img.symbols}")
    for sym in found:
        # a static name several files define: say how a config picks this one
        pick = f"  fn={sym.name}@{sym.addr:#x}" if len(table.lookup_all(sym.name)) > 1 else ""
        out.print(f"{sym.addr:#018x} {sym.size:#7x} {sym.name}{pick}", markup=False,
                  soft_wrap=True)
    return EXIT_OK


def cmd_accel(args: argparse.Namespace) -> int:
    from kswgdb.qemu.accel import decide

    decision = decide("auto")
    output_console().print(f"{decision.accel}: {decision.reason}", soft_wrap=True)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    img = image_mod.load(None)
    watch = scenario_watch(img, DEMO_SCENARIO)
    _stderr().print(f"[bold]kswgdb demo[/]: scenario {DEMO_SCENARIO} (silent corruption) of "
                    f"{img.name}, watching with: [bold]{watch}", soft_wrap=True)
    options = RunOptions(image=None, scenario=DEMO_SCENARIO, watches=[watch],
                         log_path=default_log_path())
    return demo_status(run_and_render(options))


def demo_status(run_status: int) -> int:
    """The demo's exit status from its run's: caught is success (0), nothing caught is 5.

    A demo that shows nothing must not look like one that worked, so ``make demo``
    fails; a fault keeps the run's own status (3) and its one line.
    """
    if run_status == EXIT_HIT:
        return EXIT_OK
    if run_status == EXIT_OK:
        print(f"kswgdb: error: the demo caught nothing: scenario {DEMO_SCENARIO} ran to its "
              "end and no watch fired", file=sys.stderr)
        return EXIT_DEMO_MISSED
    return run_status


def cmd_tui(args: argparse.Namespace) -> int:
    from kswgdb.tui.command import run_tui  # lazy: textual is only needed here

    return run_tui(args)
