"""--poll strings: every field, and a one-line BadInput for each kind of mistake."""

from __future__ import annotations

import pytest

from kswgdb.errors import BadInput
from kswgdb.poll.config import parse_poll, parse_polls


def test_to_value_with_defaults():
    spec = parse_poll("pa=0x1000 len=8 to=0x33")
    assert (spec.addr, spec.length, spec.to, spec.trigger) == (0x1000, 8, 0x33, "to")
    assert spec.interval == pytest.approx(1e-3) and spec.on_hit == "report" and spec.once


def test_every_key():
    spec = parse_poll("pa=4096 len=4 from=0xc0ffee mask=0xffffff interval=10us "
                      "on-hit=freeze once=0")
    assert spec.from_ == 0xC0FFEE and spec.mask == 0xFFFFFF and spec.trigger == "from"
    assert spec.interval == pytest.approx(10e-6) and spec.on_hit == "freeze" and not spec.once


def test_any_and_region():
    assert parse_poll("pa=0x2000 len=2 any=1").trigger == "any"
    spec = parse_poll("region=0x1000-0x2000 interval=30ms on-hit=dump")
    assert spec.region and spec.addr == 0x1000 and spec.length == 0x1000
    assert spec.interval == pytest.approx(0.03) and spec.on_hit == "dump"


def test_canonical_round_trips():
    for text in ("pa=0x1000 len=8 to=0x33", "region=0x1000-0x1010 interval=10us once=0",
                 "pa=0x8 len=1 from=0x7 mask=0xf on-hit=freeze"):
        spec = parse_poll(text)
        assert parse_poll(spec.canonical()).canonical() == spec.canonical()


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("pa=0x1000", "exactly one of to=, from= and any=1"),
    ("pa=0x1000 to=1 from=2", "exactly one of to=, from= and any=1"),
    ("pa=0x1000 to=1 to=2", "given twice"),
    ("pa=0x1000 to=1 colour=red", "unknown key 'colour'"),
    ("pa=0x1000 to", "not key=value"),
    ("pa=zz to=1", "is not a number"),
    ("pa=0x1000 len=3 to=1", "len=3 is not one of"),
    ("pa=0x1001 len=8 to=1", "not aligned"),
    ("pa=0x1000 len=1 to=0x100", "does not fit"),
    ("pa=0x1000 to=0x10 mask=0x0f", "outside mask"),
    ("pa=0x1000 to=0 mask=0", "hides every bit"),
    ("pa=0x1000 to=1 interval=5", "not a time"),
    ("pa=0x1000 to=1 interval=100s", "outside 1us..10s"),
    ("pa=0x1000 to=1 on-hit=panic", "on-hit='panic'"),
    ("pa=0x1000 to=1 once=maybe", "not 0 or 1"),
    ("pa=0x1000 any=0", "any=0"),
    ("region=0x2000-0x1000", "empty"),
    ("region=0x1000", "START-END"),
    ("region=0x1000-0x2000 to=1", "does not apply to a region"),
    ("region=0x0-0x4000000", "larger than"),
    ("pa=0x1000 region=0x0-0x10 any=1", "exactly one of pa= and region="),
    ("pa=0x10000000000000 to=1", "52-bit"),
])
def test_bad_input_is_one_line(text, fragment):
    with pytest.raises(BadInput) as info:
        parse_poll(text)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert message.startswith("--poll ")


def test_several_polls_and_the_first_bad_one_named():
    assert len(parse_polls(["pa=0x0 any=1", "pa=0x8 to=1"])) == 2
    with pytest.raises(BadInput, match="pa=0x8 to="):
        parse_polls(["pa=0x0 any=1", "pa=0x8 to="])
