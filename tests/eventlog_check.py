"""Validates kswgdb event logs against the shipped JSON Schema (for the test suite).

`problems_in_file` names every bad line as ``PATH:LINE: event 'NAME': what is wrong``;
an event type the schema does not know is said as such, with where to add it.
The session hook in tests/conftest.py runs it over every log the tests wrote
(``*.jsonl`` under pytest's temporary directory, plus paths given to `register`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator

from kswgdb.watch.eventschema import SCHEMA_FILE, event_types, schema

#: Logs written outside pytest's temporary directory that the session must check too.
REGISTERED: list[Path] = []


def register(path: Path) -> Path:
    """Have the end-of-session check validate ``path`` as well; returns it."""
    REGISTERED.append(Path(path))
    return Path(path)


@cache
def _validator(name: str) -> Draft202012Validator:
    """The whole schema, entered at event ``name``'s definition: the same checks as its
    top-level ``allOf`` dispatch, without trying every other event's ``if`` on each line
    (a test run writes thousands of hits; jsonschema takes about 1 ms for one)."""
    return Draft202012Validator({**_checked_schema(), "allOf": [{"$ref": f"#/$defs/{name}"}]})


@cache
def _checked_schema() -> dict:
    Draft202012Validator.check_schema(schema())      # a broken schema fails loudly, once
    return schema()


def problems_in_line(text: str) -> list[str]:
    """What is wrong with one log line (empty: it is a valid event)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(record, dict):
        return ["not a JSON object"]
    name = record.get("event")
    if name is None:
        return ["no 'event' field"]
    if name not in event_types():
        return [f"unknown event type {name!r}: not in kswgdb/watch/{SCHEMA_FILE} (add it "
                "there, with its fields, and document it in docs/events.md)"]
    validator = _validator(name)
    if validator.is_valid(record):
        return []
    found = []
    for error in sorted(validator.iter_errors(record), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in error.path) or "(the event)"
        found.append(f"event {name!r}: {where}: {error.message}")
    return found


def problems_in_file(path: Path) -> list[str]:
    """Every problem of every line of ``path``, as ``PATH:LINE: message``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: unreadable: {exc}"]
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        found += [f"{path}:{number}: {p}" for p in problems_in_line(line)]
    return found


def logs_under(*roots: Path) -> list[Path]:
    """The event logs (``*.jsonl``) under ``roots`` and the registered ones, once each."""
    found = {p.resolve() for root in roots if root.is_dir() for p in root.rglob("*.jsonl")
             if p.is_file()}
    found |= {p.resolve() for p in REGISTERED if p.is_file()}
    return sorted(found)
