#!/usr/bin/env python3
"""Check the frame layouts the corrupting scenarios depend on (run by `make`).

The scenarios only corrupt what they are meant to if GCC laid the frames out as
README.md describes; a compiler or source change could silently move a canary.
This reads the prologues (gdb disassembly) and the locals' DWARF locations
(gdb `info scope`) of the built kernel and checks:

  s1  the S1_OVERRUN-th word written from buf is s1_overflow's canary slot
  s3  s3_buggy's buffer, once dead, covers s3_victim's canary slot and part of
      its `ledger`, and ends above s3_victim's stack pointer (so the
      corrupter never hits a return address of a call s3_victim makes)
  s5  buf[S5_WORDS] is s5_victim's canary slot, buf[-1] is its local `below`
  s2, s7  `mark` and `irq_target` are frame-based locals

Offsets below are relative to the function's rbp (CFA = rbp + 16).
"""
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def gdb(elf, *cmds):
    argv = ["gdb", "-batch", "-nx"]
    for c in cmds:
        argv += ["-ex", c]
    return subprocess.run(argv + [elf], capture_output=True, text=True, check=True).stdout


FUNCS = ("s1_overflow", "s5_victim", "s3_buggy", "s3_enter_victim", "s3_victim",
         "s2_recurse", "s7_victim", "s0_victim")
_out = {}


def load(elf):
    """One gdb run for everything: disassembly and scope of each function."""
    cmds = []
    for fn in FUNCS:
        cmds += [f"echo @@asm {fn}\\n", f"disassemble {fn}", f"echo @@scope {fn}\\n", f"info scope {fn}"]
    text = gdb(elf, *cmds)
    for part in text.split("@@")[1:]:
        head, _, body = part.partition("\n")
        _out[tuple(head.split())] = body


def frame(elf, fn):
    """(canary offset, rsp offset after the prologue, {local: offset}) from rbp."""
    asm = _out[("asm", fn)]
    pushes, sub, canary = 0, 0, None
    lines = asm.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"\bpush\s+%r", line) and "%rbp" not in line:
            pushes += 1
        m = re.search(r"sub\s+\$0x([0-9a-f]+),%rsp", line)
        if m and not sub:
            sub = int(m.group(1), 16)
        if "<__stack_chk_guard>" in line and canary is None:
            m = re.search(r"mov\s+%rax,-0x([0-9a-f]+)\(%rbp\)", lines[i + 1])
            if m:
                canary = -int(m.group(1), 16)
    if canary is None:
        raise SystemExit(f"check_layout: {fn}: no canary store found")
    scope = _out[("scope", fn)]
    locs = {name: int(off) + 16 for name, off, _ in _LOCAL.findall(scope)}
    sizes.update({(fn, name): int(size) for name, _, size in _LOCAL.findall(scope)})
    return canary, -8 * pushes - sub, locs


_LOCAL = re.compile(r"Symbol (\w+) is a complex DWARF expression:\s*\n\s*0: DW_OP_fbreg (-?\d+)\s*\n, length (\d+)")
sizes = {}


def define(name):
    m = re.search(rf"#define {name}\s+(\d+)", (HERE / "scenarios.c").read_text())
    return int(m.group(1))


def main():
    elf = sys.argv[1] if len(sys.argv) > 1 else str(HERE.parent / "images" / "kswtest.elf")
    errors = []
    load(elf)

    def want(cond, msg):
        if not cond:
            errors.append(msg)

    c, _, loc = frame(elf, "s1_overflow")
    want(loc["buf"] + 8 * (define("S1_OVERRUN") - 1) == c,
         f"s1: word {define('S1_OVERRUN') - 1} of buf is not the canary (buf {loc['buf']}, canary {c})")

    c, _, loc = frame(elf, "s5_victim")
    want(loc["buf"] + sizes[("s5_victim", "buf")] == c, f"s5: buf[N] is not the canary ({loc}, {c})")
    want(loc["buf"] - 8 == loc["below"], f"s5: buf[-1] is not `below` ({loc})")

    # s3: s3_driver calls s3_buggy and s3_enter_victim with the same rsp, S.
    # A function called with rsp S has rbp = S - 16.
    _, _, bl = frame(elf, "s3_buggy")
    lo, hi = -16 + bl["buf"], -16 + bl["buf"] + sizes[("s3_buggy", "buf")]        # relative to S
    _, e_rsp, _ = frame(elf, "s3_enter_victim")
    v_rbp = -16 + e_rsp - 16                                  # s3_victim called with rsp S + e_rsp
    vc, v_rsp, vl = frame(elf, "s3_victim")
    canary = v_rbp + vc
    ledger = (v_rbp + vl["ledger"], v_rbp + vl["ledger"] + sizes[("s3_victim", "ledger")])
    want(lo <= canary < hi, f"s3: victim canary S{canary:+d} outside the dead buffer [S{lo:+d}, S{hi:+d})")
    want(lo < ledger[1] and ledger[0] < hi, f"s3: ledger {ledger} does not meet the buffer [{lo}, {hi})")
    want(lo >= v_rbp + v_rsp, f"s3: buffer S{lo:+d} reaches below s3_victim's rsp S{v_rbp + v_rsp:+d}")

    for fn, var in (("s2_recurse", "mark"), ("s7_victim", "irq_target"), ("s0_victim", "probe")):
        want(var in frame(elf, fn)[2], f"{fn}: local `{var}` has no frame-based location")

    if errors:
        print("check_layout: FAILED\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    print(f"  CHECK   frame layouts ok (s3: buffer [S{lo:+d},S{hi:+d}) victim canary S{canary:+d} "
          f"rsp S{v_rbp + v_rsp:+d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
