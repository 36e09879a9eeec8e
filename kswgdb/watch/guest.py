"""What the engine knows about the guest kernel: current task, names, canary, time.

Small pure functions over "read memory" and "registers", named after the kernel
concept they mirror, with the per-kernel numbers gathered in one ``GuestLayout``
built from the kernel's own DWARF (never typed by hand). Two flavours exist:

- ``kswtest``: the bundled test kernel. ``percpu_area[cpu].current`` is at
  ``%gs:offsetof(struct percpu, current)``; ``struct task`` has ``pid``,
  ``comm`` and ``stack``; the guard is the global ``__stack_chk_guard``.
- ``linux``: x86-64 Linux. ``current_task`` is a per-CPU variable, so its
  symbol value is an offset from the GS base; ``task_struct`` has ``pid``,
  ``comm``, ``stack``; the canary is per CPU at ``%gs:0x28``.

Where no layout is known the task is identified by its stack (SP rounded down to
the stack size), which is still right across preemption and migration.

Stack bounds come from the task itself where the layout has ``task->stack``
(both flavours do): the current task's ``stack`` member is the lowest address
of its stack, and the stack size is the kernel's ``THREAD_SIZE`` (Linux:
``__end_init_task - __start_init_task``, the linker's init stack; the test
kernel: 16 KiB, its documented ABI). An address that is not on the task's own
stack (an IRQ or exception stack, a stale pointer) falls back to rounding down
to the stack size, which is what such stacks are aligned to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kswgdb.watch.hits import TaskInfo
from kswgdb.watch.spec import GuardSource
from kswgdb.watch.target import Registers

ReadFn = Callable[[int, int], bytes]

DEFAULT_THREAD_SIZE = 16 * 1024


@dataclass(frozen=True)
class GuestLayout:
    """Offsets and addresses the engine reads guest structures with."""

    flavour: str = "generic"
    thread_size: int = DEFAULT_THREAD_SIZE
    current_gs_offset: int | None = None     # %gs:X holds the current task pointer
    task_stack_offset: int | None = None     # offsetof(task, stack): lowest stack address
    task_pid_offset: int | None = None
    task_pid_size: int = 4
    task_comm_offset: int | None = None
    task_comm_size: int = 16
    guard: GuardSource | None = None
    exit_function: str | None = None         # a function every dying task calls
    ticks_addr: int | None = None            # a global tick counter (guest time)
    irq_functions: tuple[str, ...] = ()      # functions that mean "interrupt context"
    #: Name prefixes of the interrupt and exception entry code (assembly stubs that
    #: push registers onto the interrupted stack before any C handler runs).
    entry_code: tuple[str, ...] = ()

    def is_entry_code(self, name: str | None) -> bool:
        return bool(name) and any(name.startswith(p) for p in self.entry_code)  # type: ignore[union-attr]


def stack_base(layout: GuestLayout, sp: int) -> int:
    """Lowest address of the (size-aligned) stack ``sp`` is on."""
    return sp & ~(layout.thread_size - 1)


def task_stack_base(layout: GuestLayout, task: int, read: ReadFn) -> int | None:
    """``task->stack`` (the lowest address of the task's stack), if the layout has it."""
    if layout.task_stack_offset is None or task < 0x1000 or _is_stack_identity(layout, task):
        return None
    try:
        base = int.from_bytes(read(task + layout.task_stack_offset, 8), "little")
    except Exception:  # noqa: BLE001 - unreadable: fall back to the aligned stack
        return None
    return base or None


def stack_bounds(layout: GuestLayout, addr: int, task: int | None = None,
                 read: ReadFn | None = None) -> tuple[int, int]:
    """``[base, top)`` of the stack holding ``addr``.

    The task's own stack (``task->stack``) when ``addr`` is on it, else the
    size-aligned stack around ``addr`` (IRQ and exception stacks, no layout).
    """
    if task is not None and read is not None:
        base = task_stack_base(layout, task, read)
        if base is not None and base <= addr < base + layout.thread_size:
            return base, base + layout.thread_size
    base = stack_base(layout, addr)
    return base, base + layout.thread_size


def current_task_address(layout: GuestLayout, regs: Registers) -> int | None:
    """Where the current task pointer of the stopped vCPU lives, if the layout says."""
    if layout.current_gs_offset is None or not regs.get("gs_base"):
        return None
    return regs.get("gs_base") + layout.current_gs_offset


def current_task_from(layout: GuestLayout, regs: Registers, raw: bytes | None) -> int:
    """The task identity from an already-read current pointer, else from the stack."""
    if raw:
        ptr = int.from_bytes(raw, "little")
        if ptr:
            return ptr
    return stack_base(layout, regs.sp)


def current_task(layout: GuestLayout, regs: Registers, read: ReadFn) -> int:
    """The identity of the task running on the stopped vCPU.

    The per-CPU current pointer when the layout has one (a task keeps it across
    CPUs); otherwise the task's stack base.
    """
    addr = current_task_address(layout, regs)
    return current_task_from(layout, regs, read(addr, 8) if addr is not None else None)


def task_info(layout: GuestLayout, task: int, read: ReadFn) -> TaskInfo:
    """The kernel's own name and pid for a task identity (best effort)."""
    if layout.task_comm_offset is None or task < 0x1000 or _is_stack_identity(layout, task):
        return TaskInfo(task=task, name=f"stack@{task:#x}")
    try:
        comm = read(task + layout.task_comm_offset, layout.task_comm_size)
        name = comm.split(b"\0", 1)[0].decode("ascii", "replace") or "?"
        pid = None
        if layout.task_pid_offset is not None:
            raw = read(task + layout.task_pid_offset, layout.task_pid_size)
            pid = int.from_bytes(raw, "little", signed=True)
    except Exception:  # noqa: BLE001 - a name is decoration, never a reason to fail a hit
        return TaskInfo(task=task, name=f"task@{task:#x}")
    return TaskInfo(task=task, pid=pid, name=name)


def _is_stack_identity(layout: GuestLayout, task: int) -> bool:
    return layout.current_gs_offset is None and task % layout.thread_size == 0


def canary_address(guard: GuardSource, regs: Registers) -> int:
    """Where the value a correct canary slot holds lives, for the stopped vCPU."""
    if guard.kind == "gs":
        return regs.get("gs_base") + guard.offset
    return guard.addr


def guest_time(layout: GuestLayout, read: ReadFn) -> int | None:
    """The guest's own tick counter, when it has one (jiffies, ticks)."""
    if layout.ticks_addr is None:
        return None
    try:
        return int.from_bytes(read(layout.ticks_addr, 8), "little")
    except Exception:  # noqa: BLE001 - time is decoration
        return None
