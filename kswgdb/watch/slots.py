"""The pool of watchpoint slots a run may use at once.

KStackWatch preallocates ``mw`` hardware breakpoints and silently leaves a call
unwatched when the pool is empty. We keep the bound (``mw``, and the 4 x86 debug
registers under real KVM) but never silently: every refusal is counted so the
summary can say how many calls went unwatched.
"""

from __future__ import annotations

from dataclasses import dataclass

#: x86 has four debug-address registers (DR0-DR3).
KVM_DEBUG_REGISTERS = 4
#: Under TCG watchpoints are software and effectively unlimited (64+ measured);
#: each one slows guest memory accesses to its page, so keep a sane default.
TCG_DEFAULT_SLOTS = 256


@dataclass
class SlotPool:
    """A counter of free slots with a hard capacity."""

    capacity: int
    in_use: int = 0
    refused: int = 0
    high_water: int = 0

    @classmethod
    def for_run(cls, accel: str, tcg_slots: int = TCG_DEFAULT_SLOTS) -> SlotPool:
        """Capacity from the accelerator: the 4 debug registers under KVM, else ``--slots``.

        A config's ``mw`` is its own bound, counted by the engine per config:
        one config's ``mw=1`` never limits another config.
        """
        return cls(capacity=KVM_DEBUG_REGISTERS if accel == "kvm" else tcg_slots)

    def describe(self, accel: str) -> str:
        """One line for the end of a run: the pool shared by every config."""
        what = "x86 debug registers" if accel == "kvm" else "TCG watchpoints"
        line = f"slot pool: {self.capacity} {what}, at most {self.high_water} in use"
        return line + (f", {self.refused} call(s) found it full" if self.refused else "")

    def take(self) -> bool:
        if self.in_use >= self.capacity:
            self.refused += 1
            return False
        self.in_use += 1
        self.high_water = max(self.high_water, self.in_use)
        return True

    def give(self) -> None:
        if self.in_use <= 0:
            raise AssertionError("slot pool underflow: a watch was disarmed twice")
        self.in_use -= 1
