"""A small gdb/MI driver on pygdbmi that matches replies to commands by token.

pygdbmi's own ``write`` groups output by timing windows (it waits
``time_to_check_for_additional_output_sec``, 0.2 s by default, after every
command, and can hand back a reply to the wrong command). Here every command is
sent as ``N-command`` and we read until the result record carrying token N
(``N^done``, ``N^connected``, ``N^error``...), blocking on the pipe with select,
never waiting "a while". pygdbmi is only used to spawn gdb and parse MI lines.

gdb is started under ``setpriv --pdeathsig KILL`` when available, so it dies with
us even if we are killed; `close` always kills it.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import shutil
import time
from typing import Any

from pygdbmi.gdbcontroller import GdbController

from kswgdb.gdbstub.errors import GdbError


def gdb_command(gdb: str = "gdb") -> list[str]:
    """The command line for gdb in MI mode, tied to our lifetime when possible."""
    base = [gdb, "--interpreter=mi3", "-nx", "-q"]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--", *base]
    return base


class GdbMI:
    """One gdb process driven over MI; commands return their result record."""

    def __init__(self, command: list[str] | None = None, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.argv = command if command is not None else gdb_command()
        try:
            self._gdb = GdbController(command=self.argv, time_to_check_for_additional_output_sec=0)
        except (OSError, ValueError) as exc:
            raise GdbError(f"cannot start gdb ({' '.join(self.argv)}): {exc}") from exc
        proc = self._gdb.gdb_process
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        self._proc = proc
        self._fds = [proc.stdout.fileno(), proc.stderr.fileno()]
        self._tokens = itertools.count(1)
        self.output: list[dict[str, Any]] = []  # console/log/notify records, for diagnosis
        self._results: dict[int, dict[str, Any]] = {}

    @property
    def pid(self) -> int:
        """gdb's process id."""
        return self._proc.pid

    def send(self, command: str) -> int:
        """Write `command` with a fresh token and return the token (no waiting)."""
        if self._proc.poll() is not None:
            raise GdbError(f"gdb exited with status {self._proc.returncode}", sent=command)
        del self.output[:-200]  # keep a bounded tail for diagnosis
        token = next(self._tokens)
        self._gdb.write(f"{token}{command}", read_response=False)
        return token

    def wait(self, token: int, timeout: float | None = None, *, command: str = "") -> dict:
        """Read gdb's output until the result record of `token`; ``^error`` raises."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while token not in self._results:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GdbError("gdb did not answer in time", sent=command)
            self._read(remaining, command)
        rec = self._results.pop(token)
        if rec.get("message") == "error":
            payload = rec.get("payload") or {}
            msg = payload.get("msg", "") if isinstance(payload, dict) else str(payload)
            raise GdbError(f"gdb: {msg}", sent=command, received=msg)
        return rec

    def answered(self, token: int) -> bool:
        """True once the result of `token` is in (reads what is available, never blocks)."""
        if token not in self._results:
            self._read(0, "")
        return token in self._results

    def _read(self, timeout: float, command: str) -> None:
        """Parse whatever gdb wrote within `timeout`; file result records by token."""
        ready, _, _ = select.select(self._fds, [], [], timeout)
        if not ready:
            return
        records = self._gdb.get_gdb_response(timeout_sec=0, raise_error_on_timeout=False)
        if not records and self._proc.poll() is not None:
            raise GdbError(f"gdb exited with status {self._proc.returncode}", sent=command)
        for rec in records:
            if rec.get("type") == "result" and rec.get("token") is not None:
                self._results[int(rec["token"])] = rec
            else:
                self.output.append(rec)

    def command(self, command: str, timeout: float | None = None) -> dict:
        """Send one MI command and return its result record (``message``, ``payload``)."""
        return self.wait(self.send(command), timeout, command=command)

    def console(self, text: str, timeout: float | None = None) -> str:
        """Run a CLI command through ``-interpreter-exec console`` and return its text."""
        command = f"-interpreter-exec console {mi_quote(text)}"
        token = self.send(command)
        start = len(self.output)
        self.wait(token, timeout, command=command)
        return "".join(
            str(r.get("payload") or "") for r in self.output[start:] if r.get("type") == "console"
        )

    def close(self) -> None:
        """Kill gdb (no polite exit: it may be blocked on a dead target) and reap it."""
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            proc.wait(timeout=5)
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._gdb.gdb_process = None

    def __enter__(self) -> GdbMI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mi_quote(text: str) -> str:
    """Quote a path or argument for an MI command line (C-string rules)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cli_quote(path: str | object) -> str:
    """A file name as one word of a gdb CLI command (quoted when it has spaces or quotes)."""
    text = str(path)
    if any(c.isspace() or c in "\"'\\" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
