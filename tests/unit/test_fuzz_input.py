"""Bad input, fuzzed: any config string or command line either becomes a valid watch
or fails with one line and exit status 2 -- never a traceback, never a hang.

The command line runs in-process (``kswgdb.cli.main``) for speed. Everything is real
up to the point where a guest would start: QEMU launch, the session's run and the
accelerator probe are replaced by a sentinel, so "valid" means "reached the start
of the run with every input checked".
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kswgdb import cli
from kswgdb.errors import BadInput
from kswgdb.image import load as load_image
from kswgdb.symbols.program import Program
from kswgdb.watch.config import KEYS, WatchConfig, parse_watch
from kswgdb.watch.resolve import resolve_watch
from tests.unit.conftest import QemuReached

FUNCS = ["s3_victim", "s0_victim", "s2_recurse", "s1_overflow", "s5_victim", "nope", "",
         "s3_victim+0x23", "ksw_exit"]
NUMBERS = st.one_of(
    st.integers(-0x20000, 0x20000).map(str),
    st.integers(-0x20000, 0x20000).map(lambda n: ("-" if n < 0 else "") + hex(abs(n))),
    st.sampled_from(["0x", "-", "+1", "1e3", "0X1F", "08", "٣", "0b1", "nan", " ", "0x-1"]),
    st.text(max_size=6),
)
KEY_NAMES = st.one_of(st.sampled_from([*KEYS, *KEYS.values()]), st.text(max_size=8))
PAIR = st.one_of(
    st.tuples(KEY_NAMES, NUMBERS).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.sampled_from(FUNCS).map(lambda f: f"fn={f}"),
    st.sampled_from(["var=mark", "var=buf[3]", "var=buf[", "var=ledger[99]", "ac=1", "ph=yes"]),
    st.text(max_size=12),
)
KEYVALUE_CONFIG = st.lists(PAIR, max_size=8).map(" ".join)
POSITIONAL_CONFIG = st.tuples(st.sampled_from(FUNCS), NUMBERS, NUMBERS, NUMBERS).map(
    lambda t: f"{t[0]}+{t[1]}+{t[2]} {t[3]}:8")
CONFIG = st.one_of(KEYVALUE_CONFIG, POSITIONAL_CONFIG, st.text(max_size=40))


@pytest.fixture(scope="module")
def program() -> Program:
    return Program.load(load_image(None).symbols)


def _one_line(exc: BadInput) -> None:
    text = str(exc)
    assert text and "\n" not in text.strip() and "Traceback" not in text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIG)
def test_config_parses_or_fails_with_one_line(text: str) -> None:
    try:
        cfg = parse_watch(text)
    except BadInput as exc:
        _one_line(exc)
        return
    assert isinstance(cfg, WatchConfig)
    assert cfg.func and cfg.watch_len in (0, 1, 2, 4, 8)
    assert parse_watch(cfg.canonical()) == parse_watch(cfg.canonical())  # stable round trip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.one_of(KEYVALUE_CONFIG, POSITIONAL_CONFIG,
                 st.tuples(st.sampled_from(FUNCS[:5]), st.integers(0, 0x140),
                           st.integers(-0x5000, 0x5000), st.sampled_from([0, 1, 2, 4, 8]))
                 .map(lambda t: f"fn={t[0]} fo={t[1]:#x} so={t[2]} wl={t[3]}")))
def test_config_resolves_or_fails_with_one_line(program: Program, text: str) -> None:
    try:
        resolved = resolve_watch(parse_watch(text), program)
        resolved.to_arm_spec()
    except BadInput as exc:
        _one_line(exc)


@pytest.fixture
def no_run(no_guest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`no_guest`, and a prepared run or an accelerator probe stops there too."""
    def reached(*_a, **_k):
        raise QemuReached

    from kswgdb.qemu import accel
    from kswgdb.run import oneshot as session

    monkeypatch.setattr(session.WatchSession, "run", reached)
    monkeypatch.setattr(accel, "decide", reached)


OPTION_TOKENS = st.sampled_from([
    "run", "boot", "disasm", "symbols", "accel", "demo", "--watch", "-w", "--scenario",
    "--accel", "tcg", "kvm", "auto", "--timeout", "--log", "--slots", "--hang-timeout",
    "--gdb-listen", "127.0.0.1:0", "0.0.0.0:1234", "[::]:1", "localhost:70000", "--json",
    "--on-hit", "freeze", "--cmdline", "--image", "--var", "s3_victim", "fn=s3_victim fo=0x23",
    "fn=s3_victim fo=0x23 so=0x10 wl=8", "-1", "0", "3", "1e999", "nan", "/nonexistent",
    "kswtest", "--", "-", "=",
])
ARGV = st.lists(st.one_of(OPTION_TOKENS, st.text(max_size=10)), max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(ARGV)
def test_command_line_is_valid_or_one_line_exit_2(no_run, capsys, argv: list[str]) -> None:
    if any(a in ("-h", "--help", "--version") for a in argv):
        return
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except QemuReached:
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if status == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) >= 1 and lines[-1].startswith("kswgdb: error: "), err
        assert all(not ln.startswith("kswgdb: error") for ln in lines[:-1])
    else:
        assert status in (0, 1), (argv, status, err)
