"""The arming analysis over a whole vmlinux: how many watches it can place, and how fast.

For every function of the image's kernel with a stack canary (and, with
``--locals``, for every stack local of 1, 2, 4 or 8 bytes or the last element of an
array), asks `kswgdb.symbols.armpoint` where to arm, exactly as ``kswgdb disasm``
does, and then checks that ``run`` accepts the suggestion (`resolve_watch`):

* placeable: a safe point after every write of the function itself, on every path
  (or on some paths only: counted apart);
* best candidate: no safe point, the suggestion is the least bad one (the line says why);
* refused: no suggestion, with the reason (grouped by its first words);
* run refuses: a suggestion ``run`` rejects (must be 0).

Stack-realigning functions (``and rsp, -N``) with a canary are counted apart, and
those that realign through a DRAP register among them: every one should be
placeable. Source lines play no part in where a watch may be armed, so the
listing is built without them (decoding every CU's line program would double the
time). Times are process CPU seconds (the machine is shared), with wall seconds
beside them.

Usage: python bench/armpoint.py [--image images/linux.toml] [--locals] [--every N]
       [--realigning] [--cold]

``--realigning`` judges only the functions whose code holds an ``and rsp, imm`` (the
stack-realigning ones: seconds instead of minutes); ``--cold`` only those with a
``NAME.cold`` part (unlikely paths, often the epilogue, moved out by GCC).
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.errors import BadInput  # noqa: E402
from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.symbols.listing import WatchRequest, build_listing  # noqa: E402
from kswgdb.symbols.program import Program  # noqa: E402
from kswgdb.watch.config import parse_watch  # noqa: E402
from kswgdb.watch.resolve import resolve_watch  # noqa: E402


def _reason_key(note: str) -> str:
    """A refusal's kind: its words without names and numbers."""
    words = re.sub(r"0x[0-9a-f]+|[+-]?\d+|'[^']*'|\S+@\S+", "N", note)
    words = re.sub(r"\b[a-z_][a-z0-9_.]*\b(?= (itself|never|has|'s))", "F", words)
    return " ".join(words.split()[:9])


class Tally:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, note: str = "", example: str = "") -> None:
        self.counts[kind] += 1
        if note:
            key = _reason_key(note)
            self.reasons[key] += 1
            self.examples.setdefault(key, example or note)

    def report(self, title: str) -> None:
        total = sum(self.counts.values())
        print(f"\n{title}: {total} watches")
        for kind in ("placeable", "some paths", "best candidate", "refused", "run refuses"):
            n = self.counts[kind]
            print(f"  {kind:15} {n:6}  {100 * n / max(total, 1):5.1f} %")
        if self.reasons:
            print("  reasons (no safe point, or no suggestion):")
            for key, n in self.reasons.most_common(8):
                print(f"    {n:6}  {key} ...   e.g. {self.examples[key][:110]}")


def _judge(program: Program, name: str, request: WatchRequest, tally: Tally) -> str:
    """The watch's kind as tallied: placeable, some paths, best candidate, refused or
    run refuses."""
    listing = build_listing(program, name, request)
    if listing.suggested_config is None:
        tally.add("refused", listing.note, f"{name}: {listing.note}")
        return "refused"
    try:
        resolve_watch(parse_watch(listing.suggested_config), program)
    except BadInput as e:
        tally.add("run refuses", str(e), f"{listing.suggested_config}: {e}")
        return "run refuses"
    plan_note = listing.note
    if "not safe" in plan_note or "no point in" in plan_note:
        tally.add("best candidate", plan_note, f"{name}: {plan_note}")
        return "best candidate"
    kind = "some paths" if "not on every path" in plan_note else "placeable"
    tally.add(kind)
    return kind


def _may_load_gs_canary(program: Program, sym) -> bool:
    """Could the function load Linux's per-CPU canary (``mov reg, gs:[0x28]``: a gs
    prefix and the 32-bit displacement 0x28)? Four in five functions cannot, and
    need no decoding in a canary-only pass."""
    try:
        code = program.symtab.read_bytes(sym.addr, sym.size)
    except BadInput:
        return False
    return b"\x65" in code and b"\x28\x00\x00\x00" in code


def _drap_like(analysis) -> bool:
    """``lea REG, [rsp+8]`` before the ``and rsp``: a DRAP realignment, anchored or not."""
    insns = analysis.code.instructions
    for i, x in enumerate(insns):
        if x.mnemonic == "and" and x.op_str.startswith("rsp"):
            return any(y.mnemonic == "lea" and y.op_str.endswith("[rsp + 8]")
                       for y in insns[max(0, i - 3):i])
    return False


#: ``and rsp, imm8`` and ``and rsp, imm32`` (REX.W 83/81 /4 with ModRM 0xe4).
_AND_RSP = (b"\x48\x83\xe4", b"\x48\x81\xe4")


def _may_realign(program: Program, sym) -> bool:
    """Could the function realign its stack? (Its bytes hold an ``and rsp, imm``.)"""
    try:
        code = program.symtab.read_bytes(sym.addr, sym.size)
    except BadInput:
        return False
    return any(pattern in code for pattern in _AND_RSP)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "images" / "linux.toml"))
    ap.add_argument("--locals", action="store_true", help="also every stack local (var=)")
    ap.add_argument("--every", type=int, default=1, help="only every Nth function")
    ap.add_argument("--realigning", action="store_true",
                    help="only functions whose code holds an `and rsp, imm`")
    ap.add_argument("--cold", action="store_true", help="only functions with a NAME.cold part")
    args = ap.parse_args()

    image = load_image(args.image)
    cpu0, wall0 = time.process_time(), time.monotonic()
    program = Program.load(image.symbols)
    program.lines = None          # no source lines: they do not decide placement
    funcs = sorted({s.addr: s for s in program.symtab.symbols
                    if s.kind == "func" and s.size}.values(), key=lambda s: s.addr)
    if args.cold:
        colds = {s.name.split(".cold")[0] for s in program.symtab.symbols
                 if s.kind == "func" and ".cold" in s.name}
        funcs = [s for s in funcs if s.name in colds]
    if args.realigning:
        funcs = [s for s in funcs if _may_realign(program, s)]
    funcs = funcs[::args.every]
    # A fixed shuffle: the tallies printed along the way are those of a uniform sample
    # (a pass stopped early still says something), the final ones the same as in order.
    random.Random(0).shuffle(funcs)
    which = " realigning" if args.realigning else ""
    which += " with a .cold part" if args.cold else ""
    print(f"{image.symbols}: {len(funcs)}{which} functions (every {args.every}), "
          f"symbols loaded in {time.process_time() - cpu0:.1f} s CPU")
    canary, realigned, drap, var = Tally(), Tally(), Tally(), Tally()
    with_canary = decoded = uncovered = skipped = 0
    not_placed: list[str] = []
    gs_canary = not program.symtab.lookup_all("__stack_chk_guard")
    for i, sym in enumerate(funcs):
        if i and i % 2000 == 0:
            print(f"  ... {i} functions, {time.process_time() - cpu0:.0f} s CPU: canary "
                  f"placeable {canary.counts['placeable']} of {sum(canary.counts.values())}, "
                  f"stack-realigning placeable {realigned.counts['placeable']} of "
                  f"{sum(realigned.counts.values())}", flush=True)
        if gs_canary and not args.locals and not _may_load_gs_canary(program, sym):
            skipped += 1        # no %gs:0x28 load: no canary, nothing to decode
            continue
        name = program.config_name(sym)
        try:
            analysis = program.analyze(name)
        except BadInput:
            continue
        decoded += 1
        if analysis.canary is not None:
            with_canary += 1
            kind = _judge(program, name, WatchRequest(), canary)
            if any(x.mnemonic == "and" and x.op_str.startswith("rsp")
                   for x in analysis.code.instructions):
                ok = kind in ("placeable", "some paths")
                note = "" if ok else f"{kind}: {name}"
                if not ok:
                    not_placed.append(f"{name} ({kind})")
                realigned.add(kind, note, name)
                if analysis.frame.drap_anchored or _drap_like(analysis):
                    drap.add(kind, note, name)
        if args.locals:
            region = analysis.frame.straight_line()
            pc = region[-1].end if region else sym.addr
            for v in program.locals_at(pc):
                if not v.on_stack or v.inlined:
                    continue
                if (v.size or 0) in (1, 2, 4, 8):
                    _judge(program, name, WatchRequest(var=v.name), var)
                else:
                    uncovered += 1      # a struct: var= names a member-sized part only
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    print(f"\n{decoded} functions decoded ({skipped} with no %gs:0x28 load skipped), "
          f"{with_canary} with a canary; "
          f"{cpu:.1f} s CPU ({wall:.1f} s wall) for the whole pass")
    canary.report("canary (fn=F fo=SUGGESTED)")
    realigned.report("  of which stack-realigning (and rsp, -N)")
    drap.report("  of which realigning through a DRAP register (lea r10, [rsp+8])")
    placed = realigned.counts["placeable"] + realigned.counts["some paths"]
    total = sum(realigned.counts.values())
    missing = ", ".join(not_placed)
    print(f"\nstack-realigning functions with a canary: {placed} of {total} placeable"
          + ("" if placed == total else f"; NOT placeable: {missing}"))
    if args.locals:
        var.report("var= (every stack local of 1/2/4/8 bytes, arrays: last element)")
        print(f"  + {uncovered} stack locals of other sizes (structs): var= cannot cover "
              "them whole (name a member-sized part, or so=/wl=)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
