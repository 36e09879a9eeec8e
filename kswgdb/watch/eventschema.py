"""The event log's JSON Schema (package data beside this module) and its version.

``events.schema.json`` (JSON Schema draft 2020-12) describes one line of the
JSONL log `kswgdb.watch.hits.EventLog` writes; docs/events.md says the same in
words (a unit test keeps the two in step, and the test suite validates every log
it writes against the schema). ``SCHEMA_VERSION`` is what the ``start`` event
carries as ``schema``: raised when a field changes meaning or goes away, not
when one is added.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_FILE = "events.schema.json"


@cache
def schema() -> dict[str, Any]:
    """The schema, loaded once from the installed package."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def event_types() -> list[str]:
    """Every event name the schema knows, in its order."""
    return list(schema()["properties"]["event"]["enum"])


__all__ = ["SCHEMA_FILE", "SCHEMA_VERSION", "event_types", "schema"]
