"""The README's example sessions, read from its fenced blocks, and their stable parts.

A session is a fenced block line ``$ kswgdb ...`` (continued by trailing ``\\``),
optionally piped into ``grep WORDS`` or ``cat``, followed by the output the README
shows, up to the next ``$ `` line or the end of the block. A following
``$ echo $?`` gives the exit status. A ``...`` line stands for output left out.

The stable part of a line is the line with every number and address masked, box
drawing and runs of spaces dropped: what must not change from one run to the next.
Absolute paths are masked too; lines whose content depends on the host or the moment
(the accelerator's reason, a clock) keep only their first word.

``python -m tests.readme_commands`` prints the current output of every session that
needs only the test kernel, to paste into the README when the output changed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
#: Sessions that need more than the test kernel (the Debian image, a patched image, a
#: cluster) run in tests/linux or not at all here.
NEEDS_MORE = re.compile(r"\.toml\b|tcp://")
#: Lines whose text after these words depends on the host, the clock or a file name.
HOST_DEPENDENT = ("accelerator:", "time ", "seen ")
_BOX = re.compile(r"[\u2500-\u257f]")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_DEC = re.compile(r"\d+(\.\d+)?")
_PATH = re.compile(r"(?<![\w.])(/[\w.+-]+)+/?")


@dataclass
class Session:
    """One ``$ kswgdb ...`` example of the README."""

    line: int                    # where the command starts in README.md (1-based)
    command: str                 # the whole command, continuation lines joined
    output: list[str] = field(default_factory=list)
    status: int | None = None    # from a following ``$ echo $?``

    @property
    def argv(self) -> list[str]:
        """The kswgdb part's words (after ``kswgdb``)."""
        return shlex.split(self.command.split(" | ")[0])[1:]

    @property
    def pipe(self) -> list[str]:
        """What the output goes through: ``grep WORDS`` or ``cat`` (never a shell)."""
        return [part.strip() for part in self.command.split(" | ")[1:]]

    @property
    def test_kernel_only(self) -> bool:
        return not NEEDS_MORE.search(self.command)


def sessions(text: str | None = None) -> list[Session]:
    """Every ``$ kswgdb`` session in the README's fenced blocks, in order."""
    lines = (README.read_text() if text is None else text).splitlines()
    found: list[Session] = []
    in_block, current = False, None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_block, current = not in_block, None
        elif in_block and line.startswith("$ "):
            command, start = line[2:], i + 1
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            if command.startswith("kswgdb "):
                current = Session(start, command)
                found.append(current)
            elif command.strip() == "echo $?" and current is not None and i + 1 < len(lines):
                i += 1
                current.status = int(lines[i].strip())
                current = None
            else:
                current = None
        elif in_block and current is not None:
            current.output.append(line)
        i += 1
    return found


def mask(text: str) -> str:
    """Numbers, addresses and absolute paths masked, box drawing and spacing dropped."""
    text = " ".join(_BOX.sub(" ", text).split())
    return _DEC.sub("#", _HEX.sub("0x#", _PATH.sub("PATH", text)))


def stable(line: str) -> str:
    """A README line's stable part (module docstring)."""
    text = " ".join(_BOX.sub(" ", line).split())
    for prefix in HOST_DEPENDENT:
        if text.startswith(prefix):
            return prefix.strip()
    return mask(text)


def run(session: Session, cwd: Path, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run a session as a user would, piped (stderr into the same stream), in ``cwd``."""
    proc = subprocess.run([sys.executable, "-m", "kswgdb", *session.argv], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "PYTHONPATH": str(README.parent)})
    out = proc.stdout.splitlines()
    for step in session.pipe:
        words = shlex.split(step)
        if words[0] == "grep":
            out = [ln for ln in out if words[-1] in ln]
        elif words != ["cat"]:
            raise AssertionError(f"README line {session.line}: unknown pipe {step!r}")
    proc.stdout = "\n".join(out)
    return proc


def missing(session: Session, output: str) -> list[str]:
    """The README's output lines whose stable part the real output does not have.

    The output is compared as one stream of words, so a panel line the README shows
    wrapped at another width (its rest on the next panel line) is still found.
    """
    stream = f" {mask(output)} "
    return [line for line in session.output
            if stable(line) not in ("", "...") and f" {stable(line)} " not in stream]


if __name__ == "__main__":
    import tempfile

    for s in sessions():
        if s.test_kernel_only:
            with tempfile.TemporaryDirectory() as tmp:
                proc = run(s, Path(tmp))
            print(f"--- README line {s.line}: $ {s.command}  (exit {proc.returncode})")
            print(proc.stdout)
