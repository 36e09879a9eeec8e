"""The arming analysis (`kswgdb.symbols.armpoint`) on the test kernel and the fixture.

The property that matters to a user: whatever ``disasm`` suggests, ``run`` accepts
(for the canary, for every stack local, for SP ranges), and the suggested point
comes after every write of the function itself into the watched bytes.
"""

from __future__ import annotations

import pytest

from kswgdb.errors import BadInput
from kswgdb.image import load as load_image
from kswgdb.symbols.listing import WatchRequest, build_listing
from kswgdb.symbols.program import Program
from kswgdb.symbols.prologue import FrameSlot
from kswgdb.watch.config import parse_watch
from kswgdb.watch.resolve import resolve_watch


@pytest.fixture(scope="module")
def kernel() -> Program:
    img = load_image("kswtest")
    if not img.symbols.exists():
        pytest.skip("test kernel not built (make guest)")
    return Program.load(img.symbols, cache=False)


def _requests(program: Program, name: str):
    """The canary (default), and every stack local of the function by name."""
    yield WatchRequest()
    analysis = program.analyze(name)
    region = analysis.frame.straight_line()
    pc = region[-1].end if region else analysis.symbol.addr
    for v in program.locals_at(pc):
        if v.on_stack and not v.inlined:
            yield WatchRequest(var=v.name)
            yield WatchRequest(so=0, wl=8)


def test_disasm_never_suggests_what_run_refuses(kernel: Program) -> None:
    suggested = 0
    for name in kernel.symtab.names("func"):
        sym = kernel.function(name)
        if not sym.size:
            continue
        for request in _requests(kernel, name):
            listing = build_listing(kernel, name, request)
            if listing.suggested_config is None:
                assert listing.note, (name, request)        # says why, in one line
                assert "\n" not in listing.note
                continue
            try:
                resolved = resolve_watch(parse_watch(listing.suggested_config), kernel)
            except BadInput as e:
                raise AssertionError(f"{listing.suggested_config}: run refuses: {e}") from e
            assert resolved.release_points(), listing.suggested_config
            suggested += 1
    assert suggested > 50


def test_suggestion_follows_every_own_write(kernel: Program) -> None:
    """No writer of the watched bytes can run after the suggested point (safe plans)."""
    for name in ("s1_overflow", "s3_buggy", "s3_victim", "s5_victim", "s6_helper"):
        analysis = kernel.analyze(name)
        for start, size in analysis.find_objects():
            plan = analysis.plan(FrameSlot(start, min(size, 8)))
            assert plan.safe, (name, plan.reason)
            blocks = analysis.writers.blocks
            arm = analysis.symbol.addr + plan.fo
            b = blocks.block_of[arm]
            later = blocks.backward({blocks.block_of[w.insn.addr] for w in plan.writers})
            assert not any(s in later for s in blocks.succs[b]), name
            assert not any(w.insn.addr > arm and blocks.block_of[w.insn.addr] == b
                           for w in plan.writers), name


def test_indexed_loop_store_marks_and_covers_the_array(kernel: Program) -> None:
    """s3_victim fills ledger with ``mov [r12+rax*8-0x38000], rax``: a writer of ledger,
    bounded by ledger's DWARF extent (not the canary above it)."""
    analysis = kernel.analyze("s3_victim")
    ledger = kernel.local("s3_victim", "ledger", analysis.symbol.addr + 0x30)
    plan = analysis.plan(FrameSlot(ledger.cfa_offset + 7 * 8, 8))
    assert [w.kind for w in plan.writers] == ["indexed"]
    assert (plan.writers[0].cfa_offset, plan.writers[0].length) == (ledger.cfa_offset, 64)
    assert plan.fo > plan.writers[0].insn.addr - analysis.symbol.addr
    canary = analysis.plan()
    assert [w.kind for w in canary.writers] == ["store"]
    listing = build_listing(kernel, "s3_victim")
    row = next(r for r in listing.rows if r.insn.addr == plan.writers[0].insn.addr)
    assert "init ledger" in row.marks or "writes ledger" in row.marks


def test_disasm_var_element_resolves_like_run(kernel: Program) -> None:
    """disasm --var 'buf[8]' gives a config naming buf[8] that run resolves to the same bytes."""
    listing = build_listing(kernel, "s3_buggy", WatchRequest(var="buf", index=8))
    assert listing.suggested_config is not None and listing.suggested_config.endswith("var=buf[8]")
    resolved = resolve_watch(parse_watch(listing.suggested_config), kernel)
    buf = kernel.local("s3_buggy", "buf", resolved.arm_addr)
    assert resolved.cfa_offset == buf.cfa_offset + 64
    refused = build_listing(kernel, "s3_buggy", WatchRequest(var="buf", index=16))
    assert refused.suggested_config is None and "index out of range" in refused.note


def test_run_refusal_names_the_fo_of_its_own_mode(kernel: Program) -> None:
    """A watch on a local at a jump is refused with the local's fo, not the canary's."""
    analysis = kernel.analyze("s3_buggy")
    jump = next(i for i in analysis.code.instructions if i.flow == "cjump")
    fo = jump.addr - analysis.symbol.addr
    with pytest.raises(BadInput) as e:
        resolve_watch(parse_watch(f"fn=s3_buggy fo={fo:#x} var=buf[15]"), kernel)
    buf = kernel.local("s3_buggy", "buf", analysis.symbol.addr + 0x30)
    want = analysis.plan(FrameSlot(buf.cfa_offset + 15 * 8, 8)).fo
    assert want != analysis.plan().fo
    assert f"suggested for this watch: fo={want:#x}" in str(e.value)
