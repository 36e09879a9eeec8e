"""Checked number types for the command line, and the checks that need the image.

A number that makes no sense (a negative or NaN timeout, zero slots, a scenario the
image does not have, a poll beyond guest memory) used to run anyway and end in a
confusing status 0, 1 or 3. Every one is refused here, in one line with status 2,
before anything is started: the argparse types when the argument is read, and
`check_against_image` right after, once the image description is known.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from kswgdb.errors import BadInput

#: The longest run or boot kswgdb accepts (a little over a year: anything beyond is a typo).
MAX_SECONDS = 3.2e7
#: Watchpoint slots under TCG: each one slows guest accesses to its page; 64+ were
#: measured to work, beyond a thousand nothing is gained.
MAX_SLOTS = 1024


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of {what}: {text!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of {what}")
    return value


def positive_seconds(text: str) -> float:
    """A timeout that must run out at some point: > 0 and finite."""
    value = _number(text, "seconds")
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be more than 0 and at most {MAX_SECONDS:g} seconds")
    return value


def seconds_or_never(text: str) -> float:
    """A timeout where 0 means "never": >= 0 and finite."""
    value = _number(text, "seconds")
    if not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be 0 (never) or up to {MAX_SECONDS:g} seconds")
    return value


def _whole(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of {what}: {text!r}") from None


def slot_count(text: str) -> int:
    """``--slots``: 1 to `MAX_SLOTS` watchpoints at once."""
    value = _whole(text, "slots")
    if not 1 <= value <= MAX_SLOTS:
        raise argparse.ArgumentTypeError(f"{text!r}: must be from 1 to {MAX_SLOTS}")
    return value


def scenario_number(text: str) -> int:
    """``--scenario``: a non-negative number (the image's table is checked later)."""
    value = _whole(text, "scenario")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must not be negative")
    return value


def check_against_image(args: argparse.Namespace) -> None:
    """What needs the image description: the scenario table, polls within guest memory.

    Cheap (a TOML read), run before any watch is resolved or QEMU is started.
    """
    if getattr(args, "command", None) not in ("run", "boot", "tui"):
        return
    log = getattr(args, "log", None)
    if log and not Path(log).resolve().parent.is_dir():
        raise BadInput(f"--log {log}: no such directory {Path(log).resolve().parent}")
    from kswgdb import image as image_mod

    img = image_mod.load(args.image)
    img.check_scenario(args.scenario)
    if getattr(args, "accel", None) == "kvm":
        from kswgdb.qemu.accel import decide

        decide("kvm")       # refuses, with the reason, where KVM cannot fire a watchpoint
    polls = getattr(args, "poll", None) or []
    if polls:
        from kswgdb.watch.pollconfig import parse_poll

        for text in polls:
            spec = parse_poll(text)
            if spec.addr + spec.length > img.phys_limit:
                raise BadInput(
                    f"--poll {text!r}: pa {spec.addr:#x}+{spec.length} is beyond guest memory "
                    f"(image {img.name} has {img.memory} of RAM: nothing lies at or above "
                    f"{img.phys_limit:#x})")
