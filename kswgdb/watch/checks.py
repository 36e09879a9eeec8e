"""Checks of a resolved watch that need more than its function's code.

Both run before the guest starts: a slot that cannot be on the task's stack
would watch some unrelated memory, and a slot a debug register cannot cover
would watch a different range than the user asked for.

Alignment, decided for a kernel developer: x86 debug registers ignore the low
address bits of a 2-, 4- or 8-byte watch, so under KVM a misaligned slot would
silently watch the aligned range around it; that is refused. QEMU's TCG
watchpoints have no alignment rule, so under TCG the watch is exact and only a
warning says it would not carry over to hardware.
"""

from __future__ import annotations

import dataclasses

from kswgdb.errors import BadInput
from kswgdb.watch.resolve import ResolvedWatch

#: The stack pointer at any instruction of x86-64 kernel code is 8-byte aligned.
SP_ALIGNMENT = 8


def check_stack_reach(resolved: ResolvedWatch, thread_size: int) -> None:
    """Refuse an ``so``/``wl`` that cannot lie on the task's own stack."""
    cfg = resolved.config
    if resolved.mode != "offset":
        return
    lo, hi = cfg.sp_offset, cfg.sp_offset + cfg.watch_len
    if lo <= -thread_size or hi > thread_size:
        raise BadInput(f"so={cfg.sp_offset:#x} wl={cfg.watch_len} reaches outside the task's "
                       f"stack ({thread_size // 1024} KiB): SP+so must stay within the stack")


def misaligned(resolved: ResolvedWatch) -> bool:
    """The slot is not naturally aligned (given an 8-aligned RSP/RBP)."""
    length = resolved.slot.length
    return resolved.slot.offset % min(length, SP_ALIGNMENT) != 0


def alignment_warning(resolved: ResolvedWatch) -> str | None:
    if not misaligned(resolved):
        return None
    return (f"the {resolved.slot.length}-byte slot {resolved.slot} is not naturally aligned: "
            f"exact under TCG, but a hardware watchpoint (KVM) cannot cover it")


def check_alignment(resolved: ResolvedWatch, accel: str) -> None:
    """Under KVM a misaligned slot is an error (hardware would watch other bytes)."""
    if accel == "kvm" and misaligned(resolved):
        raise BadInput(f"{resolved.config.text or resolved.config.canonical()}: the "
                       f"{resolved.slot.length}-byte slot {resolved.slot} is not naturally "
                       f"aligned; x86 debug registers need natural alignment under KVM "
                       f"(use --accel tcg, or an so that is a multiple of wl)")


def with_alignment_warning(resolved: ResolvedWatch) -> ResolvedWatch:
    """``resolved`` with the TCG alignment warning added when it applies."""
    warning = alignment_warning(resolved)
    if warning is None:
        return resolved
    return dataclasses.replace(resolved, warnings=(*resolved.warnings, warning))
