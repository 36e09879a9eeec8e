"""KStackWatch config strings: what parses to what, and what is refused with which words."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kswgdb.errors import BadInput
from kswgdb.watch.config import KEYS, VarRef, WatchConfig, parse_watch, parse_watches

GOOD = [
    # KStackWatch's own test script (v5..v8 form)
    ("fn=test_watch_fire fo=0x29 wl=8",
     dict(func="test_watch_fire", offset=0x29, watch_len=8, mode="offset")),
    ("fn=test_canary_overflow fo=0x14", dict(offset=0x14, watch_len=0, mode="canary")),
    ("fn=test_recursive_depth fo=0x2f dp=3 wl=8 so=0",
     dict(depth=3, watch_len=8, sp_offset=0, mode="offset")),
    ("fn=test_mthread_victim fo=0x4c so=64 wl=8", dict(sp_offset=64, watch_len=8)),
    ("fn=test_mthread_buggy fo=0x16 so=0x100 wl=8", dict(sp_offset=0x100)),
    # long names, mixed with short ones, extra whitespace
    ("func_name=s3_victim  func_offset=0x1c\tdepth=2 max_watch=4",
     dict(func="s3_victim", offset=0x1c, depth=2, max_watch=4)),
    ("fn=f fo=8 sp_offset=-0x10 watch_len=4", dict(offset=8, sp_offset=-0x10, watch_len=4)),
    ("fn=f fo=0 so=+16 wl=2", dict(sp_offset=16, watch_len=2)),
    ("fn=f fo=0x1C ac=1 ph=1", dict(offset=0x1c, auto_canary=True, panic_hit=True)),
    ("fn=f fo=0 auto_canary=0 panic_hit=1", dict(auto_canary=False, panic_hit=True)),
    ("fn=foo.constprop.0 fo=4", dict(func="foo.constprop.0")),
    ("fn=f fo=0 wl=0", dict(watch_len=0, mode="canary")),
    ("fn=f fo=0 so=0 wl=1", dict(mode="offset", watch_len=1)),
    # v1..v4 positional form: function+ip_offset[+depth] [local_var_offset:local_var_len]
    ("s3_victim+0x1c", dict(func="s3_victim", offset=0x1c, depth=0, mode="canary")),
    ("canary_test_write+0x12", dict(func="canary_test_write", offset=0x12)),
    ("silent_corruption_hapless+0x7f 0:8",
     dict(offset=0x7f, sp_offset=0, watch_len=8, mode="offset")),
    ("s2_recurse+0x20+3 0x8:8", dict(func="s2_recurse", offset=0x20, depth=3, sp_offset=8,
                                     watch_len=8)),
    ("s2_recurse+32+3 -0x10:4 ph=1", dict(offset=32, depth=3, sp_offset=-0x10, watch_len=4,
                                          panic_hit=True)),
    # extension: a DWARF local by name
    ("fn=s2_recurse fo=0x20 var=mark", dict(var=VarRef("mark"), mode="var", watch_len=0)),
    ("fn=s3_victim fo=0x10 var=buf[31] dp=1", dict(var=VarRef("buf", 31), depth=1)),
    ("fn=s3_victim fo=0x10 var=buf[0x1f]", dict(var=VarRef("buf", 31))),
    ("s2_recurse+0x20 var=mark", dict(var=VarRef("mark"), mode="var")),
]

BAD = [
    ("fn=f fo=0 ph=yes", "ph='yes' must be 0 or 1"),
    ("fn=f fo=0 ac=y", "ac='y' must be 0 or 1"),
    ("", "empty watch config"),
    ("   \t\n", "empty watch config"),
    ("fo=0x10", "missing fn="),
    ("fn=f", "missing fo="),
    ("fn=f fo=0x10 fnn=g", "unknown key 'fnn' (did you mean 'fn'/'func_name'?)"),
    ("fn=f fo=1 func_ofset=2", "unknown key 'func_ofset' (did you mean 'fo'/'func_offset'?)"),
    ("fn=f fo=1 colour=red", "unknown key 'colour' (keys: fn, fo, dp"),
    ("fn=f fo=1 fo=2", "duplicate key 'fo'"),
    ("fn=f fo=1 func_offset=2", "duplicate key 'func_offset' (fo/func_offset given twice)"),
    ("f+1 fo=2", "duplicate key 'fo'"),
    ("fn=f fo=0xZZ", "fo='0xZZ' is not a number"),
    ("fn=f fo=12abc", "fo='12abc' is not a number"),
    ("fn=f fo=-1", "fo=-1 must not be negative"),
    ("fn=f fo=0x10000", "fo=0x10000 is out of range"),
    ("fn=f fo=010", "fo=010 is ambiguous (the kernel reads a leading 0 as octal)"),
    ("fn=f fo=1 wl=3", "wl=3 must be 1, 2, 4 or 8"),
    ("fn=f fo=1 wl=16", "wl=16 must be 1, 2, 4 or 8"),
    ("fn=f fo=1 ac=1 wl=8", "ac=1 watches the canary but wl=8"),
    ("fn=f fo=1 dp=-1", "dp=-1 must not be negative"),
    ("fn=f fo=1 mw=-2", "mw=-2 must not be negative"),
    ("fn=f fo=1 so=0x10", "so= without wl= has no effect"),
    ("fn=f fo=1 ph=2", "ph='2' must be 0 or 1"),
    ("fn=f fo=1 fo", "'fo' is not key=value"),
    ("fn=f fo=", "empty value for 'fo'"),
    ("fn=1bad fo=0", "fn='1bad' is not a symbol name"),
    ("fn=f fo=1 var=buf wl=8", "var=buf takes its address and size from DWARF: drop wl"),
    ("fn=f fo=1 var=buf so=8 wl=8", "drop so/wl"),
    ("fn=f fo=1 var=buf ac=1", "drop ac"),
    ("fn=f fo=1 var=buf[-1]", "the index must be a decimal or 0x-hex number >= 0"),
    ("fn=f fo=1 var=buf[x]", "the index must be"),
    ("fn=f fo=1 var=a.b", "var='a.b' must be NAME or NAME[index]"),
    ("f+", "'f+' is neither key=value nor func+offset[+depth]"),
    ("f+1+2+3", "is neither key=value nor func+offset[+depth]"),
    ("f+1 8", "'8' is not local_var_offset:local_var_len"),
    ("f+1 8:", "is not local_var_offset:local_var_len"),
    ("f+1 8:3", "wl=3 must be 1, 2, 4 or 8"),
    ("f+x", "fo='x' is not a number"),
]


@pytest.mark.parametrize("text,expected", GOOD, ids=[g[0] or "empty" for g in GOOD])
def test_good(text: str, expected: dict) -> None:
    cfg = parse_watch(text)
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    assert cfg.text == " ".join(text.split())
    assert str(cfg) == cfg.text


@pytest.mark.parametrize("text,fragment", BAD, ids=[b[0] or "empty" for b in BAD])
def test_bad(text: str, fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_watch(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_defaults_and_mode() -> None:
    cfg = parse_watch("fn=f fo=4")
    assert cfg == WatchConfig(func="f", offset=4)
    assert (cfg.depth, cfg.max_watch, cfg.sp_offset, cfg.watch_len) == (0, 0, 0, 0)
    assert not cfg.auto_canary and not cfg.panic_hit and cfg.var is None
    assert cfg.mode == "canary"


def test_canonical_form() -> None:
    cfg = parse_watch("s2_recurse+0x20+3 -0x8:8 ph=1")
    assert cfg.canonical() == "fn=s2_recurse fo=0x20 dp=3 so=-0x8 wl=8 ph=1"
    assert parse_watch(cfg.canonical()) == cfg
    assert parse_watch("fn=f fo=1 var=buf[3]").canonical() == "fn=f fo=0x1 var=buf[3]"


def test_every_key_has_long_and_short_name() -> None:
    for long, short in KEYS.items():
        value = {"func_name": "f", "func_offset": "1", "var": "x"}.get(long, "1")
        rest = {"func_name": "fo=1", "func_offset": "fn=f",
                "sp_offset": "fn=f fo=1 wl=8"}.get(long, "fn=f fo=1")
        for name in {long, short}:
            parse_watch(f"{rest} {name}={value}")


def test_parse_watches_names_the_bad_one() -> None:
    cfgs = parse_watches(["fn=a fo=1", "b+0x2 0:8"])
    assert [c.func for c in cfgs] == ["a", "b"]
    with pytest.raises(BadInput, match=r"^watch 2: unknown key 'x'"):
        parse_watches(["fn=a fo=1", "fn=b fo=1 x=1"])
    with pytest.raises(BadInput, match="watch 2 repeats watch 1"):
        parse_watches(["fn=a fo=1", "a+1"])
    with pytest.raises(BadInput, match=r"^missing fo="):
        parse_watches(["fn=a"])


# -- properties --------------------------------------------------------------------------

KEY_NAMES = sorted({*KEYS, *KEYS.values()})
VALUES = st.one_of(
    st.integers(-(1 << 20), 1 << 20).map(str),
    st.integers(-(1 << 70), 1 << 70).map(lambda n: ("-" if n < 0 else "") + hex(abs(n))),
    st.sampled_from(["", "f", "x[1]", "0x", "-", "+1", "y", "on", "010", "buf[0x3]", "a=b"]),
    st.text(max_size=6),
)
TOKENS = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEY_NAMES), VALUES),
    st.builds(lambda f, o, d: f"{f}+{o}" + (f"+{d}" if d else ""),
              st.sampled_from(["f", "s2_recurse", ""]), VALUES, st.one_of(st.none(), VALUES)),
    st.builds(lambda a, b: f"{a}:{b}", VALUES, VALUES),
    st.text(max_size=10),
)


def _parses_or_one_line_error(text: str) -> None:
    try:
        cfg = parse_watch(text)
    except BadInput as exc:
        message = str(exc)
        assert message and len(message.splitlines()) == 1 and "\r" not in message
        return
    assert isinstance(cfg, WatchConfig)
    assert cfg.watch_len in (0, 1, 2, 4, 8)
    assert parse_watch(cfg.canonical()) == cfg


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_text_parses_or_raises_bad_input(text: str) -> None:
    _parses_or_one_line_error(text)


@settings(max_examples=600, deadline=None)
@given(st.lists(TOKENS, max_size=6), st.sampled_from([" ", "\t", "  ", "\n", "\x0b"]))
def test_token_soup_parses_or_raises_bad_input(tokens: list[str], sep: str) -> None:
    _parses_or_one_line_error(sep.join(tokens))
