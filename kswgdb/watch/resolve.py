"""A parsed watch config checked against the kernel's symbols and code.

Everything that can be known before the guest runs is checked here, so a bad
config fails in milliseconds with a message instead of after a boot: the
function exists, ``fo`` is inside it and on an instruction boundary, the canary
or the named local really is where the watch will look. The result tells the
engine exactly what to do at run time: where to stop, which register to read,
and which bytes relative to it to watch.

Arming semantics are KStackWatch's: its kprobe post-handler runs *after* the
instruction at ``fn+fo`` has executed, and ``so`` is relative to SP at that
moment. ``arm_addr`` is therefore the next instruction, where the machine state
equals the post-handler's; the slot is given relative to RBP or RSP there.
"""

from __future__ import annotations

from dataclasses import dataclass

from kswgdb.errors import BadInput
from kswgdb.symbols.armpoint import ArmPlan
from kswgdb.symbols.disasm import Instruction
from kswgdb.symbols.dwarf import DwarfInfo
from kswgdb.symbols.elf import Symbol, SymbolTable
from kswgdb.symbols.frame import FrameState, is_aligned
from kswgdb.symbols.locals import FrameVar
from kswgdb.symbols.program import Program
from kswgdb.symbols.prologue import CanarySlot, FrameSlot, FunctionAnalysis
from kswgdb.symbols.watched import sp_range, watched_var
from kswgdb.watch.checkrelease import check_ends
from kswgdb.watch.config import WatchConfig
from kswgdb.watch.readrelease import read_exits
from kswgdb.watch.spec import ArmSpec, GuardSource

_FLOW_WORDS = {"call": "a call", "jump": "a jump", "cjump": "a conditional jump",
               "ret": "a return", "trap": "a trap"}


@dataclass(frozen=True)
class WatchSlot:
    """The watched bytes: ``[base + offset, +length)`` with base read at ``arm_addr``."""

    base: str            # "rbp" | "rsp"
    offset: int
    length: int

    def address(self, base_value: int) -> int:
        return (base_value + self.offset) & 0xFFFF_FFFF_FFFF_FFFF

    def __str__(self) -> str:
        sign = "-" if self.offset < 0 else "+"
        return f"[{self.base}{sign}{abs(self.offset):#x}]/{self.length}"


@dataclass(frozen=True)
class ResolvedWatch:
    """What the engine needs to run one watch."""

    config: WatchConfig
    function: Symbol
    probe_addr: int                 # fn+fo, the KStackWatch probe point
    probe_insn: Instruction
    arm_addr: int                   # next instruction: state == post-handler state
    sp_delta: int | None            # RSP change done by probe_insn (None: unknown)
    slot: WatchSlot                 # relative to RBP/RSP at arm_addr
    cfa_offset: int | None          # the slot relative to the frame's CFA, if known
    canary: CanarySlot | None
    var: FrameVar | None
    suggested_offset: int | None
    returns: tuple[int, ...]        # addresses of the function's ret instructions
    warnings: tuple[str, ...] = ()
    # CFA = reg + off at arm_addr (rbp preferred); in a DRAP-realigned function the
    # frame's aligned anchor instead (`kswgdb.symbols.frame.ALIGNED`)
    frame_cfa: tuple[str, int] | None = None
    analysis: FunctionAnalysis | None = None
    #: Functions that never return (``__stack_chk_fail``): where a check's fail path ends.
    noreturn: frozenset[int] = frozenset()

    @property
    def mode(self) -> str:
        return self.config.mode

    def what(self) -> str:
        """Human words for the watched bytes, as hit reports name them."""
        name = self.function.name
        if self.mode == "canary":
            return f"canary of {name}"
        if self.mode == "var":
            return f"local {self.config.var} of {name}"
        sign = "-" if self.config.sp_offset < 0 else "+"
        return f"sp{sign}{abs(self.config.sp_offset):#x} of {name}"

    def to_arm_spec(self, read_release: bool = False, check_release: bool = False) -> ArmSpec:
        """The engine's view: numbers only (`kswgdb.watch.spec.ArmSpec`).

        ``read_release``: also plan read-watchpoint releases (the off-by-default
        experiment, `kswgdb.watch.readrelease`): analysed only then.
        ``check_release``: a canary watch's release seen by its own check's read
        (`kswgdb.watch.checkrelease`): analysed only then."""
        if self.frame_cfa is None:
            raise BadInput(f"cannot follow {self.function.name}'s stack pointer to "
                           f"fo={self.config.offset:#x}: pick an fo in the straight-line prologue")
        guard = None
        if self.canary is not None:
            if self.canary.guard_kind == "global":
                guard = GuardSource("global", addr=self.canary.guard_addr or 0)
            else:           # %gs:0x28, or %gs:__stack_chk_guard (a per-CPU symbol)
                ref = self.canary.guard_ref.split(":", 1)[1]
                offset = int(ref, 16) if ref.startswith("0x") else self.canary.guard_addr or 0
                guard = GuardSource(self.canary.guard_kind, offset=offset)
        cfg = self.config
        exits = self.release_points()
        return ArmSpec(
            text=cfg.text or cfg.canonical(), func=self.function.name,
            func_addr=self.function.addr, func_size=self.function.size,
            probe_addr=self.arm_addr, cfa_offset=self.frame_cfa[1], cfa_base=self.frame_cfa[0],
            mode=self.mode, base=self.slot.base, offset=self.slot.offset, length=self.slot.length,
            what=self.what(), depth=cfg.depth, max_watch=cfg.max_watch, panic=cfg.panic_hit,
            guard=guard, canary_found_by="prologue" if self.canary is not None else "",
            exits=exits, read_exits=self.read_release_plan(exits) if read_release else (),
            check_ends=self.check_release_plan(exits) if check_release else (),
        )

    def check_release_plan(self, exits: tuple[tuple[int, str, int], ...]) -> tuple[int, ...]:
        """Where the canary check reads the slot, if it sees every release
        (`kswgdb.watch.checkrelease`); ``()`` for other modes or when not proven."""
        if self.mode != "canary" or self.cfa_offset is None or self.analysis is None \
                or is_aligned(self.cfa_offset):
            return ()
        return check_ends(self.analysis.code, self.analysis.frame, self.arm_addr,
                          tuple(addr for addr, _, _ in exits), self.cfa_offset,
                          self.slot.length, self.noreturn)

    def read_release_plan(self, exits: tuple[tuple[int, str, int], ...]) -> tuple:
        """Read watchpoints that see every release point (`kswgdb.watch.readrelease`)."""
        if self.cfa_offset is None or self.analysis is None or is_aligned(self.cfa_offset):
            return ()
        return read_exits(self.analysis.code, self.analysis.frame,
                          tuple(addr for addr, _, _ in exits), self.cfa_offset,
                          self.slot.length)

    def release_points(self) -> tuple[tuple[int, str, int], ...]:
        """Instructions after which SP lies above the slot, with the CFA rule before them.

        Disarming there (instead of at the return address) closes the window in
        which an interrupt taken in the epilogue pushes its frame onto a slot
        that is still watched: a false positive, and under QEMU 7.2 TCG a lost
        interrupt (the watchpoint fires in the middle of interrupt delivery).
        """
        if self.cfa_offset is None or self.analysis is None:
            return ()
        return self.analysis.writers.releases(self.cfa_offset, self.slot.length)

    def describe(self) -> str:
        """One line for reports: where the watch points and why."""
        what = {"canary": "canary", "offset": "SP+so", "var": f"var {self.config.var}"}[self.mode]
        return (f"{self.function.name}+{self.probe_addr - self.function.addr:#x}: "
                f"{what} {self.slot}")


def resolve_watch(cfg: WatchConfig, symbols: Program | SymbolTable,
                  dwarf: DwarfInfo | None = None) -> ResolvedWatch:
    """Check ``cfg`` against the program and place its slot; `BadInput` if impossible."""
    program = symbols if isinstance(symbols, Program) else Program(symbols, dwarf)
    func = program.function(cfg.func)
    if cfg.offset >= func.size:
        raise BadInput(f"fo={cfg.offset:#x} is past the end of {func.name} (size {func.size:#x})")
    analysis = program.analyze(func)
    code = analysis.code
    probe_addr = func.addr + cfg.offset
    insn = code.at(probe_addr)
    if insn is None:
        inside = code.containing(probe_addr)
        before, after = code.nearest_boundaries(probe_addr)
        near = " and ".join(f"{b:#x}" for b in (before, after) if b is not None)
        what = f" ({inside.text})" if inside is not None else ""
        raise BadInput(f"fo={cfg.offset:#x} is not an instruction boundary of {func.name}: "
                       f"it falls inside the instruction at {before:#x}{what}; "
                       f"nearest boundaries {near}")
    if insn.flow is not None:
        hint = _suggestion_text(cfg, program, analysis, probe_addr)
        raise BadInput(f"fo={cfg.offset:#x} is {_FLOW_WORDS[insn.flow]} ({insn.text}): watches arm "
                       f"after the instruction at fo has run (KStackWatch's kprobe post-handler); "
                       f"pick a straight-line instruction{hint}")
    before_state = analysis.frame.state_before(probe_addr)
    after_state = analysis.frame.state_after(probe_addr)
    sp_delta = None
    if before_state is not None and after_state is not None \
            and before_state.sp is not None and after_state.sp is not None \
            and is_aligned(before_state.sp) == is_aligned(after_state.sp):
        sp_delta = before_state.sp - after_state.sp
    warnings: list[str] = []
    canary = var = None
    if cfg.mode == "canary":
        canary, cfa, slot = _canary_slot(cfg, analysis, after_state, probe_addr)
    elif cfg.mode == "offset":
        slot = WatchSlot("rsp", cfg.sp_offset, cfg.watch_len)
        cfa = None
        if after_state is not None and after_state.sp is not None:
            cfa = cfg.sp_offset - after_state.sp
        if cfg.sp_offset < 0:
            warnings.append(f"so={cfg.sp_offset:#x} watches below SP: callees and interrupts "
                            "write there, not this frame")
    else:
        var, cfa, slot = _var_slot(cfg, program, analysis, after_state, insn.end)
    suggested = None
    if cfa is not None:
        plan = analysis.plan(canary or FrameSlot(cfa, slot.length))
        suggested = plan.fo
        warnings += _timing_warnings(cfg, analysis, plan, probe_addr)
    returns = tuple(i.addr for i in code.instructions if i.flow == "ret")
    frame_cfa = analysis.frame.frame_rule(after_state) if after_state is not None else None
    resolved = ResolvedWatch(cfg, func, probe_addr, insn, insn.end, sp_delta, slot, cfa, canary,
                             var, suggested, returns, tuple(warnings), frame_cfa, analysis,
                             _noreturn(program))
    below_sp = cfa is not None and after_state is not None and after_state.sp is not None \
        and cfa + slot.length <= -after_state.sp
    if not below_sp and not resolved.release_points():
        raise BadInput(f"no release point for {resolved.what()} at fo={cfg.offset:#x}: "
                       f"{_no_release_reason(cfg, analysis, cfa)}; a watch left armed past "
                       "the epilogue reports every later use of the stack")
    return resolved


def _noreturn(program: Program) -> frozenset[int]:
    """The stack-protector's fail function(s): a canary check's fail path ends there."""
    return frozenset(s.addr for s in program.symtab.lookup_all("__stack_chk_fail"))


def _canary_slot(cfg: WatchConfig, analysis: FunctionAnalysis, state: FrameState | None,
                 probe_addr: int) -> tuple[CanarySlot, int | None, WatchSlot]:
    func = analysis.symbol
    canary = analysis.canary
    if canary is None:
        raise BadInput(f"{func.name} has no stack canary (no load of the stack-protector guard "
                       "stored into its frame): watch SP+so with wl=1/2/4/8, or var=NAME")
    if probe_addr < canary.store_addr:
        raise BadInput(f"fo={cfg.offset:#x} arms before {func.name} stores its canary at "
                       f"+{canary.store_addr - func.addr:#x}: use {_plan_words(analysis, None)}")
    if canary.cfa_offset is None or state is None:
        raise BadInput(f"cannot follow {func.name}'s stack pointer to fo={cfg.offset:#x}: "
                       "watch SP+so with wl= instead")
    placed = state.from_cfa(canary.cfa_offset)
    if placed is None:
        raise BadInput(f"neither RBP nor RSP is known relative to the frame at fo={cfg.offset:#x}"
                       f" in {func.name}: pick an fo before any stack realignment")
    return canary, canary.cfa_offset, WatchSlot(placed[0], placed[1], canary.length)


def _var_slot(cfg: WatchConfig, program: Program, analysis: FunctionAnalysis,
              state: FrameState | None, arm_pc: int) -> tuple[FrameVar, int | None, WatchSlot]:
    ref = cfg.var
    assert ref is not None
    watched = watched_var(program, analysis, ref.name, ref.index, arm_pc, state)
    cfa = watched.cfa_offset
    placed = state.from_cfa(cfa) if state is not None and cfa is not None else None
    if placed is None:
        loc = watched.var.location
        if loc.base in ("rbp", "rsp") and loc.offset is not None:
            return watched.var, cfa, WatchSlot(loc.base, loc.offset + watched.index_offset,
                                               watched.length)
        raise BadInput(f"cannot place {ref} relative to RBP or RSP at fo={cfg.offset:#x} in "
                       f"{analysis.symbol.name}")
    return watched.var, cfa, WatchSlot(placed[0], placed[1], watched.length)


def _timing_warnings(cfg: WatchConfig, analysis: FunctionAnalysis, plan: ArmPlan,
                     probe_addr: int) -> list[str]:
    """Arming before the function's own store into the slot means a certain false hit."""
    out = []
    func = analysis.symbol
    what = {"canary": "its canary", "offset": f"SP{cfg.sp_offset:+#x}",
            "var": str(cfg.var)}[cfg.mode]
    late = plan.check(cfg.offset, what)
    if late is not None:
        out.append(late)
    region = analysis.frame.straight_line()
    if region and probe_addr > region[-1].addr and cfg.offset != plan.fo:
        first = analysis.code.after(region[-1].addr)
        if first is not None:
            out.append(f"fo={cfg.offset:#x} is after {func.name}'s first branch or call "
                       f"(+{first.addr - func.addr:#x}): writes before arming are not watched")
    return out


def _mode_slot(cfg: WatchConfig, program: Program, analysis: FunctionAnalysis,
               probe_addr: int) -> FrameSlot | None:
    """The watched bytes of ``cfg``'s mode as a CFA range, if they can be placed at all."""
    if cfg.mode == "canary":
        return None
    state = analysis.frame.state_after(probe_addr)
    if cfg.mode == "offset":
        return sp_range(state, cfg.sp_offset, cfg.watch_len)
    assert cfg.var is not None
    try:
        nxt = analysis.code.after(probe_addr)
        watched = watched_var(program, analysis, cfg.var.name, cfg.var.index,
                              nxt.addr if nxt is not None else probe_addr, state)
    except BadInput:
        return None
    return watched.slot


def _plan_words(analysis: FunctionAnalysis, slot: FrameSlot | None) -> str:
    """``fo=0x23``, or the best candidate with why it is not safe."""
    try:
        return analysis.plan(slot).suggestion()
    except BadInput as e:
        return f"no fo ({e})"


def _suggestion_text(cfg: WatchConfig, program: Program, analysis: FunctionAnalysis,
                     probe_addr: int) -> str:
    """The suggestion for this watch's own mode (the canary's fo is no answer for a local)."""
    slot = _mode_slot(cfg, program, analysis, probe_addr)
    if slot is None and (cfg.mode != "canary" or analysis.canary is None):
        return ""
    return f" (suggested for this watch: {_plan_words(analysis, slot)})"


def _no_release_reason(cfg: WatchConfig, analysis: FunctionAnalysis, cfa: int | None) -> str:
    if cfa is None:
        return (f"the slot's place in {analysis.symbol.name}'s frame is not known statically "
                "(the stack pointer cannot be followed there)")
    return f"no instruction of {analysis.symbol.name} moves SP above the slot before returning"
