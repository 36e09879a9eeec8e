"""The ``attach`` subcommand: its arguments and its options (light: imported by the CLI).

`kswgdb attach ADDRESS --vmlinux PATH --watch CONFIG` watches a QEMU the user
started (`kswgdb.run.attach`); everything after the options is `kswgdb run`'s
path: the same `RunOptions`, `prepare`, rig, rendering and exit statuses.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from kswgdb.argtypes import seconds_or_never, slot_count


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``kswgdb attach``: `run`'s watch options, for a QEMU someone else started."""
    p = sub.add_parser(
        "attach", help="watch a QEMU you started (-gdb/-s, optionally -qmp); detach at the "
                       "end, leaving it running")
    p.add_argument("address", metavar="GDBSTUB",
                   help="its gdbstub: unix:PATH or 127.0.0.1:PORT (QEMU -s: localhost:1234)")
    p.add_argument("--qmp", default=None, metavar="unix:PATH",
                   help="its QMP socket (-qmp unix:PATH,server=on,wait=off): run state, busy "
                        "stub check, vmcore for --on-hit freeze")
    symbols = p.add_mutually_exclusive_group()
    symbols.add_argument("--vmlinux", default=None, metavar="PATH",
                         help="the running kernel's ELF with symbols (vmlinux)")
    symbols.add_argument("--image", default=None, metavar="NAME",
                         help="an image description (.toml) naming the symbols instead")
    p.add_argument("--modules-dir", default=None, metavar="DIR",
                   help="where the kernel's modules (.ko with symbols) are")
    p.add_argument("--guest", choices=("linux", "kswtest"), default=None,
                   help="the kernel's flavour with --vmlinux (default: linux when it has "
                        "start_kernel)")
    p.add_argument("--watch", "-w", action="append", default=[], metavar="CONFIG",
                   help="a KStackWatch config string, e.g. 'fn=s3_victim fo=0x23' (repeatable)")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                   help="what the attached QEMU runs (default: assumed TCG)")
    p.add_argument("--timeout", type=seconds_or_never, default=0.0, metavar="S",
                   help="detach after S seconds (default: never; Ctrl-C detaches)")
    p.add_argument("--on-hit", choices=("continue", "detach", "freeze"), default="continue",
                   help="detach: detach at the first hit; freeze: also write a vmcore "
                        "(needs --qmp) first")
    p.add_argument("--log", default=None, metavar="PATH",
                   help="event log path (JSONL, mode 0600); an existing file is appended "
                        "to (default: a new kswgdb-DATE-TIME-RANDOM.jsonl here)")
    p.add_argument("--slots", type=slot_count, default=None,
                   help="watchpoint slots under TCG (KVM always has 4)")
    p.add_argument("--backtrace", choices=("gdb", "fp"), default="auto",
                   help="how a hit's backtrace is unwound (default: gdb when installed)")
    p.add_argument("--json", action="store_true", help="print JSONL events instead of panels")
    p.add_argument("--allow-unarmed", action="store_true",
                   help="a watch that was never armed is no failure: exit 0, not 4")


def cmd_attach(args: argparse.Namespace) -> int:
    from kswgdb.commands import run_and_render
    from kswgdb.run.options import RunOptions, default_log_path

    options = RunOptions(
        image=args.vmlinux or args.image, watches=list(args.watch), accel=args.accel,
        timeout=args.timeout or math.inf, on_hit=args.on_hit,
        log_path=Path(args.log) if args.log else default_log_path(), slots=args.slots,
        backtrace=args.backtrace, hang_timeout=0.0, allow_unarmed=args.allow_unarmed,
        attach=args.address, qmp=args.qmp,
        modules_dir=Path(args.modules_dir) if args.modules_dir else None, guest=args.guest)
    return run_and_render(options, json_out=args.json)
