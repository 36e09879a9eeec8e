"""Per-task call frames of watched functions: depth, re-entry, and return matching.

State is kept per guest *task*, not per vCPU, because a task can be preempted on
one CPU and resumed on the other between its probe and its return. A frame is
identified by (task, CFA): the CFA (SP before the call) is unique among the
live frames of one task, so recursion and loops cannot be confused:

- a probe that fires again with the same CFA is the same call going round a
  loop: nothing new is armed (KStackWatch's rule);
- a probe with a CFA *above* a recorded frame means that frame returned without
  us seeing it (the task longjmp'd, or its return breakpoint was lost): the
  stale frame is dropped so depth stays right;
- a return breakpoint is matched by the task and SP == CFA, so a recursive call
  or another task passing the same return address never disarms the wrong watch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ArmedWatch:
    """A watchpoint installed for one call."""

    addr: int
    length: int
    old_value: bytes
    spec_index: int
    owner_task: int
    depth: int
    armed_at: float
    hits: int = 0
    armed_value: bytes = b""    # the bytes when armed (old_value follows each hit)


@dataclass
class Frame:
    """One live call of a watched function by one task."""

    spec_index: int
    task: int
    cfa: int
    return_addr: int
    depth: int
    watch: ArmedWatch | None = None
    holds_return: bool = False      # disarmed by a return-address breakpoint
    # (addr, length) of read watchpoints whose hit is this frame's release
    release_reads: tuple[tuple[int, int], ...] = ()
    # (addr, length) of the access watchpoint whose read by the canary check is this
    # frame's release (release_by_check); when armed, it is also ``watch``
    sensor: tuple[int, int] | None = None


@dataclass
class TaskFrames:
    """The live watched frames of every task, innermost last per task."""

    by_task: dict[int, list[Frame]] = field(default_factory=dict)

    def depth_at(self, task: int, spec_index: int, cfa: int) -> int:
        """How many calls of the same watch are live below (outside) this one."""
        return sum(
            1 for f in self.by_task.get(task, ())
            if f.spec_index == spec_index and f.cfa > cfa
        )

    def find(self, task: int, spec_index: int, cfa: int) -> Frame | None:
        for f in self.by_task.get(task, ()):
            if f.spec_index == spec_index and f.cfa == cfa:
                return f
        return None

    def stale_below(self, task: int, cfa: int) -> list[Frame]:
        """Frames of ``task`` that lie below ``cfa``: they returned unseen.

        A live call at ``cfa`` proves that every frame deeper than it (lower CFA)
        on the same stack is gone.
        """
        return [f for f in self.by_task.get(task, ()) if f.cfa < cfa]

    def push(self, frame: Frame) -> None:
        self.by_task.setdefault(frame.task, []).append(frame)

    def remove(self, frame: Frame) -> None:
        frames = self.by_task.get(frame.task, [])
        frames.remove(frame)
        if not frames:
            self.by_task.pop(frame.task, None)

    def returning(self, task: int, sp: int, return_addr: int) -> list[Frame]:
        """Frames that end when ``task`` reaches ``return_addr`` with SP == ``sp``.

        The matched frame and anything deeper than it (which must have unwound
        too) are returned, innermost first.
        """
        frames = self.by_task.get(task, [])
        if not any(f.cfa == sp and f.return_addr == return_addr for f in frames):
            return []
        return sorted((f for f in frames if f.cfa <= sp), key=lambda f: f.cfa)

    def of_task(self, task: int) -> list[Frame]:
        return list(self.by_task.get(task, ()))

    def all(self) -> list[Frame]:
        return [f for frames in self.by_task.values() for f in frames]

    def uses_return_addr(self, return_addr: int) -> bool:
        return any(f.return_addr == return_addr for f in self.all())
