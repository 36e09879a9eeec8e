"""How a run's seed reaches the guest: one kernel command-line word, per kind of guest.

The test kernel reads ``seed=S`` (its RNG and stack guard); a Linux guest passes an
unknown ``KEY=VALUE`` word to init as an environment variable, so a reproducer
reads ``$KSWGDB_SEED``. `kswgdb run --seed S` and every run of a campaign use
this one function, so a campaign's run is replayed by ``run --seed`` exactly.
"""

from __future__ import annotations

from kswgdb.qemu.guestcmd import SEPARATOR, split_command

#: The environment variable a Linux guest's init (and the reproducer it starts) sees.
LINUX_SEED_VARIABLE = "KSWGDB_SEED"


def seed_word(guest: str, seed: int) -> str:
    """The command-line word carrying ``seed`` to a ``guest`` ("kswtest" | "linux")."""
    if guest == "linux":
        return f"{LINUX_SEED_VARIABLE}={seed}"
    return f"seed={seed}"


def seeded_cmdline(cmdline: str, guest: str, seed: int | None) -> str:
    """``cmdline`` with the seed word after the kernel's words (the last word wins in
    both guests) and before a Linux guest's `` -- COMMAND`` (which is not the kernel's)."""
    if seed is None:
        return cmdline
    kernel, command = split_command(cmdline)
    words = " ".join(w for w in (kernel, seed_word(guest, seed)) if w)
    return f"{words}{SEPARATOR}{command}" if command is not None else words
