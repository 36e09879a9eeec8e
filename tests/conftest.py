"""Session-wide test policy: the Debian-kernel suite opt-in, and the event-log check.

The Debian-kernel suite (tests/linux, minutes under TCG) stays out of a plain
``pytest``: it runs with ``make test-linux`` (which sets ``KSWGDB_LINUX_TESTS=1``)
or when a path inside tests/linux is named on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.eventlog_check import logs_under, problems_in_file

LINUX_TESTS = Path(__file__).parent / "linux"


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("KSWGDB_LINUX_TESTS") == "1":
        return True
    for arg in config.args:
        p = Path(arg.split("::")[0]).resolve()
        if p == LINUX_TESTS or LINUX_TESTS in p.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == LINUX_TESTS and not _asked_for(config):
        return True
    return None


# ---------------------------------------------------------------- event logs
# Every event log a test writes is validated against the schema kswgdb ships
# (kswgdb/watch/events.schema.json, docs/events.md) when the session ends: one
# invalid line fails the session, named by file and line. jsonschema is required
# (`pip install -e '.[dev]'`, as `make setup` does): without it nothing is collected.
# A test that writes a bad log on purpose keeps it out of pytest's temporary directory
# (tests/unit/test_event_schema.py); a log written elsewhere is added with
# `tests.eventlog_check.register(path)`.
_BASETEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def _event_logs_base(tmp_path_factory: pytest.TempPathFactory,
                     pytestconfig: pytest.Config) -> None:
    pytestconfig.stash[_BASETEMP] = tmp_path_factory.getbasetemp()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = session.config.stash.get(_BASETEMP, None)
    logs = logs_under(base) if base is not None else logs_under()
    problems = [p for log in logs for p in problems_in_file(log)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and logs:
        reporter.write("\n")
        reporter.write_line(f"event logs checked against the schema: {len(logs)} file(s), "
                            f"{len(problems)} problem(s)")
    if not problems:
        return
    for problem in problems[:50]:
        if reporter is not None:
            reporter.write_line(f"invalid event: {problem}", red=True)
    if len(problems) > 50 and reporter is not None:
        reporter.write_line(f"... and {len(problems) - 50} more", red=True)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
