"""What ``kswgdb --help`` and each subcommand's ``--help`` say besides the options.

Each subcommand gets a description (what it is for, in a few lines) and examples
that work as written against the bundled test kernel: ``tests/unit/test_help.py``
reads them back from the help output and checks that every one is accepted by the
parser and by `kswgdb.run.prepare` (or runs it, for ``disasm`` and ``symbols``).
Kept apart from `kswgdb.cli` so the parser stays a list of options.
"""

from __future__ import annotations

import argparse
import textwrap

#: Where examples start in a help text; one ``$ kswgdb ...`` line per example.
EXAMPLE_PROMPT = "  $ "

DESCRIPTIONS: dict[str | None, str] = {
    None: "Catch silent kernel stack corruption at the instant of the write, from outside "
          "a QEMU guest: KStackWatch through QEMU's gdbstub. Exit status: 0 clean, 1 hit, "
          "2 bad input, 3 the run failed (QEMU, gdb, the stub, a guest fault), 4 a "
          "watch never armed, 5 the demo caught nothing, 130 Ctrl-C, 128+N signal N.",
    "run": "Boot an image paused, arm a hardware watchpoint on a stack slot each time a "
           "watched function reaches its arming offset, let the guest run, and report "
           "every write into a watched slot with the writer, both tasks and a backtrace. "
           "Ends when the guest ends, at --timeout, or at the first hit with --on-hit "
           "freeze. Every event, the guest's console included, goes to the JSONL event log.",
    "boot": "Boot an image without watching anything and print its console: to check "
            "that an image boots and that a reproducer does what it should.",
    "disasm": "Disassemble a function of an image's kernel (or of one of its modules), "
              "mark the canary load and store and the stores that initialise locals, and "
              "suggest the watch config (fo: where to arm) for the canary, a local "
              "(--var) or an SP offset (--so/--wl).",
    "symbols": "List the functions of an image's kernel whose name contains PATTERN: "
               "address, size, name (and fn=NAME@ADDR where several files define it).",
    "accel": "Say which accelerator --accel auto picks on this host, and why (KVM is "
             "used only where a probe saw its data watchpoints fire).",
    "tui": "The interactive form of run: the guest boots and keeps running while you "
           "add and remove watches and polls, freeze it, read the hits and the console. "
           "Ends with run's exit statuses (4 if a watch never armed, unless "
           "--allow-unarmed).",
    "campaign": "Run the same watched run in many guests, J at a time, each with its own "
                "seed, until a number of runs, hits or a time budget; each distinct hit is "
                "shown once, with the command that replays its run.",
    "attach": "Watch a guest in a QEMU you started yourself (virtme-ng, libvirt, a -s -S "
              "command line): connect to its gdbstub, find where the running kernel is "
              "(KASLR), watch exactly as run does, and at the end (--timeout, Ctrl-C, the "
              "first hit with --on-hit detach) remove every breakpoint and watchpoint and "
              "detach, leaving the guest running. Never stops or kills that QEMU.",
    "demo": "Run scenario 3 of the bundled test kernel (silent corruption by another "
            "thread) and catch it: exit 0 if caught, 5 if not (what `make demo` runs).",
}

#: Per subcommand (None: the top level), ``(command, what it does)``.
EXAMPLES: dict[str | None, list[tuple[str, str]]] = {
    None: [
        ("kswgdb demo", "see a catch"),
        ("kswgdb disasm s3_victim", "where to arm a canary watch"),
        ("kswgdb run --scenario 3 --watch 'fn=s3_victim fo=0x23'", "catch the writer"),
    ],
    "attach": [
        ("kswgdb attach unix:/tmp/vm/gdb.sock --qmp unix:/tmp/vm/qmp.sock --image kswtest "
         "--watch 'fn=s3_victim fo=0x23' --on-hit detach",
         "a QEMU started with -gdb unix:...,server=on,wait=off and -qmp: detach at the hit"),
        ("kswgdb attach localhost:1234 --vmlinux vmlinux --watch 'fn=cp_new_stat fo=0x3d' "
         "--timeout 60", "QEMU -s: watch a distribution kernel (KASLR found) for a minute"),
    ],
    "run": [
        ("kswgdb run --scenario 3 --watch 'fn=s3_victim fo=0x23'",
         "watch s3_victim's canary; scenario 3 corrupts it from another thread"),
        ("kswgdb run --scenario 2 --watch 'fn=s2_recurse fo=0x2a var=mark dp=3'",
         "a local variable, at recursion depth 3"),
        ("kswgdb run --scenario 3 --watch 's3_victim+0x23' --on-hit freeze",
         "the positional form; freeze at the hit and dump a vmcore"),
        ("kswgdb run --scenario 8 --poll 'pa=0x1146a8 len=8 to=0x33 interval=10us'",
         "poll physical memory for a device's DMA"),
        ("kswgdb run --scenario 6 --watch 'fn=s3_victim fo=0x23' --console --log clean.jsonl",
         "a clean run, its console streamed on stderr"),
    ],
    "boot": [
        ("kswgdb boot --scenario 3", "the test kernel's console for scenario 3"),
        ("kswgdb boot --scenario 3 --timeout 30 --cmdline runs=2",
         "fewer rounds, a shorter limit"),
    ],
    "disasm": [
        ("kswgdb disasm s3_victim", "canary load and store; suggests fo"),
        ("kswgdb disasm s2_recurse --var mark", "a watch on the local mark"),
        ("kswgdb disasm s3_victim --so 0x10 --wl 8", "a watch on SP+0x10, 8 bytes"),
    ],
    "symbols": [
        ("kswgdb symbols s3_", "functions whose name contains s3_"),
    ],
    "accel": [
        ("kswgdb accel", "e.g. 'tcg: no vmx/svm flag in /proc/cpuinfo'"),
    ],
    "tui": [
        ("kswgdb tui --scenario 3 --watch 'fn=s3_victim fo=0x23'", "watch, then add more"),
        ("kswgdb tui --scenario 10 --paused", "frozen at the first instruction until c"),
    ],
    "campaign": [
        ("kswgdb campaign --scenario 4 --watch 'fn=s3_victim fo=0x23' --jobs 2 --runs 4",
         "four seeded runs, two at a time"),
        ("kswgdb campaign --scenario 4 --watch 'fn=s3_victim fo=0x23' --until-hits 1 "
         "--budget 10m", "until the first catch, at most 10 minutes"),
    ],
    "demo": [
        ("kswgdb demo", "exit 0 if the corruption was caught"),
    ],
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped to the terminal, examples kept as written (one per line)."""


def _description(text: str) -> str:
    return "\n\n".join(textwrap.fill(part, 78) for part in text.split("\n\n"))


def epilog(command: str | None) -> str:
    """The ``examples:`` block of a help text."""
    lines = ["examples:"]
    for argv, what in EXAMPLES.get(command, []):
        lines += [f"{EXAMPLE_PROMPT}{argv}", f"      {what}"]
    return "\n".join(lines)


def document(parser: argparse.ArgumentParser) -> None:
    """Give the top-level parser and each subcommand its description and examples."""
    targets: list[tuple[str | None, argparse.ArgumentParser]] = [(None, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            targets += list(action.choices.items())
    for name, p in targets:
        p.formatter_class = _Formatter
        p.description = _description(DESCRIPTIONS[name])
        p.epilog = epilog(name)


def examples_in(help_text: str) -> list[str]:
    """The example command lines in a help output (what the help test runs)."""
    return [line[len(EXAMPLE_PROMPT):] for line in help_text.splitlines()
            if line.startswith(EXAMPLE_PROMPT + "kswgdb ")]
