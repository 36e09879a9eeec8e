"""What makes two hits "the same bug": their `Signature`.

Two hits share a signature when the same instruction (writer function + offset)
wrote into the same watched target (victim function and canary / so / var) under
the same watch config. Addresses, tasks, CPUs and values differ from run to run
and are deliberately left out; the function size in ``s3_corrupt_write+0x51/0x82``
is dropped too (it adds nothing once the function is named).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kswgdb.errors import BadInput
from kswgdb.watch.config import parse_watch


@dataclass(frozen=True)
class Signature:
    writer: str            # "s3_corrupt_write+0x51" (or the raw pc when unknown)
    victim: str            # the watched function
    target: str            # "canary" | "so=0x10 wl=8" | "var=buf[9]"
    config: str            # the watch config as the user gave it

    @property
    def key(self) -> str:
        """One line that names the bug (also what is hashed into `ident`)."""
        return f"{self.writer} -> {self.victim} {self.target} [{self.config}]"

    @property
    def ident(self) -> str:
        """A short stable id for file names and JSON keys."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, str]:
        return {"id": self.ident, "key": self.key, "writer": self.writer,
                "victim": self.victim, "target": self.target, "config": self.config}


def watched_target(config: str) -> str:
    """The watched slot of a config string: ``canary``, ``so=.. wl=..`` or ``var=..``."""
    try:
        cfg = parse_watch(config)
    except BadInput:
        return "?"
    if cfg.var is not None:
        return f"var={cfg.var}"
    if cfg.watch_len:
        return f"so={cfg.sp_offset:#x} wl={cfg.watch_len}"
    return "canary"


def writer_site(symbol: str) -> str:
    """``func+0xoff/0xsize`` -> ``func+0xoff``; anything else unchanged."""
    return symbol.split("/", 1)[0]


def of_hit(hit: dict[str, Any]) -> Signature:
    """The signature of a hit as written to the event log (`Hit.to_json`)."""
    writer = hit.get("writer") or {}
    site = writer_site(str(writer.get("symbol") or writer.get("insn_addr") or "?"))
    config = str(hit.get("config", ""))
    return Signature(writer=site, victim=str(hit.get("watched_func", "?")),
                     target=watched_target(config), config=config)


def of_poll_hit(hit: dict[str, Any]) -> Signature:
    """A physical-memory poll hit: no writer is known, the poll is the target."""
    config = str(hit.get("config", ""))
    return Signature(writer="(unknown: poll)", victim=str(hit.get("label", "?")),
                     target=f"poll {hit.get('trigger', '?')}", config=config)
