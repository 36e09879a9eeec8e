"""The command line that replays one run of a campaign exactly: `replay_argv`.

Built from the campaign's run template (the same `RunOptions` every run got) and
the run's seed, so ``kswgdb run ... --seed S`` boots the same guest with the same
watches, polls and command line; its event log goes beside the campaign's.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from kswgdb.run.options import RunOptions


def replay_argv(opts: RunOptions, seed: int, log: Path | None = None,
                qemu: str | None = None) -> list[str]:
    argv = ["kswgdb"] + (["--qemu", qemu] if qemu else []) + ["run"]
    if opts.image is not None:
        argv.append(str(opts.image))
    if opts.scenario is not None:
        argv += ["--scenario", str(opts.scenario)]
    for watch in opts.watches:
        argv += ["--watch", watch]
    for poll in opts.polls:
        argv += ["--poll", poll]
    if opts.cmdline:
        argv += ["--cmdline", opts.cmdline]
    for module in opts.modules:
        argv += ["--module", str(Path(module).resolve())]
    for drive in opts.drives:
        argv += ["--drive", drive]
    argv += [f"--qemu-arg={arg}" for arg in opts.qemu_args]
    argv += ["--seed", str(seed), "--accel", opts.accel, "--timeout", f"{opts.timeout:g}"]
    if opts.on_hit != "continue":
        argv += ["--on-hit", opts.on_hit]
    if opts.slots is not None:
        argv += ["--slots", str(opts.slots)]
    if opts.backtrace != "auto":
        argv += ["--backtrace", opts.backtrace]
    if opts.engine is not None:
        argv += ["--engine", opts.engine]
    argv += ["--hang-timeout", f"{opts.hang_timeout:g}"]     # always: its default may change
    if opts.allow_unarmed:
        argv.append("--allow-unarmed")
    if log is not None:
        argv += ["--log", str(log)]
    return argv


def replay_line(opts: RunOptions, seed: int, log: Path | None = None,
                qemu: str | None = None) -> str:
    return shlex.join(replay_argv(opts, seed, log, qemu))
