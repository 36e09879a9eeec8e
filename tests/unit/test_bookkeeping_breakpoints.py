"""Bookkeeping breakpoints are in only while they can matter.

The task-exit hook (dropping the frames of a task that dies inside a watched
call) and the module-load hook (arming a watch whose module is not loaded yet)
each cost a Linux guest a whole translation-cache flush per stop. A watch whose
function is never called must therefore cost no stop at all: the fake target
only stops at an address that holds a breakpoint, so every test below fails if
the engine leaves a hook in when it should not, or takes it out too early.
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

from kswgdb.symbols.module import load_module
from kswgdb.watch.modules import ModuleArmer, ModuleWatch
from tests.unit.fake_target import Event, FakeTarget, Program
from tests.unit.test_engine import PROBE, RET_SITE, WRITER_PC, canary_spec, make

EXIT_HOOK = 0x40_9000
LOAD_HOOK_ADDR = 0x40_8000


class StopCounter(FakeTarget):
    """A fake that remembers at which addresses the guest stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.stops: list[int] = []

    def play(self, ev):
        stop = super().play(ev)
        if stop is not None and stop.kind != "exit":
            self.stops.append(stop.pc)
        return stop


def _task_exit(fake: FakeTarget, task: int, cpu: int = 0) -> None:
    """A task reaching the kernel's exit function (do_exit / task_exit)."""
    fake.script.append(
        Event("probe", cpu=cpu, task=task, regs={"rsp": 0x7000_3e00, "rbp": 0}, pc=EXIT_HOOK))


def test_never_called_watch_stops_nowhere_while_tasks_exit():
    fake = StopCounter()
    for task in range(0xA000, 0xA000 + 50 * 0x100, 0x100):
        _task_exit(fake, task)
    engine = make([canary_spec()], fake, exit_hook=EXIT_HOOK)
    assert fake.breakpoints == {PROBE}
    result = engine.run()
    assert result.reason == "exit" and fake.stops == [] and fake.resumes == 1
    assert engine.unexpected_stops == 0


def test_exit_hook_is_in_exactly_while_a_frame_is_live():
    fake = StopCounter()
    prog = Program(fake, PROBE, RET_SITE)
    _task_exit(fake, 0xC000)                         # before any call: no stop
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    _task_exit(fake, 0xB000, cpu=1)                  # another task dies meanwhile: a stop
    prog.ret(task=0xA000, frame=f)
    _task_exit(fake, 0xA000)                         # after the return: no stop
    engine = make([canary_spec()], fake, exit_hook=EXIT_HOOK)
    engine.run()
    assert fake.stops == [PROBE, EXIT_HOOK, RET_SITE]
    stats = engine.stats[0]
    assert (stats.armed, stats.returns, stats.stale) == (1, 1, 0)   # 0xB000 owned nothing
    assert fake.breakpoints == {PROBE} and fake.watchpoints == set()


def test_task_dying_inside_the_call_is_still_dropped_and_its_reused_stack_not_a_hit():
    fake = StopCounter()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    _task_exit(fake, 0xA000)
    prog.store(task=0xD000, addr=f["canary"], value=b"\x01" * 8, pc=WRITER_PC, sp=0x8000_3f00)
    _task_exit(fake, 0xD000)
    engine = make([canary_spec()], fake, exit_hook=EXIT_HOOK)
    assert engine.run().hits == []
    assert fake.stops == [PROBE, EXIT_HOOK]
    assert engine.stats[0].stale == 1
    assert fake.breakpoints == {PROBE} and fake.watchpoints == set()


def test_unarmed_frames_keep_the_hook_too():
    """A frame skipped for its depth still counts for depth: a dead task's must go."""
    fake = StopCounter()
    prog = Program(fake, PROBE, RET_SITE)
    prog.call(task=0xA000, sp=0x8000_3f00)
    _task_exit(fake, 0xA000)
    engine = make([canary_spec(depth=1)], fake, exit_hook=EXIT_HOOK)
    engine.run()
    assert fake.stops == [PROBE, EXIT_HOOK]
    assert engine.stats[0].skipped_depth == 1 and engine.stats[0].stale == 1
    assert fake.breakpoints == {PROBE}


def test_exit_hook_on_the_probe_itself_keeps_the_probe():
    """Watching the exit function: its probe breakpoint outlives the hook's need.

    (A task reaching the exit function is dying: the frame the probe just
    pushed is dropped at the same stop, so no return is waited for.)
    """
    fake = StopCounter()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.ret(task=0xA000, frame=f)
    prog.call(task=0xB000, sp=0x8000_3f00)
    engine = make([canary_spec()], fake, exit_hook=PROBE)
    engine.run()
    assert fake.stops == [PROBE, PROBE]
    assert engine.stats[0].calls == 2 and fake.breakpoints == {PROBE}


def test_removing_the_last_watch_takes_the_hook_out():
    fake = StopCounter()
    prog = Program(fake, PROBE, RET_SITE)
    prog.call(task=0xA000, sp=0x8000_3f00)
    engine = make([canary_spec()], fake, exit_hook=EXIT_HOOK)
    engine.handle(fake.wait_stop(None))
    assert fake.breakpoints == {PROBE, RET_SITE, EXIT_HOOK}
    engine.remove_spec(0)
    assert fake.breakpoints == set() and fake.watchpoints == set()


# ------------------------------------------------------------ module hook
MOD_HEAD, MOD_LIST, MOD_NAME, MOD_KALLSYMS = 0x1000, 8, 24, 100
MODULE_AT = 0x1_0000
HOT_GUEST = 0xffff_ffff_c020_0000


class FakeKernel:
    """What `ModuleArmer` asks of the kernel's Program: the hook and module offsets."""

    def function(self, _name: str):
        return SimpleNamespace(addr=LOAD_HOOK_ADDR)

    def global_address(self, _name: str) -> int:
        return MOD_HEAD

    def member_offset(self, struct_name: str, member: str) -> int:
        if struct_name == "struct module":
            return {"list": MOD_LIST, "name": MOD_NAME, "kallsyms": MOD_KALLSYMS}[member]
        return {"symtab": 0, "num_symtab": 8, "strtab": 16}[member]


def _place_module_in_memory(fake: FakeTarget, name: str, func: str, at: int) -> None:
    """A ``struct module`` with its kallsyms at MODULE_AT, not yet on the list."""
    mod = MODULE_AT
    fake.write(mod + MOD_LIST, struct.pack("<Q", MOD_HEAD))
    fake.write(mod + MOD_NAME, name.encode() + b"\0")
    ks, symtab, strtab = mod + 0x400, mod + 0x500, mod + 0x900
    fake.write(mod + MOD_KALLSYMS, struct.pack("<Q", ks))
    strings = b"\0" + func.encode() + b"\0"
    entries = struct.pack("<IBBHQQ", 0, 0, 0, 0, 0, 0) + struct.pack(
        "<IBBHQQ", 1, 0x02, 0, 1, at, 16)
    fake.write(symtab, entries)
    fake.write(strtab, strings)
    fake.write(ks, struct.pack("<QQQ", symtab, 2, strtab))


def _module_program(tmp_path: Path):
    src = tmp_path / "mymod.c"
    src.write_text("int hot(int x)\n{\n\treturn x * 3;\n}\n")
    obj = tmp_path / "mymod.ko"
    subprocess.run(["gcc", "-O2", "-g", "-c", "-o", str(obj), str(src)], check=True)
    return load_module(obj)


def _module_watch(tmp_path: Path) -> ModuleWatch:
    """A canary watch on ``hot`` of a module "mymod" built here (placeholder addresses)."""
    program = _module_program(tmp_path)
    hot = program.function("hot").addr
    spec = dataclasses.replace(canary_spec(), func_addr=hot, probe_addr=hot + 0x10)
    return ModuleWatch("mymod", program, SimpleNamespace(to_arm_spec=lambda: spec))


def test_module_hook_is_in_until_the_module_watch_is_armed(tmp_path: Path):
    watch = _module_watch(tmp_path)
    fake = StopCounter()
    fake.write(MOD_HEAD, struct.pack("<Q", MOD_HEAD))          # empty module list
    _place_module_in_memory(fake, "mymod", "hot", HOT_GUEST)
    link = Event("write", addr=MOD_HEAD, data=struct.pack("<Q", MODULE_AT + MOD_LIST))
    load = Event("probe", task=0xA000, regs={"rsp": 0x8000_3e00, "rbp": 0}, pc=LOAD_HOOK_ADDR)
    fake.script += [link, load, load]           # the second load (another module): no stop
    engine = make([], fake)
    statuses: list[str] = []
    armer = ModuleArmer(FakeKernel(), [watch], SimpleNamespace(modules=[]), statuses.append)
    armer.install(engine)
    assert LOAD_HOOK_ADDR in fake.breakpoints and armer.pending() == [watch]
    engine.run()
    assert fake.stops == [LOAD_HOOK_ADDR]
    assert armer.pending() == [] and watch.armed_index == 0
    assert fake.breakpoints == {HOT_GUEST + 0x10}
    assert statuses and "watch armed" in statuses[0]


def test_module_already_loaded_needs_no_hook(tmp_path: Path):
    watch = _module_watch(tmp_path)
    fake = StopCounter()
    fake.write(MOD_HEAD, struct.pack("<Q", MODULE_AT + MOD_LIST))
    _place_module_in_memory(fake, "mymod", "hot", HOT_GUEST)
    engine = make([], fake)
    ModuleArmer(FakeKernel(), [watch], SimpleNamespace(modules=[])).install(engine)
    assert fake.breakpoints == {HOT_GUEST + 0x10}
