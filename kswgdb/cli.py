"""The ``kswgdb`` command: parse arguments, call the engine, render, pick the exit code.

The exit statuses are those of `kswgdb.exitcodes` (one table); `main` is the only
place that returns one to the shell. Every error reaches the user as one line:
``kswgdb: error: ...``; an exception no layer expected becomes one line naming
what failed and the debug log holding its traceback, status 3.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from kswgdb import __version__
from kswgdb.argtypes import positive_seconds, scenario_number, seconds_or_never, slot_count
from kswgdb.attach_cli import add_parser as attach_parser
from kswgdb.campaign.args import add_parser as campaign_parser
from kswgdb.errors import BadInput, KswError
from kswgdb.exitcodes import ExitStatus, signalled, unexpected
from kswgdb.helptext import document
from kswgdb.run.hang import DEFAULT_HANG_TIMEOUT

IMAGE_HELP = "image name or description file (default: the bundled kswtest)"
SCENARIO_HELP = "the test kernel's scenario N (README: 'The test kernel')"
ACCEL_HELP = ("accelerator; auto: KVM only where a probe saw its data watchpoints fire, "
              "else TCG (default: auto; `kswgdb accel` says which and why)")
CMDLINE_HELP = ("extra kernel command-line words; after ' -- ', a shell command the "
                "Linux image's init runs (the reproducer)")
ALLOW_UNARMED_HELP = ("a watch that was never armed is no failure: exit 0, not 4 (the "
                      "warning is still printed)")
QEMU_HELP = ("the qemu-system-x86_64 to run (default: $KSWGDB_QEMU, else the one on PATH; "
             "tested: 7.2 and 10.0)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kswgdb")     # descriptions and examples: kswgdb.helptext
    parser.add_argument("--version", action="version", version=f"kswgdb {__version__}")
    parser.add_argument("--qemu", default=None, metavar="PATH", help=QEMU_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot an image and watch stack slots")
    _watch_options(run, timeout=120.0, timeout_type=positive_seconds,
                   timeout_help="end the run after S seconds, said as such "
                                "(default: %(default)g)")
    run.add_argument("--json", action="store_true", help="print JSONL events instead of panels")
    run.add_argument("--allow-unarmed", action="store_true",
                     help=ALLOW_UNARMED_HELP)
    run.add_argument("--console", action="store_true",
                     help="stream the guest's console on stderr as it comes, each line "
                          "after a '|' (without it: its last lines when nothing was "
                          "caught; always in the event log)")

    boot = sub.add_parser("boot", help="boot an image without watching; show its console")
    boot.add_argument("image", nargs="?", default=None, help=IMAGE_HELP)
    boot.add_argument("--scenario", type=scenario_number, default=None, metavar="N",
                      help=SCENARIO_HELP)
    _machine_options(boot)
    _guest_additions(boot)
    boot.add_argument("--console", action="store_true",
                      help="stream the console on stderr as it comes, each line after a "
                           "'|' (without it: printed on stdout when the guest ends)")

    disasm = sub.add_parser("disasm", help="disassemble a function, mark canary and "
                                           "initialising stores, suggest fo")
    disasm.add_argument("func", help="the function (kernel, or a module of the image's "
                                      "module directory)")
    disasm.add_argument("--image", default=None, help=IMAGE_HELP)
    disasm.add_argument("--var", default=None,
                        help="suggest a watch on this local (NAME or NAME[i]) instead")
    disasm.add_argument("--so", default=None,
                        help="suggest a watch on SP+SO (SP in the body, after the prologue)")
    disasm.add_argument("--wl", default=None, help="with --so: bytes to watch (1, 2, 4, 8)")
    disasm.add_argument("--module", action="append", default=[], metavar="PATH.ko",
                        help="look for FUNC in this module too (repeatable)")

    symbols = sub.add_parser("symbols", help="list functions of an image's kernel")
    symbols.add_argument("pattern", nargs="?", default="",
                         help="a part of the name (default: every function)")
    symbols.add_argument("--image", default=None, help=IMAGE_HELP)

    sub.add_parser("accel", help="say which accelerator 'auto' picks here, and why")

    _tui_parser(sub)
    attach_parser(sub)
    campaign_parser(sub, _watch_options, positive_seconds)

    sub.add_parser("demo", help="scenario 3 of the test kernel, caught (what `make demo` runs)")
    document(parser)
    return parser


def _machine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qemu", default=argparse.SUPPRESS, metavar="PATH", help=QEMU_HELP)
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto", help=ACCEL_HELP)
    p.add_argument("--timeout", type=positive_seconds, default=120.0, metavar="S",
                   help="end the run after S seconds, said as such (default: %(default)g)")
    p.add_argument("--cmdline", default="", metavar="WORDS", help=CMDLINE_HELP)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"seconds out of range: {text!r}")
    return value


def _loopback(text: str) -> tuple[str, int]:
    from kswgdb.gdbstub.server import parse_loopback_address

    try:
        return parse_loopback_address(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tui_parser(sub) -> None:
    tui = sub.add_parser("tui", help="interactive screen: add and remove watches while the "
                                     "guest runs, freeze it, read hits and the console")
    _watch_options(tui, timeout=0.0, timeout_type=seconds_or_never,
                   timeout_help="freeze the guest after S seconds (default: never)")
    tui.add_argument("--paused", action="store_true",
                     help="stay frozen before the first guest instruction until `c`")
    tui.add_argument("--allow-unarmed", action="store_true",
                     help=ALLOW_UNARMED_HELP)


def _watch_options(p: argparse.ArgumentParser, timeout: float, timeout_type,
                   timeout_help: str) -> None:
    """The options `run` and `tui` share: same names, same meaning (`options_from_args`)."""
    p.add_argument("image", nargs="?", default=None, help=IMAGE_HELP)
    p.add_argument("--scenario", type=scenario_number, default=None, metavar="N",
                   help=SCENARIO_HELP)
    p.add_argument("--watch", "-w", action="append", default=[], metavar="CONFIG",
                   help="a KStackWatch config string, e.g. 'fn=s3_victim fo=0x23' (keys: fn "
                        "fo dp mw so wl ac ph var; `kswgdb disasm FUNC` suggests one; "
                        "repeatable)")
    p.add_argument("--poll", "-p", action="append", default=[], metavar="SPEC",
                   help="poll guest physical memory, e.g. 'pa=0x1146a8 len=8 to=0x33' "
                        "(keys: pa len to from any mask region interval on-hit once; "
                        "repeatable)")
    p.add_argument("--qemu", default=argparse.SUPPRESS, metavar="PATH", help=QEMU_HELP)
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto", help=ACCEL_HELP)
    p.add_argument("--timeout", type=timeout_type, default=timeout, metavar="S",
                   help=timeout_help)
    p.add_argument("--cmdline", default="", metavar="WORDS", help=CMDLINE_HELP)
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="the guest's seed: the test kernel's seed=S, a Linux guest's "
                        "KSWGDB_SEED=S environment word (replays a campaign's run)")
    p.add_argument("--on-hit", choices=("continue", "freeze"), default="continue",
                   help="freeze: stop the guest at the first hit, dump a vmcore, show how "
                        "to attach gdb")
    p.add_argument("--log", default=None, metavar="PATH",
                   help="event log path (JSONL, mode 0600); an existing file is appended "
                        "to (default: a new kswgdb-DATE-TIME-RANDOM.jsonl here)")
    p.add_argument("--slots", type=slot_count, default=None, metavar="N",
                   help="watchpoint slots under TCG (default 256; KVM always has 4)")
    p.add_argument("--backtrace", choices=("gdb", "fp"), default="auto",
                   help="how a hit's backtrace is unwound: gdb (DWARF CFI; the default "
                        "when gdb is installed) or fp (frame-pointer walk)")
    p.add_argument("--hang-timeout", type=_seconds, default=DEFAULT_HANG_TIMEOUT, metavar="S",
                   help="end with status 3 if the guest prints nothing, stops nowhere and "
                        "its clock does not tick for S seconds (default "
                        f"{DEFAULT_HANG_TIMEOUT:g}; 0: never)")
    p.add_argument("--engine", choices=("auto", "gdbstub", "plugin"), default=None,
                   help="what watches: the gdbstub (breakpoint stops) or the TCG plugin "
                        "inside QEMU >= 9.2 (no stop); auto (the default, or "
                        "$KSWGDB_ENGINE) takes the plugin where it can and says why not")
    p.add_argument("--gdb-listen", type=_loopback, default=None, metavar="127.0.0.1:PORT",
                   help="freeze at the first hit and lend the frozen guest, read-only, to "
                        "gdb on this loopback TCP port until Ctrl-C")
    _guest_additions(p)


def _guest_additions(p: argparse.ArgumentParser) -> None:
    """What a run adds to the image (`kswgdb.run.additions`): modules, disks, QEMU args."""
    p.add_argument("--module", action="append", default=[], metavar="PATH.ko",
                   help="a kernel module built for the image's kernel: put in the initramfs, "
                        "loaded before the command, its functions watchable (repeatable)")
    p.add_argument("--drive", action="append", default=[], metavar="PATH[,overlay]",
                   help="a disk image as a virtio disk: read-only, or with ,overlay writable "
                        "through a throw-away overlay; the file is never modified (repeatable)")
    p.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                   help="one more QEMU argument, one argv element each: "
                        "--qemu-arg=-device --qemu-arg=virtio-rng-pci (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    from kswgdb.qemu import reaper

    reaper.install()
    try:
        args = build_parser().parse_args(argv)
        args.argv = tuple(argv if argv is not None else sys.argv[1:])
        if args.command not in ("disasm", "symbols"):
            from kswgdb.qemu import binary

            binary.check_choice(args.qemu)   # a bad --qemu/KSWGDB_QEMU: exit 2 now
        if args.command in ("disasm", "symbols"):
            from kswgdb.filecommands import dispatch  # files only: no run machinery
        else:
            from kswgdb.commands import dispatch
        status = dispatch(args)
        signum = reaper.signalled()
        if signum == signal.SIGINT:
            # The handler's exception was lost on its way up (see reaper): the run
            # still ended because of the signal, so say so and keep its status.
            print("kswgdb: interrupted", file=sys.stderr)
            return ExitStatus.INTERRUPTED
        if signum is not None:
            print(f"kswgdb: terminated by {_signal_name(signum)}", file=sys.stderr)
            return signalled(signum)
        return int(status)
    except KswError as exc:
        print(f"kswgdb: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kswgdb: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except SystemExit as exc:
        # The reaper turns SIGTERM/SIGHUP into SystemExit(128 + signum) after
        # killing QEMU; say so in one line, keep the conventional status.
        if isinstance(exc.code, int) and exc.code > 128:
            print(f"kswgdb: terminated by {_signal_name(exc.code - 128)}", file=sys.stderr)
            return exc.code
        raise
    except Exception as exc:  # noqa: BLE001 - never a traceback, never status 1
        print(f"kswgdb: error: {unexpected(exc, list(argv) if argv is not None else sys.argv)}",
              file=sys.stderr)
        return ExitStatus.INFRA


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
