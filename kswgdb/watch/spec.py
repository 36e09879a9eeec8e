"""A watch ready to arm: the config string resolved against the kernel's symbols.

The config parser knows the user's words, the symbol layer knows the kernel; the
engine only needs numbers: where the probe breakpoint goes, which register the
watched slot is relative to, where the return address is. Keeping this small
means the engine can be tested with hand-made specs and no ELF file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GuardSource:
    """Where the expected canary value lives, to check a slot before arming it.

    ``kind`` is ``"global"`` (``__stack_chk_guard`` at ``addr``) or ``"gs"`` (the
    per-CPU canary at ``%gs:offset``, Linux on x86-64: offset 0x28).
    """

    kind: str
    addr: int = 0
    offset: int = 0


@dataclass(frozen=True)
class ArmSpec:
    """Everything the engine needs to arm one watch config at every matching call.

    The probe breakpoint sits at ``probe_addr``; state is read *after* the
    instruction at ``fn+fo`` has run (KStackWatch arms in a kprobe post-handler),
    so ``probe_addr`` is the next instruction. The canonical frame address (the
    caller's SP before the call) is ``cfa_base`` + ``cfa_offset`` there: the
    return address is at ``CFA - 8`` and SP equals CFA when the call has returned.
    """

    text: str                   # the config string as the user wrote it
    func: str
    func_addr: int
    func_size: int
    probe_addr: int
    cfa_offset: int
    mode: str                   # "canary" | "offset" | "var"
    base: str = "rsp"           # register the slot is relative to: "rsp" or "rbp"
    offset: int = 0
    length: int = 8
    what: str = ""              # human words: "canary of s3_victim", "local mark"
    depth: int = 0
    max_watch: int = 0
    panic: bool = False
    guard: GuardSource | None = None
    canary_found_by: str = ""   # "prologue" or "scan" (canary mode)
    scan_words: int = 128       # the original's upward scan window
    cfa_base: str = "rsp"       # "rbp" when the frame pointer is set up at the probe
    # Where the function releases the watched slot (the epilogue's `leave`,
    # `lea rsp`, `add rsp`...), each with the CFA rule holding there: the watch
    # is removed *before* SP moves above the slot, so no interrupt frame can be
    # pushed onto a still-watched slot. Empty: disarm at the return address.
    exits: tuple[tuple[int, str, int], ...] = ()
    # The same releases seen by a read watchpoint instead (kswgdb.watch.readrelease):
    # (read CFA offset, read length, SP - CFA after the read), one per distinct
    # read; empty when some release point has no such read.
    read_exits: tuple[tuple[int, int, int], ...] = ()
    # A canary watch whose release the stack-protector check sees (kswgdb.watch.checkrelease):
    # the PCs just after each instruction that reads the slot; empty when not proven.
    check_ends: tuple[int, ...] = ()

    def cfa(self, sp: int, fp: int) -> int:
        """The frame's CFA for a call whose registers at the probe are sp and fp."""
        return (fp if self.cfa_base == "rbp" else sp) + self.cfa_offset

    def slot_address(self, sp: int, fp: int) -> int:
        """The watched address for a call whose registers at the probe are sp and fp."""
        return (fp if self.base == "rbp" else sp) + self.offset
