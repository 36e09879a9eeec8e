"""Every check that can be made before QEMU starts, for every driver: `prepare`.

`prepare(options) -> Plan` loads the image and its symbols, resolves every
watch (kernel and module functions), parses every poll, decides the
accelerator and the backtrace mode, and checks the stack reach, the KVM
alignment, the kernel/symbols match, the numbers, the event-log path and the
``--gdb-listen`` port, which is bound here so a busy port is bad input too.
Any problem is one `BadInput` line (exit 2) with nothing started. The only
thing a `Plan` holds open is that bound port: `Plan.close` (or the rig that
takes it over) releases it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from kswgdb import image as image_mod
from kswgdb.argtypes import check_polls_fit
from kswgdb.errors import BadInput
from kswgdb.gdb.backtrace import gdb_available
from kswgdb.gdbstub.server import Listener
from kswgdb.plugin.choice import EngineChoice, RunShape, choose
from kswgdb.poll.config import PollSpec, parse_polls
from kswgdb.qemu.accel import AccelDecision, decide
from kswgdb.qemu.binary import selected_path as selected_qemu
from kswgdb.run.additions import Additions, check_additions
from kswgdb.run.attach import attached_accel, attached_image, check_attach_options
from kswgdb.run.options import RunOptions
from kswgdb.run.seed import seeded_cmdline
from kswgdb.symbols.match import check_kernel_matches
from kswgdb.symbols.program import Program
from kswgdb.watch.checks import check_alignment, check_stack_reach, with_alignment_warning
from kswgdb.watch.config import parse_watches
from kswgdb.watch.guest import GuestLayout
from kswgdb.watch.layout import exit_hook_address, layout_for
from kswgdb.watch.modules import ModuleWatch, module_files, resolve_in_module
from kswgdb.watch.resolve import ResolvedWatch, resolve_watch
from kswgdb.watch.spec import ArmSpec

BACKTRACE_WHAT = {
    "gdb": "gdb (DWARF CFI unwinder, through a read-only relay of the stub connection)",
    "fp": "frame-pointer walk (RBP chain)",
}


@dataclass
class Plan:
    """A checked run, ready to wire: what `open_rig` needs and nothing it must ask again."""

    options: RunOptions
    image: image_mod.Image
    program: Program
    layout: GuestLayout
    accel: AccelDecision
    backtrace_mode: str
    #: Kernel-function watches (armed from the start), in command-line order.
    resolved: list[ResolvedWatch] = field(default_factory=list)
    specs: list[ArmSpec] = field(default_factory=list)
    #: Watches on module functions, armed when the module loads.
    module_watches: list[ModuleWatch] = field(default_factory=list)
    poll_specs: list[PollSpec] = field(default_factory=list)
    exit_hook: int | None = None
    #: The ``--gdb-listen`` port, bound before boot (None without the option).
    listener: Listener | None = None
    #: ``--module``, ``--drive``, ``--qemu-arg``, checked.
    additions: Additions = field(default_factory=Additions)
    #: Which engine watches (``--engine``: `kswgdb.plugin.choice`), and why.
    engine: EngineChoice = field(default_factory=lambda: EngineChoice("gdbstub", "default"))

    @property
    def watches(self) -> list[ResolvedWatch]:
        """Every watch, kernel then module, for display and the event log."""
        return self.resolved + [m.resolved for m in self.module_watches]

    @property
    def module_files(self) -> dict[str, Path]:
        """Module name -> .ko for every module a watch or a backtrace may meet."""
        return self.additions.module_files or module_files(self.image.modules_dir)

    @property
    def cmdline(self) -> str:
        """The extra kernel command line, with the seed word when a seed was given."""
        return seeded_cmdline(self.options.cmdline, self.image.guest, self.options.seed)

    @property
    def vmcore_dir(self) -> Path:
        log = self.options.log_path
        return log.parent if log is not None else Path.cwd()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def prepare(options: RunOptions, *, require_watch: bool = True) -> Plan:
    """Check ``options``; `BadInput` on the first problem, with nothing left open.

    ``require_watch``: a one-shot run with neither a watch nor a poll would
    watch nothing (and exit 0 by accident); an interactive session may start
    empty and add watches later.
    """
    opts = options
    poll_specs = parse_polls(list(opts.polls))
    if require_watch and not opts.watches and not poll_specs:
        raise BadInput("no --watch given (and no --poll): nothing to watch "
                       "(try `kswgdb disasm FUNC`)")
    check_numbers(opts)
    if opts.attach is not None:
        check_attach_options(opts)
        image = attached_image(opts)
    else:
        image = image_mod.load(opts.image)
    image.check_scenario(opts.scenario)
    check_polls_fit(image, poll_specs)
    program = Program.load(image.symbols)
    additions = check_additions(opts.modules, opts.drives, opts.qemu_args, image,
                                program.symtab, selected_qemu()[0])
    backtrace_mode = resolve_backtrace_mode(opts.backtrace)
    resolved: list[ResolvedWatch] = []
    module_watches: list[ModuleWatch] = []
    for cfg in parse_watches(list(opts.watches)) if opts.watches else []:
        in_module = None
        if not program.symtab.lookup_all(cfg.func):
            in_module = resolve_in_module(cfg, additions.module_files)
        if in_module is not None:
            module_watches.append(in_module)
        else:
            resolved.append(resolve_watch(cfg, program))
    layout = layout_for(program, image.guest)
    for watch in resolved:
        check_stack_reach(watch, layout.thread_size)
    resolved = [with_alignment_warning(r) for r in resolved]
    check_kernel_matches(image.kernel, image.symbols,
                         sorted({f"{r.function.name}@{r.function.addr:#x}" for r in resolved}))
    accel = decide(opts.accel) if opts.attach is None else attached_accel(opts.accel)
    for watch in resolved + [m.resolved for m in module_watches]:
        check_alignment(watch, accel.accel)
    if opts.log_path is not None:
        check_log_path(opts.log_path)
    specs = [r.to_arm_spec(read_release=opts.release_by_read,
                           check_release=opts.release_by_check) for r in resolved]
    engine = choose(opts.engine, RunShape(
        specs, module_watches=len(module_watches), polls=len(poll_specs),
        gdb_listen=opts.gdb_listen is not None, backtrace=opts.backtrace,
        interactive=not require_watch, accel=accel.accel,
        release_by_read=opts.release_by_read, attached=opts.attach is not None))
    if engine.engine == "plugin":
        backtrace_mode = "fp"       # the plugin walks the writer's frame pointers itself
    plan = Plan(options=opts, image=image, program=program, layout=layout, accel=accel,
                backtrace_mode=backtrace_mode, resolved=resolved, specs=specs,
                module_watches=module_watches, additions=additions, engine=engine,
                poll_specs=poll_specs, exit_hook=exit_hook_address(program, layout))
    if opts.gdb_listen is not None:
        plan.listener = bind_gdb_listen(opts.gdb_listen)     # last: nothing fails after it
    return plan


def check_numbers(opts: RunOptions) -> None:
    if opts.timeout < 0:
        raise BadInput(f"--timeout must not be negative, not {opts.timeout:g}")
    if opts.hang_timeout < 0:
        raise BadInput(f"--hang-timeout must not be negative, not {opts.hang_timeout:g}")
    if opts.slots is not None and opts.slots < 1:
        raise BadInput(f"--slots must be at least 1, not {opts.slots}")
    if opts.seed is not None and not 0 <= opts.seed < 2**64:
        raise BadInput(f"--seed must be between 0 and 2**64-1, not {opts.seed}")
    if opts.on_hit not in ("continue", "freeze") and not (
            opts.on_hit == "detach" and opts.attach is not None):
        raise BadInput(f"--on-hit {opts.on_hit!r}: expected continue or freeze")


def resolve_backtrace_mode(requested: str, gdb: str = "gdb") -> str:
    """``auto`` is gdb when it is installed, else the frame-pointer walk."""
    if requested == "auto":
        return "gdb" if gdb_available(gdb) else "fp"
    if requested == "gdb" and not gdb_available(gdb):
        raise BadInput("--backtrace gdb: gdb is not installed (install gdb or use "
                       "--backtrace fp)")
    if requested not in BACKTRACE_WHAT:
        raise BadInput(f"--backtrace {requested!r}: expected gdb or fp")
    return requested


def check_log_path(path: Path) -> None:
    """The event log can be created (or appended to) at ``path``: else one line.

    Tried for real, as the run will: a missing or non-directory parent, a
    directory, a read-only or pseudo file system (/sys, /proc) all fail here,
    not at the first event. A file created by the check is removed again.
    """
    if path.is_dir():
        raise BadInput(f"--log {path}: is a directory (give a file name)")
    existed = path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT:
            why = f"no such directory {path.parent}"
        elif exc.errno == errno.ENOTDIR:
            why = f"{path.parent} is not a directory"
        raise BadInput(f"--log {path}: {why}") from None
    os.close(fd)
    if not existed:
        os.unlink(path)


def bind_gdb_listen(address: tuple[str, int]) -> Listener:
    """Bind the ``--gdb-listen`` port now, so a busy port is found before boot."""
    try:
        return Listener(port=address[1])
    except OSError as exc:
        raise BadInput(f"--gdb-listen {address[0]}:{address[1]}: "
                       f"{exc.strerror or exc}") from None
