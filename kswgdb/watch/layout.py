"""Build the engine's `GuestLayout` from the kernel's own debug info.

Offsets are never typed by hand: they come from the DWARF of the image being
debugged, so a rebuilt test kernel or another Linux version keeps working. Each
flavour names the kernel concepts it needs; what a kernel lacks is left out and
the engine falls back (a task identified by its stack instead of by `current`).
"""

from __future__ import annotations

from kswgdb.errors import KswError
from kswgdb.symbols.program import Program
from kswgdb.watch.guest import DEFAULT_THREAD_SIZE, GuestLayout
from kswgdb.watch.spec import GuardSource

#: Linux x86-64: the per-CPU stack canary lives at %gs:0x28 (fixed_percpu_data).
LINUX_CANARY_GS_OFFSET = 0x28


def _try(fn, *args):
    try:
        return fn(*args)
    except (KswError, KeyError, LookupError, ValueError):
        return None


def layout_for(program: Program, flavour: str) -> GuestLayout:
    """The layout of ``flavour`` ("kswtest", "linux" or anything else: generic)."""
    if flavour == "kswtest":
        return _kswtest(program)
    if flavour == "linux":
        return _linux(program)
    return GuestLayout(flavour="generic")


def _kswtest(p: Program) -> GuestLayout:
    guard = _try(p.global_address, "__stack_chk_guard")
    return GuestLayout(
        flavour="kswtest",
        current_gs_offset=_try(p.member_offset, "percpu", "current"),
        task_stack_offset=_try(p.member_offset, "task", "stack"),
        task_pid_offset=_try(p.member_offset, "task", "pid"),
        task_comm_offset=_try(p.member_offset, "task", "comm"),
        guard=GuardSource("global", addr=guard) if guard is not None else None,
        exit_function="task_exit",
        ticks_addr=_try(p.global_address, "jiffies"),
        irq_functions=("timer_interrupt", "interrupt_dispatch"),
        entry_code=("isr_table", "isr_common"),
    )


def _canary_gs_offset(p: Program) -> int:
    """%gs offset of the per-CPU canary: fixed_percpu_data.stack_canary (0x28, verified
    on Debian's 6.1; the constant is the ABI gcc's -mstack-protector-guard=tls assumes)."""
    found = _try(p.member_offset, "struct fixed_percpu_data", "stack_canary")
    return found if found is not None else LINUX_CANARY_GS_OFFSET


def _linux_thread_size(p: Program) -> int:
    """THREAD_SIZE as the kernel was built: the linker script puts the init task's stack
    between ``__start_init_task`` and ``__end_init_task`` (include/asm-generic/vmlinux.lds.h,
    ``INIT_TASK_DATA``); 16 KiB on x86-64 without KASAN. Any other answer (symbols
    missing, not a power of two) falls back to 16 KiB."""
    start = _try(p.linker_symbol, "__start_init_task")
    end = _try(p.linker_symbol, "__end_init_task")
    if start is not None and end is not None:
        size = end - start
        if size >= 4096 and size & (size - 1) == 0:
            return size
    return DEFAULT_THREAD_SIZE


def _linux(p: Program) -> GuestLayout:
    # v6.2+ keeps current in pcpu_hot; older kernels (Debian's 6.1 included, checked)
    # in the per-CPU current_task.
    # Either way the symbol's value is an offset from the per-CPU (GS) base.
    current = _try(p.global_address, "current_task")
    if current is None:
        hot = _try(p.global_address, "pcpu_hot")
        member = _try(p.member_offset, "pcpu_hot", "current_task")
        if hot is not None and member is not None:
            current = hot + member
    return GuestLayout(
        flavour="linux",
        thread_size=_linux_thread_size(p),
        current_gs_offset=current,
        task_stack_offset=_try(p.member_offset, "task_struct", "stack"),
        task_pid_offset=_try(p.member_offset, "task_struct", "pid"),
        task_comm_offset=_try(p.member_offset, "task_struct", "comm"),
        guard=GuardSource("gs", offset=_canary_gs_offset(p)),
        exit_function="do_exit",
        ticks_addr=_try(p.global_address, "jiffies_64") or _try(p.global_address, "jiffies"),
        irq_functions=("common_interrupt", "sysvec_apic_timer_interrupt",
                       "__sysvec_apic_timer_interrupt", "handle_irq_event"),
        # arch/x86/entry/entry_64.S and idtentry.h: the IDT stubs and what they call
        # before the C handler (error_entry, paranoid_entry: local, untyped symbols).
        entry_code=("asm_exc_", "asm_sysvec_", "asm_common_interrupt", "asm_spurious_interrupt",
                    "irq_entries_start", "spurious_entries_start", "error_entry",
                    "paranoid_entry", "xen_error_entry"),
    )


def exit_hook_address(program: Program, layout: GuestLayout) -> int | None:
    """Where the layout's task-exit function starts in ``program`` (None: no hook)."""
    if not layout.exit_function:
        return None
    try:
        return program.function(layout.exit_function).addr
    except KswError:
        return None
