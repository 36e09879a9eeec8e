"""The event log's contract: the JSON Schema, docs/events.md and what the code writes agree.

docs/events.md and kswgdb/watch/events.schema.json must name the same events and
fields (a helper adding an event is told which side is missing it); the log of a
run, default name and all, validates; the session-wide check (tests/conftest.py)
really fails a session that wrote a bad event.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import jsonschema
import pytest

from kswgdb.run.options import RunOptions, default_log_path
from kswgdb.watch.eventschema import SCHEMA_VERSION, event_types, schema
from kswgdb.watch.hits import EventLog
from tests.eventlog_check import problems_in_file, problems_in_line

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "events.md"
RUN_ID = "0123456789abcdef0123456789abcdef"


def doc_sections() -> dict[str, str]:
    """``### `name` `` sections of docs/events.md: name -> the section's text."""
    text = DOC.read_text()
    parts = re.split(r"^### `([a-z-]+)`\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def table_fields(section: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))


def nested_names(node: dict, defs: dict) -> set[str]:
    """Property names below an event's top level (objects, arrays, $refs followed)."""
    names: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        if "$ref" in item and item["$ref"] != "#/$defs/common":
            stack.append(defs[item["$ref"].rsplit("/", 1)[1]])
        for name, sub in item.get("properties", {}).items():
            names.add(name)
            stack.append(sub)
        for key in ("items", "additionalProperties"):
            stack.append(item.get(key))
        stack.extend(item.get("prefixItems", []))
    return names


def test_the_schema_is_valid_draft_2020_12_and_found_as_package_data() -> None:
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$defs"]["start"]["properties"]["schema"] == {"const": SCHEMA_VERSION}


def test_every_event_type_is_documented_and_every_documented_one_is_in_the_schema() -> None:
    documented, known = set(doc_sections()), set(event_types())
    assert not known - documented, f"in the schema, not in docs/events.md: {known - documented}"
    assert not documented - known, f"in docs/events.md, not in the schema: {documented - known}"
    dispatched = {e["if"]["properties"]["event"]["const"] for e in schema()["allOf"]}
    assert dispatched == known, "each event type needs its allOf if/then entry"


@pytest.mark.parametrize("name", event_types())
def test_each_event_documents_exactly_its_fields(name: str) -> None:
    defs = schema()["$defs"]
    section = doc_sections()[name]
    fields = set(defs[name]["properties"])
    assert table_fields(section) == fields, f"{name}: docs table vs schema"
    for nested in nested_names({"properties": defs[name]["properties"]}, defs) - fields:
        assert f"`{nested}`" in section, f"{name}: nested field {nested!r} not in its docs"


def test_the_common_fields_are_documented() -> None:
    text = DOC.read_text().split("## Every event")[1].split("## Events")[0]
    assert table_fields(text) == set(schema()["$defs"]["common"]["properties"])


def good(event: str, **fields) -> str:
    return json.dumps({"event": event, "time": 1796314759.5, "run_id": RUN_ID, **fields})


@pytest.mark.parametrize("line, says", [
    (good("bogus-event"), "unknown event type 'bogus-event'"),
    (json.dumps({"event": "guest-stall", "time": 1.0, "line": "x"}), "'run_id' is a required"),
    (good("guest-stall", line="x", extra=1), "Unevaluated properties are not allowed"),
    (good("vmcore", path="/v.elf"), "'why' is a required property"),
    (good("hit-repeat", seq=1, insn=4198400, repeats=2), "insn: 4198400 is not of type"),
    (good("poll-add", id="1", config="pa=0x1000"), "id: '1' is not of type 'integer'"),
    (good("end", reason="exit", fault="no"), "fault: 'no' is not of type 'boolean'"),
    ("{not json", "not JSON"),
])
def test_a_bad_event_is_rejected_with_what_is_wrong(line: str, says: str) -> None:
    problems = problems_in_line(line)
    assert problems and says in " ".join(problems), problems


def test_a_good_event_passes() -> None:
    assert problems_in_line(good("vmcore", path="/v.elf", why="hit")) == []
    assert problems_in_line(good("hit-repeat", seq=1, insn="0x401000", repeats=2)) == []


def test_every_line_has_time_and_the_run_id_and_an_explicit_log_is_appended(tmp_path) -> None:
    path = tmp_path / "given.jsonl"
    for _run in range(2):
        log = EventLog(path)
        log.write("guest-stall", line="rcu: INFO: rcu_preempt detected stalls")
        log.write("vmcore", sync=True, path=str(tmp_path / "v.elf"), why="hit")
        log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [list(e)[:3] for e in lines] == [["event", "time", "run_id"]] * 4
    assert lines[0]["run_id"] == lines[1]["run_id"] != lines[2]["run_id"] == lines[3]["run_id"]
    assert abs(lines[0]["time"] - __import__("time").time()) < 60
    assert problems_in_file(path) == []


def test_the_default_log_is_a_new_file_per_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    names = {default_log_path() for _ in range(50)}
    assert len(names) == 50
    name = next(iter(names))
    assert name.parent == tmp_path
    assert re.fullmatch(r"kswgdb-\d{8}-\d{6}-[0-9a-f]{8}\.jsonl", name.name)
    EventLog(name, exclusive=True).close()
    with pytest.raises(FileExistsError):
        EventLog(name, exclusive=True)         # never appended to another run's


def test_run_and_tui_default_to_an_exclusive_per_run_log(tmp_path, monkeypatch) -> None:
    from kswgdb.cli import build_parser
    from kswgdb.run.options import options_from_args

    monkeypatch.chdir(tmp_path)
    default = options_from_args(build_parser().parse_args(["run", "--watch", "fn=f"]))
    given = options_from_args(build_parser().parse_args(
        ["run", "--watch", "fn=f", "--log", "x.jsonl"]))
    assert default.log_exclusive and default.log_path.parent == tmp_path
    assert not given.log_exclusive and given.log_path == Path("x.jsonl")
    assert RunOptions().log_path is None           # a test or campaign template: no log


def test_the_session_check_fails_a_session_that_wrote_a_bad_event() -> None:
    """An inner pytest session (our conftest as a plugin) writes one bad line: it fails,
    naming the file, the line and the event, although its only test passed."""
    test = textwrap.dedent(f'''
        def test_writes_a_log(tmp_path):
            ok = {good("guest-stall", line="ok")!r}
            bad = {good("made-up", detail=1)!r}
            (tmp_path / "events.jsonl").write_text(ok + "\\n" + bad + "\\n")
    ''')
    # Outside this session's temporary directory: its bad log must not fail *this* session.
    with tempfile.TemporaryDirectory(prefix="kswgdb-schema-check-") as tmp:
        (Path(tmp) / "test_inner.py").write_text(test)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
             "tests.conftest", "--rootdir", tmp, "--basetemp", str(Path(tmp) / "base"),
             str(Path(tmp) / "test_inner.py")],
            cwd=tmp, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = done.stdout + done.stderr
    assert "1 passed" in out, out
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert re.search(r"invalid event: \S*events\.jsonl:2: unknown event type 'made-up'", out), out
    assert "events.jsonl:1:" not in out
