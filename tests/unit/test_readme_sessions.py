"""How the README's example sessions are read (tests.readme_commands): no QEMU needed."""

from __future__ import annotations

from tests.readme_commands import missing, sessions, stable

TEXT = """intro
```
$ kswgdb run --scenario 3 \\
      --watch 'fn=s3_victim fo=0x23'
watch fn=s3_victim fo=0x23: s3_victim+0x23: canary /8
...
│ value    0x62aa61781544734e -> 0xc0ffee0000000002            │
$ echo $?
1
```
```
$ kswgdb disasm s3_victim | grep 'arm here'
 +0x23  31 c0    xor eax, eax     <- arm here
```
```sh
make demo
```
"""


def test_sessions_are_read_with_continuations_pipes_and_status() -> None:
    run, disasm = sessions(TEXT)
    assert run.argv == ["run", "--scenario", "3", "--watch", "fn=s3_victim fo=0x23"]
    assert run.status == 1 and run.pipe == [] and run.line == 3
    assert run.output[0].startswith("watch fn=s3_victim") and len(run.output) == 3
    assert disasm.argv == ["disasm", "s3_victim"] and disasm.pipe == ["grep 'arm here'"]
    assert disasm.status is None and disasm.test_kernel_only


def test_stable_parts_mask_numbers_and_boxes_but_not_words() -> None:
    assert stable("│ value    0x62aa -> 0xc0ff   │") == stable("value 0x1 -> 0x2")
    assert stable("guest ended: 0.24s; 104 packets") == stable("guest ended: 9.1s; 3 packets")
    assert stable("accelerator: tcg (no vmx/svm flag)") == stable("accelerator: kvm (probed)")
    assert stable("1 hit(s)") != stable("1 hit(s), 1 watch(es) never armed")
    assert stable("event log: /work/x/kswgdb-1.jsonl") == stable("event log: /tmp/a/kswgdb-2.jsonl")
    run = sessions(TEXT)[0]
    assert missing(run, "watch fn=s3_victim fo=0x23: s3_victim+0x23: canary /8\n"
                        "value 0x1 -> 0x2") == []
    assert missing(run, "value 0x1 -> 0x2") == [run.output[0]]


def test_the_real_readme_has_test_kernel_sessions_with_output() -> None:
    found = [s for s in sessions() if s.test_kernel_only]
    assert len(found) >= 5 and all(s.output for s in found)


def test_a_panel_line_wrapped_at_another_width_is_still_found() -> None:
    readme = """```
$ kswgdb run --scenario 8
│ memory   unmapped at start: MMIO, read     │
│          through QEMU (briefly pauses)     │
```
"""
    session = sessions(readme)[0]
    assert missing(session, "│ memory   unmapped at start: MMIO, read through QEMU (briefly "
                            "pauses) │") == []
    assert missing(session, "│ memory   unmapped at start: MMIO │") == [session.output[0],
                                                                    session.output[1]]
