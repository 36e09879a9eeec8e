"""Hit records and the JSONL event log they are appended to.

A hit is the one piece of evidence a user may have waited a week for, so it is
written to the log (flushed and fsynced) *before* anything tries to render it:
a crash in rendering, a Ctrl-C or a dying QEMU cannot lose it.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from kswgdb.symbols.lines import SourceLine


@dataclass(frozen=True)
class BacktraceFrame:
    level: int
    pc: int
    symbol: str            # "name+0xoff/0xsize" or "0x..." when unknown
    source: SourceLine | None = None


@dataclass(frozen=True)
class TaskInfo:
    """A guest task as the kernel names it (``task`` is its identity: struct address)."""

    task: int
    pid: int | None = None
    name: str = "?"

    def __str__(self) -> str:
        pid = f"/{self.pid}" if self.pid is not None else ""
        return f"{self.name}{pid}"


@dataclass(frozen=True)
class Writer:
    """The instruction that performed the write (x86 traps *after* the store)."""

    pc_reported: int       # where the vCPU stopped
    insn_addr: int         # the store itself
    symbol: str            # "s3_corrupter+0x1c/0x60"
    function: str          # "s3_corrupter"
    disasm: str            # "mov qword ptr [rax], rdx"
    source: SourceLine | None = None
    context: tuple[tuple[int, str], ...] = ()   # nearby instructions, for rendering


@dataclass(frozen=True)
class Hit:
    """One caught write into a watched stack slot."""

    seq: int
    wall_time: float
    guest_time: int | None
    cpu: int
    config: str
    addr: int
    length: int
    what: str              # "canary of s3_victim", "local mark of s2_recurse", "sp+0x10 of f"
    watched_func: str
    depth: int
    old: str               # hex, guest byte order as read
    new: str
    owner: TaskInfo
    writer_task: TaskInfo
    writer: Writer
    registers: dict[str, int] = field(default_factory=dict)
    backtrace: tuple[BacktraceFrame, ...] = ()
    interrupt: bool = False
    unchanged: bool = False   # the store wrote the value already there

    def to_json(self) -> dict[str, Any]:
        """The JSONL ``hit`` event: values as the panel shows them (``old``/``new``,
        the slot's little-endian number), the guest bytes beside them (``*_bytes``)."""
        data = asdict(self)
        data["event"] = "hit"
        data["addr"] = hex(self.addr)
        data.update(value_fields(self.old, self.new))
        data["registers"] = {k: hex(v) for k, v in self.registers.items()}
        data["owner"]["task"] = hex(self.owner.task)
        data["writer_task"]["task"] = hex(self.writer_task.task)
        data["writer"]["pc_reported"] = hex(self.writer.pc_reported)
        data["writer"]["insn_addr"] = hex(self.writer.insn_addr)
        data["writer"]["context"] = [[hex(a), t] for a, t in self.writer.context]
        for frame in data["backtrace"]:
            frame["pc"] = hex(frame["pc"])
        return data


def value_fields(old: str, new: str) -> dict[str, str | None]:
    """An event's ``old``/``new`` (the little-endian number, "0x...", for 1 to 8 bytes,
    else null) and ``old_bytes``/``new_bytes`` (the bytes in guest order, hex)."""
    def number(hexbytes: str) -> str | None:
        raw = bytes.fromhex(hexbytes)
        return f"{int.from_bytes(raw, 'little'):#0{2 + 2 * len(raw)}x}" if 0 < len(raw) <= 8 \
            else None

    return {"old": number(old), "new": number(new), "old_bytes": old, "new_bytes": new}


def slot_value(hexbytes: str) -> str:
    """Guest bytes as the little-endian number a 1/2/4/8-byte slot holds (else hex bytes)."""
    raw = bytes.fromhex(hexbytes)
    if len(raw) in (1, 2, 4, 8):
        return f"{int.from_bytes(raw, 'little'):#0{2 + 2 * len(raw)}x}"
    return raw.hex()


class EventLog:
    """An append-only JSONL file (mode 0600): one event per line, hits fsynced.

    Every line carries the event's name, its wall-clock ``time`` (Unix seconds) and
    the ``run_id`` shared by every event of one run, so a script can tell runs apart
    even in a file given to several runs with ``--log``. docs/events.md and the JSON
    Schema beside this module (`kswgdb.watch.eventschema`) say what each event holds.

    ``exclusive``: the file must not exist yet (a name kswgdb chose for this run):
    created with O_EXCL, so two runs never share it.
    """

    def __init__(self, path: Path | None, echo: IO[str] | None = None, *,
                 run_id: str | None = None, exclusive: bool = False) -> None:
        self.path = path
        self.run_id = run_id or new_run_id()
        self._echo = echo
        self._fh: IO[str] | None = None
        #: The engine, the poller and the console reader write from their own threads.
        self._lock = threading.Lock()
        if path is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            fd = os.open(path, flags | (os.O_EXCL if exclusive else 0), 0o600)
            os.fchmod(fd, 0o600)   # an existing log, or a loose umask, gets tightened too
            self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, event: str, sync: bool = False, **data: Any) -> None:
        """One event: ``data`` are its fields (docs/events.md), after the common ones."""
        record = {"event": event, "time": round(time.time(), 6), "run_id": self.run_id, **data}
        self._emit(json.dumps(record, default=_jsonable), sync)

    def write_hit(self, hit: Hit) -> None:
        fields = hit.to_json()
        self.write(fields.pop("event"), sync=True, **fields)

    def _emit(self, line: str, sync: bool) -> None:
        with self._lock:
            for fh in (self._fh, self._echo):
                if fh is None:
                    continue
                fh.write(line + "\n")
                fh.flush()
            if sync and self._fh is not None:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def new_run_id() -> str:
    """A run's identity in its events: 32 random hex digits (a UUID4)."""
    return uuid.uuid4().hex


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
