"""The README's example sessions do what it says (issue 12).

Every ``$ kswgdb ...`` session of the README that needs only the test kernel is run
as a user would run it (piped, in an empty directory) and compared with the README:
every output line the README shows must be there, numbers and addresses aside
(`tests.readme_commands.stable`), and the exit status the README gives must be the
one the command ends with. The Debian-kernel sessions are tests/linux's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.readme_commands import missing, run, sessions

SESSIONS = [s for s in sessions() if s.test_kernel_only]



@pytest.mark.parametrize("session", SESSIONS, ids=lambda s: f"line{s.line}")
def test_readme_session(session, tmp_path: Path) -> None:
    proc = run(session, tmp_path)
    where = f"README.md line {session.line}: $ {session.command}"
    if session.status is not None:
        assert proc.returncode == session.status, f"{where}\n{proc.stdout[-3000:]}"
    lost = missing(session, proc.stdout)
    assert not lost, f"{where}: not in the output:\n" + "\n".join(lost) + \
        f"\n--- the output:\n{proc.stdout[-4000:]}"
