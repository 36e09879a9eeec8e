"""``--help``: every option and subcommand explained, and every example in it works.

The examples are read back from the help output itself (``$ kswgdb ...`` lines), so
an example that stops working fails here: each is accepted by the parser, watch and
poll examples pass every check `kswgdb.run.prepare` makes (the test kernel's symbols,
no QEMU), and ``disasm``/``symbols`` examples run and exit 0.
"""

from __future__ import annotations

import argparse
import shlex

import pytest

from kswgdb.cli import build_parser, main
from kswgdb.helptext import EXAMPLES, examples_in
from kswgdb.run.options import options_from_args
from kswgdb.run.prepare import prepare

PARSER = build_parser()
SUBCOMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as ended:
        main([*argv, "--help"])
    assert ended.value.code == 0
    return capsys.readouterr().out


def _all_examples() -> list[tuple[str | None, str]]:
    return [(name, argv) for name, examples in EXAMPLES.items() for argv, _ in examples]


@pytest.mark.parametrize("name", [None, *SUBCOMMANDS.choices])
def test_every_option_and_subcommand_has_help_and_examples(name: str | None, capsys) -> None:
    parser = PARSER if name is None else SUBCOMMANDS.choices[name]
    assert parser.description, f"{name}: no description"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            undocumented = [c.dest for c in action._choices_actions if not c.help]
            assert not undocumented, f"subcommands without help: {undocumented}"
        else:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
    text = _help([name] if name else [], capsys)
    assert examples_in(text), f"{name}: no example in --help"
    # what the help shows is what the test checks below
    assert examples_in(text) == [argv for argv, _ in EXAMPLES[name]]


@pytest.mark.parametrize(("name", "example"), _all_examples())
def test_every_example_in_help_is_accepted(name: str | None, example: str, tmp_path,
                                           monkeypatch, capsys) -> None:
    words = shlex.split(example)
    assert words[0] == "kswgdb"
    args = PARSER.parse_args(words[1:])
    monkeypatch.chdir(tmp_path)             # a --log or a default log lands here
    if args.command in ("run", "tui", "campaign"):
        options = options_from_args(args)
        options.accel = "tcg"               # no KVM probe in a unit test
        tui = args.command == "tui"         # a TUI session may start with no watch
        plan = prepare(options, require_watch=not tui)
        assert tui or plan.specs or plan.poll_specs or plan.module_watches, example
        plan.close()
    elif args.command in ("disasm", "symbols"):
        assert main(words[1:]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        if args.command == "disasm":
            assert "suggested watch:" in out
        else:
            assert "s3_victim" in out


def test_the_watch_example_of_the_option_help_is_accepted(capsys) -> None:
    """The ``--watch`` help's own example (it once named an offset run refused)."""
    text = " ".join(_help(["run"], capsys).split())
    config = text.split("e.g. '", 1)[1].split("'", 1)[0]
    plan = prepare(options_from_args(PARSER.parse_args(
        ["run", "--scenario", "3", "--accel", "tcg", "--watch", config])))
    assert [s.text for s in plan.specs] == [config]
    plan.close()


def test_the_poll_examples_point_at_scenario_8s_word() -> None:
    """A poll address is a build's: the examples must follow the test kernel's symbols."""
    from kswgdb.image import load
    from kswgdb.symbols.program import Program

    program = Program.load(load(None).symbols)
    word = program.symtab.lookup_all("s8_zero_page")[0].addr + 0x6a8
    examples = [argv for argv, _ in EXAMPLES["run"] if "--poll" in argv]
    help_poll = next(a.help for a in SUBCOMMANDS.choices["run"]._actions if a.dest == "poll")
    assert examples and f"pa={word:#x}" in help_poll
    for example in examples:
        assert f"pa={word:#x}" in example, (example, hex(word))


def _log_help(name: str) -> str:
    [log] = [a for a in SUBCOMMANDS.choices[name]._actions if "--log" in a.option_strings]
    return " ".join(log.help.split())


@pytest.mark.parametrize("name", [n for n, p in SUBCOMMANDS.choices.items()
                                  if any("--log" in a.option_strings for a in p._actions)
                                  and n != "campaign"])
def test_the_log_help_says_an_existing_file_is_appended_to(name: str, tmp_path, capsys) -> None:
    """What the help promises is what an explicit ``--log`` of an existing file gets."""
    from kswgdb.watch.hits import EventLog

    assert "an existing file is appended to" in _log_help(name)
    existing = tmp_path / "runs.log"           # not .jsonl: these are no real events
    existing.write_text('{"event": "earlier"}\n')
    if name in ("run", "tui"):
        args = PARSER.parse_args([name, "--scenario", "3", "--log", str(existing)])
        options = options_from_args(args)
        assert (options.log_path, options.log_exclusive) == (existing, False)
    events = EventLog(existing, exclusive=False)
    events.write("start")
    events.close()
    lines = existing.read_text().splitlines()
    assert lines[0] == '{"event": "earlier"}' and '"start"' in lines[1]


def test_the_campaign_log_help_says_it_is_refused(tmp_path) -> None:
    from kswgdb.campaign.options import campaign_options_from_args
    from kswgdb.errors import BadInput

    assert _log_help("campaign").startswith("not for campaigns")
    args = PARSER.parse_args(["campaign", "--scenario", "4", "--log", str(tmp_path / "x")])
    with pytest.raises(BadInput, match="--log is not for campaigns"):
        campaign_options_from_args(args)
