"""Decoding, the canary slot, arming offsets and the writer of a hit.

The truth is the fixture running natively under gdb: the slot we compute must
hold the guard value at the arming point, and a real hardware watchpoint's
stop PC must lead back to the store that fired it.
"""

from __future__ import annotations

import pytest

from kswgdb.errors import BadInput
from kswgdb.symbols.frame import FrameAnalysis
from kswgdb.symbols.program import Program
from kswgdb.symbols.prologue import FrameSlot, find_canary
from kswgdb.symbols.watched import body_state, watched_var
from kswgdb.watch.config import parse_watch
from kswgdb.watch.resolve import resolve_watch
from tests.fixtures.build import CANARY_FUNCS, binary, gdb_values, needs_gdb

FLAVOURS = ["global", "gs", "dwarf4", "nofp"]


def _program(flavour: str) -> Program:
    return Program.load(binary(flavour), cache=False)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_function_decodes_without_gaps(flavour: str) -> None:
    prog = _program(flavour)
    for name in prog.symtab.names("func"):
        code = prog.analyze(name).code
        assert code.instructions[0].addr == code.start
        for a, b in zip(code.instructions, code.instructions[1:], strict=False):
            assert a.end == b.addr
        assert code.instructions[-1].end == code.start + code.symbol.size
        assert all(i.mnemonic != "(bad)" for i in code.instructions)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_canary_found_in_canary_functions_only(flavour: str) -> None:
    prog = _program(flavour)
    for name in CANARY_FUNCS:
        canary = prog.analyze(name).canary
        assert canary is not None, name
        kind = "gs" if flavour == "gs" else "global"
        assert canary.guard_kind == kind
        assert canary.guard_ref == ("gs:0x28" if kind == "gs" else "__stack_chk_guard")
        # a realigned frame keeps its canary relative to the aligned RSP
        assert canary.base == ("rsp" if flavour == "nofp" or name == "realigned" else "rbp")
        store = prog.analyze(name).code.at(canary.store_addr)
        assert store.mnemonic == "mov" and store.mem_writes[0].disp == canary.offset
        load = prog.analyze(name).code.at(canary.load_addr)
        assert load.addr < store.addr
    for name in ["no_canary", "kmain", "_start"]:
        assert prog.analyze(name).canary is None, name
    assert prog.analyze("publish").canary is not None      # -fstack-protector-all


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_canary_slot_holds_the_guard_at_run_time(flavour: str) -> None:
    """Stop at the suggested arming point and read the slot: it must be the canary."""
    needs_gdb()
    prog = _program(flavour)
    guard = "percpu_area[0].canary" if flavour == "gs" else "__stack_chk_guard"
    for name in CANARY_FUNCS:
        resolved = resolve_watch(parse_watch(f"fn={name} fo={prog.analyze(name).suggest_offset()}"),
                                 prog)
        slot = resolved.slot
        slot_value, guard_value, sp_after_fo = gdb_values(
            binary(flavour), f"*{resolved.arm_addr:#x}",
            [f"*(long *)(${slot.base} + {slot.offset})", f"(long){guard}", "$rsp"])
        assert slot_value == guard_value != 0, name


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_suggested_offset_is_the_boundary_after_the_canary_store(flavour: str) -> None:
    prog = _program(flavour)
    for name in CANARY_FUNCS:
        analysis = prog.analyze(name)
        fo = analysis.suggest_offset()
        store = analysis.code.at(analysis.canary.store_addr)
        assert analysis.code.is_boundary(analysis.symbol.addr + fo)
        assert analysis.symbol.addr + fo == store.end, name
        assert analysis.code.at(store.end).flow is None


def test_suggested_offset_for_a_local_follows_every_store_of_the_function() -> None:
    """recurse stores mark, hands &mark to publish(), and stores it again after the
    recursion: the only point after all three is after the last store."""
    prog = _program("global")
    rec = prog.analyze("recurse")
    mark = prog.local("recurse", "mark", rec.symbol.addr + rec.suggest_offset())
    plan = rec.plan(FrameSlot(mark.cfa_offset, 4))
    assert [(w.kind, w.insn.mnemonic) for w in plan.writers] == \
        [("store", "mov"), ("call", "call"), ("store", "mov")]
    assert plan.safe and plan.fo == plan.writers[-1].insn.end - rec.symbol.addr
    stores = rec.init_stores(FrameSlot(mark.cfa_offset, 4))
    assert [s.insn.text for s in stores] == ["mov dword ptr [rbp - 0x1c], edi"]
    early = stores[-1].insn.end - rec.symbol.addr
    assert rec.after_init_offset(FrameSlot(mark.cfa_offset, 4)) == early
    assert "itself writes the watched bytes at" in plan.check(early, "the watched bytes")
    assert rec.slot("rbp", -0x1c, 4).cfa_offset == mark.cfa_offset
    assert rec.init_stores(rec.slot("rbp", -0x1c, 4)) == stores
    later = rec.init_stores(FrameSlot(mark.cfa_offset, 4), straight_only=False)
    assert [s.insn.text for s in later] == ["mov dword ptr [rbp - 0x1c], edi",
                                            "mov dword ptr [rbp - 0x1c], ebx"]


@pytest.mark.parametrize("flavour", ["global", "nofp"])
def test_rep_stos_is_an_initialising_store_covering_the_buffer(flavour: str) -> None:
    prog = _program(flavour)
    rep = prog.analyze("rep_victim")
    buf = prog.local("rep_victim", "buf", rep.symbol.addr + rep.suggest_offset())
    for index in (0, 15):
        stores = rep.init_stores(FrameSlot(buf.cfa_offset + 8 * index, 8))
        assert [s.insn.mnemonic for s in stores] == ["rep stosq"]
        assert (stores[0].cfa_offset, stores[0].length) == (buf.cfa_offset, 128)
    assert rep.init_stores(FrameSlot(buf.cfa_offset + 128, 8)) == [] or flavour == "nofp"


def test_gs_guard_at_another_offset_needs_the_epilogue_check() -> None:
    """A %gs load at an unusual offset counts only if the epilogue compares it again."""
    prog = _program("gs")
    code = prog.analyze("recurse").code
    assert find_canary(code, prog.symtab, FrameAnalysis(code)).guard_ref == "gs:0x28"


def test_instruction_before_every_boundary() -> None:
    prog = _program("global")
    for name in ["recurse", "canary_victim", "rep_victim"]:
        code = prog.analyze(name).code
        assert prog.disasm.instruction_before(code.start) is None   # the caller's call
        for insn in code.instructions:
            assert prog.disasm.instruction_before(insn.end) == insn
    # outside any function's bytes (alignment padding), the back-scan still works
    rec = prog.function("recurse")
    last = prog.analyze("recurse").code.instructions[-1]
    assert prog.disasm.instruction_before(rec.end) == last


def test_writer_of_a_real_hardware_watchpoint_hit() -> None:
    """x86 reports a data breakpoint after the store: the writer is the instruction before."""
    needs_gdb()
    prog = _program("global")
    rec = prog.analyze("recurse")
    mark = prog.local("recurse", "mark", rec.symbol.addr + rec.suggest_offset())
    early = rec.after_init_offset(FrameSlot(mark.cfa_offset, 4))
    resolved = resolve_watch(parse_watch(f"fn=recurse fo={early} var=mark"), prog)
    slot = resolved.slot
    (pc,) = gdb_values(binary("global"), f"*{resolved.arm_addr:#x}", ["$pc"],
                       after=["delete 1", f"watch -l *(int *)(${slot.base} + {slot.offset})",
                              "continue"])
    writer = prog.writer_of(pc)
    assert writer.text == "mov dword ptr [rbp - 0x1c], ebx"
    assert writer.end == pc
    assert prog.symbolize(writer.addr).name == "recurse"


def test_writer_inside_rep_stos() -> None:
    """rep stos traps after each element with PC still on itself."""
    needs_gdb()
    prog = _program("global")
    rep = prog.analyze("rep_victim")
    arm = rep.symbol.addr + rep.suggest_offset()
    buf = prog.local("rep_victim", "buf", arm)
    base, off = rep.frame.state_before(arm).from_cfa(buf.cfa_offset + 8 * 8)
    (pc,) = gdb_values(binary("global"), f"*{arm:#x}", ["$pc"],
                       after=["delete 1", f"watch -l *(long *)(${base} + {off})", "continue"])
    writer = prog.writer_of(pc)
    assert writer.mnemonic == "rep stosq" and writer.addr == pc


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_realigned_frame_is_watchable_in_every_mode(flavour: str) -> None:
    """and rsp, -64: slots from the live SP at the probe, the CFA and the release
    point from RBP (never from an aligned SP), in canary, var= and so/wl modes."""
    prog = _program(flavour)
    rea = prog.analyze("realigned")
    assert any(i.mnemonic == "and" and i.op_str.startswith("rsp") for i in rea.code.instructions)
    canary_fo = rea.suggest_offset()
    for text in (f"fn=realigned fo={canary_fo:#x}", "fn=realigned fo={fo:#x} var=buf[7]"):
        if "{fo" in text:
            buf = prog.local("realigned", "buf", rea.symbol.addr + canary_fo)
            assert buf.location.base == "rsp" or buf.cfa_offset is not None
            w = watched_var(prog, rea, "buf", 7, rea.symbol.addr + canary_fo, body_state(rea))
            plan = rea.plan(w.slot)
            assert plan.safe and [x.kind for x in plan.writers][-1] == "call"   # publish(buf)
            text = text.format(fo=plan.fo)
        r = resolve_watch(parse_watch(text), prog)
        assert r.slot.base == "rsp" and r.frame_cfa is not None
        assert r.frame_cfa[0] == "rbp" and r.frame_cfa[1] == 16
        assert r.release_points() and all(base == "rbp" for _, base, _ in r.release_points())
        spec = r.to_arm_spec()
        assert spec.read_exits == ()
    so = r.slot.offset
    r2 = resolve_watch(parse_watch(f"fn=realigned fo={r.probe_addr - rea.symbol.addr:#x} "
                                   f"so={so:#x} wl=8"), prog)
    assert r2.cfa_offset == r.cfa_offset and r2.release_points() == r.release_points()


# -- resolve_watch -----------------------------------------------------------------------

def _resolve(text: str, flavour: str = "global"):
    return resolve_watch(parse_watch(text), _program(flavour))


def test_resolve_canary_mode() -> None:
    prog = _program("global")
    fo = prog.analyze("recurse").suggest_offset()
    r = _resolve(f"fn=recurse fo={fo:#x}")
    assert r.mode == "canary" and r.canary is not None
    assert (r.slot.base, r.slot.offset, r.slot.length) == ("rbp", r.canary.offset, 8)
    assert r.arm_addr == r.probe_insn.end and r.probe_addr == r.function.addr + fo
    assert r.suggested_offset == fo and r.warnings == ()
    assert r.returns and all(prog.analyze("recurse").code.at(a).flow == "ret" for a in r.returns)


def test_resolve_mid_instruction_fo_names_the_boundaries() -> None:
    prog = _program("global")
    code = prog.analyze("recurse").code
    long_insn = next(i for i in code.instructions if i.size >= 3)
    fo = long_insn.addr + 1 - code.start
    start = long_insn.addr - code.start
    with pytest.raises(BadInput) as info:
        _resolve(f"fn=recurse fo={fo:#x}")
    assert str(info.value) == (
        f"fo={fo:#x} is not an instruction boundary of recurse: it falls inside the "
        f"instruction at {start:#x} ({long_insn.text}); nearest boundaries {start:#x} and "
        f"{long_insn.end - code.start:#x}")


@pytest.mark.parametrize("text,fragment", [
    ("fn=recurs fo=0", "no function named 'recurs' in kswfix-global (did you mean recurse?)"),
    ("fn=recurse fo=0x1000", "fo=0x1000 is past the end of recurse (size 0x"),
    ("fn=recurse fo=0", "fo=0x0 arms before recurse stores its canary at +0x"),
    ("fn=no_canary fo=0", "no_canary has no stack canary"),
    ("fn=array32 fo=0x19 var=words", "words is an array of 32 x 8 bytes: name one element, "
                                     "e.g. var=words[31]"),
    ("fn=array32 fo=0x19 var=words[32]", "index out of range (words has 32 elements)"),
    ("fn=recurse fo=0x16 var=mark[1]", "var=mark[1]: mark is not an array (volatile int)"),
    ("fn=recurse fo=0x16 var=depth", "'depth' lives in register"),
])
def test_resolve_errors(text: str, fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        _resolve(text)
    assert fragment in str(info.value)


def test_resolve_refuses_a_call_at_fo() -> None:
    prog = _program("global")
    code = prog.analyze("recurse").code
    call = next(i for i in code.instructions if i.flow == "call")
    with pytest.raises(BadInput, match=r"is a call \(call 0x[0-9a-f]+\): watches arm after the "
                                       r"instruction at fo has run"):
        _resolve(f"fn=recurse fo={call.addr - code.start:#x}")


@pytest.mark.parametrize("flavour", ["global", "nofp"])
def test_offset_mode_is_sp_after_the_instruction_at_fo(flavour: str) -> None:
    """KStackWatch's so is relative to SP after fn+fo ran; check it lands on mark."""
    needs_gdb()
    prog = _program(flavour)
    rec = prog.analyze("recurse")
    fo = rec.suggest_offset()
    mark = resolve_watch(parse_watch(f"fn=recurse fo={fo} var=mark"), prog)
    # An fo whose instruction moves RSP (push rbx) exercises the "after" semantics.
    push_fo = next(i.addr for i in rec.code.instructions if i.text == "push rbx") - rec.symbol.addr
    for probe in (fo, push_fo):
        state = rec.frame.state_after(rec.symbol.addr + probe)
        so = mark.cfa_offset + state.sp
        r = resolve_watch(parse_watch(f"fn=recurse fo={probe} so={so} wl=4"), prog)
        assert (r.slot.base, r.slot.offset, r.slot.length) == ("rsp", so, 4)
        assert r.cfa_offset == mark.cfa_offset
        rsp, addr = gdb_values(binary(flavour), f"*{r.arm_addr:#x}", ["$rsp", "&mark"]) \
            if probe == fo else gdb_values(binary(flavour), f"*{r.arm_addr:#x}",
                                           ["$rsp", f"$rsp + {so}"])
        assert rsp + so == addr
    pushed = resolve_watch(parse_watch(f"fn=recurse fo={push_fo} so=0 wl=8"), prog)
    assert pushed.sp_delta == -8


def test_resolve_warns_when_arming_before_the_own_initialising_store() -> None:
    prog = _program("global")
    r = _resolve(f"fn=recurse fo={prog.analyze('recurse').suggest_offset():#x} var=mark")
    assert len(r.warnings) == 1
    assert "arms before recurse itself writes mark at +0x18" in r.warnings[0]
    assert f"fo={r.suggested_offset:#x} arms after every such write" in r.warnings[0]
    again = _resolve(f"fn=recurse fo={r.suggested_offset:#x} var=mark")
    assert again.warnings == () and str(again.slot) == "[rbp-0x1c]/4"


# -- the engine's view ---------------------------------------------------------------------

def test_arm_spec_for_the_engine() -> None:
    prog = _program("global")
    fo = prog.analyze("recurse").suggest_offset()
    r = _resolve(f"fn=recurse fo={fo:#x} dp=3 ph=1")
    spec = r.to_arm_spec()
    assert (spec.func, spec.func_addr, spec.probe_addr) == ("recurse", r.function.addr, r.arm_addr)
    assert (spec.cfa_base, spec.cfa_offset) == ("rbp", 16)
    assert (spec.base, spec.offset, spec.length) == ("rbp", r.canary.offset, 8)
    assert spec.guard.kind == "global"
    assert spec.guard.addr == prog.global_address("__stack_chk_guard")
    assert (spec.depth, spec.panic, spec.what) == (3, True, "canary of recurse")
    assert spec.slot_address(sp=0x1000, fp=0x2000) == 0x2000 + r.canary.offset
    gs_prog = _program("gs")
    gs_fo = gs_prog.analyze("recurse").suggest_offset()
    gs = resolve_watch(parse_watch(f"fn=recurse fo={gs_fo}"), gs_prog)
    assert (gs.to_arm_spec().guard.kind, gs.to_arm_spec().guard.offset) == ("gs", 0x28)
    nofp = _program("nofp")
    spec = resolve_watch(parse_watch(f"fn=recurse fo={nofp.analyze('recurse').suggest_offset()}"
                                     " var=mark"), nofp).to_arm_spec()
    assert spec.cfa_base == "rsp" and spec.base == "rsp" and spec.what == "local mark of recurse"


def test_symbolizer_adapter() -> None:
    from kswgdb.watch.symbolize import ProgramSymbolizer
    from kswgdb.watch.target import Registers

    prog = _program("global")
    sym = ProgramSymbolizer(prog)
    rec = prog.function("recurse")
    store = next(i for i in prog.analyze("recurse").code.instructions
                 if i.text == "mov dword ptr [rbp - 0x1c], ebx")
    addr, text, context = sym.writer(store.end, Registers({"rip": store.end}))
    assert (addr, text) == (store.addr, store.text)
    assert (store.addr, store.text) in context and len(context) == 7
    assert sym.symbol(store.addr) == f"recurse+{store.addr - rec.addr:#x}/{rec.size:#x}"
    assert sym.symbol(0x10) == "0x10"
    assert sym.function(store.addr) == "recurse" and sym.function(0x10) is None
    assert sym.source(store.addr).line == prog.source_line(store.addr).line
    assert "pushed its return address" in sym.writer(rec.addr, Registers({}))[1]
    assert "not an instruction boundary of recurse" in sym.writer(store.addr + 1, Registers({}))[1]


def test_symbolizer_proves_a_store_missed_a_slot_only_when_it_can() -> None:
    """`store_misses`: the address of a plain store, from the registers after it ran."""
    from kswgdb.watch.symbolize import ProgramSymbolizer
    from kswgdb.watch.target import Registers

    prog = _program("global")
    sym = ProgramSymbolizer(prog)
    code = prog.analyze("recurse").code.instructions
    store = next(i for i in code if i.text == "mov dword ptr [rbp - 0x1c], ebx")
    regs = Registers({"rip": store.end, "rbp": 0x9000})
    slot = 0x9000 - 0x1c
    # the store writes [slot, slot + 4)
    assert sym.store_misses(store.end, regs, slot + 4, 8)          # just above it
    assert sym.store_misses(store.end, regs, slot - 8, 8)          # just below it
    assert not sym.store_misses(store.end, regs, slot + 3, 8)      # over its last byte
    assert not sym.store_misses(store.end, regs, slot - 7, 8)      # over its first byte
    push = next(i for i in code if i.is_push)
    assert not sym.store_misses(push.end, Registers({"rip": push.end, "rsp": 0}), 0x100, 8)
