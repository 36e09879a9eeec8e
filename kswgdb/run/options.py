"""What a user asked for: one `RunOptions`, filled the same way for `run` and `tui`.

`options_from_args` is the one place that turns parsed command-line arguments
into options, so the two commands cannot drift on what a watch or poll option
means. Nothing here is checked: `kswgdb.run.prepare` does that.
"""

from __future__ import annotations

import argparse
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kswgdb.run.hang import DEFAULT_HANG_TIMEOUT

if TYPE_CHECKING:
    from kswgdb.image import Image


@dataclass
class RunOptions:
    """What a user asked for on the command line (or a test, or the benchmark)."""

    image: str | Path | Image | None = None     # an Image: loaded already (a cluster worker's)
    scenario: int | None = None
    watches: list[str] = field(default_factory=list)
    accel: str = "auto"
    timeout: float = 120.0             # run: give up; tui: freeze after (0: never)
    cmdline: str = ""
    on_hit: str = "continue"           # "continue" | "freeze"
    log_path: Path | None = None       # None: no event log
    log_exclusive: bool = False        # log_path is kswgdb's own per-run name: create, never append
    slots: int | None = None
    polls: list[str] = field(default_factory=list)   # --poll strings (physical memory)
    emulate: bool = True               # leave breakpoints by host emulation, not steps
    backtrace: str = "auto"            # "gdb" | "fp" | "auto" (gdb when installed)
    release_by_read: bool = False      # TCG: see releases by read watchpoints (readrelease)
    release_by_check: bool = True      # TCG: a canary's release seen by its check (checkrelease)
    hang_timeout: float = DEFAULT_HANG_TIMEOUT  # no console, stop or tick this long: a wedge
                                       # (0: never; see kswgdb.run.hang)
    gdb_listen: tuple[str, int] | None = None  # freeze: lend the frozen guest to gdb over TCP
    paused: bool = False               # tui: frozen before the first instruction until `c`
    allow_unarmed: bool = False        # a never-armed watch is no failure (exit 0, not 4)
    keep_hits: int | None = 1000       # hits kept in RunReport.hits (the log has them all)
    seed: int | None = None            # the guest's seed word (`kswgdb.run.seed`)
    console: bool = False              # run: stream the guest's console on stderr
    modules: list[str] = field(default_factory=list)    # --module .ko files (Linux guests)
    drives: list[str] = field(default_factory=list)     # --drive PATH[,overlay]
    qemu_args: list[str] = field(default_factory=list)  # --qemu-arg, one argv element each
    engine: str | None = None          # auto | gdbstub | plugin; None: $KSWGDB_ENGINE or auto
    attach: str | None = None          # attach: the gdbstub address of the user's QEMU
    qmp: str | None = None             # attach: its QMP socket, if given
    modules_dir: Path | None = None    # attach: the kernel modules' .ko files
    guest: str | None = None           # attach with a bare vmlinux: linux | kswtest


def default_log_path() -> Path:
    """A new file per run in the current directory (docs/events.md): the UTC start time
    and 8 random hex digits, created with O_EXCL (`RunOptions.log_exclusive`)."""
    return Path.cwd() / (f"kswgdb-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
                         f"-{secrets.token_hex(4)}.jsonl")


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The options of `kswgdb run` and `kswgdb tui` (same names, same meaning)."""
    options = RunOptions(
        image=args.image, scenario=args.scenario, watches=list(args.watch),
        accel=args.accel, timeout=args.timeout, cmdline=args.cmdline, on_hit=args.on_hit,
        log_path=Path(args.log) if args.log else default_log_path(), slots=args.slots,
        log_exclusive=not args.log,
        polls=list(args.poll), backtrace=args.backtrace, hang_timeout=args.hang_timeout,
        gdb_listen=args.gdb_listen, paused=getattr(args, "paused", False),
        allow_unarmed=getattr(args, "allow_unarmed", False), seed=getattr(args, "seed", None),
        console=getattr(args, "console", False),
        modules=list(getattr(args, "module", [])), drives=list(getattr(args, "drive", [])),
        qemu_args=list(getattr(args, "qemu_arg", [])),
        engine=getattr(args, "engine", None),
    )
    if options.gdb_listen is not None:
        options.on_hit = "freeze"     # lending the guest to gdb means keeping it frozen
    return options
