"""The freeze vmcore of Debian's kernel is a Linux vmcore: drgn opens it, KASLR on.

One boot: LKDTM's CORRUPT_STACK caught with ``--on-hit freeze`` through the CLI, as a
user runs it. The dump must carry the kernel's VMCOREINFO (QEMU's vmcoreinfo device,
filled by the guest's qemu_fw_cfg driver), so that drgn finds the kernel's slide
and page tables: ``jiffies`` read from the dump equals the value kswgdb read through
the stub at the freeze, the writer task kswgdb named is there with its ``comm``, and
its stack trace runs through LKDTM's writer and victim. The panel's "inspect"
command is then run as printed (with ``-e`` added so that it does not wait for input).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import drgn
import pytest

from kswgdb.image import IMAGES_DIR
from kswgdb.image import load as load_image
from kswgdb.run.vmcore import has_vmcoreinfo_note

LINUX_TOML = IMAGES_DIR / "linux.toml"
PROVOKE = "/sys/kernel/debug/provoke-crash/DIRECT"


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One frozen LKDTM run: its stdout, its hit event and its vmcore."""
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        pytest.fail("the Debian image is not built: run `make image-linux` (make test-linux does)")
    tmp = tmp_path_factory.mktemp("vmcore")
    log = tmp / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", str(LINUX_TOML),
         "--watch", "fn=lkdtm_CORRUPT_STACK fo=0x1e", "--accel", "tcg", "--on-hit", "freeze",
         "--cmdline", f"-- echo CORRUPT_STACK > {PROVOKE}", "--log", str(log)],
        capture_output=True, text=True, timeout=240, cwd=IMAGES_DIR.parent,
        env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    hits = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "hit"]
    assert len(hits) == 1, proc.stdout[-2000:]
    m = re.search(r"^guest frozen at the hit \(guest ticks (\d+)\); vmcore: (\S+)$",
                  proc.stdout, re.MULTILINE)
    assert m is not None, proc.stdout[-2000:]
    inspect = re.search(r"^  inspect: (.+)$", proc.stdout, re.MULTILINE)
    assert inspect is not None, proc.stdout[-2000:]
    vmcore = Path(m.group(2))
    assert vmcore.parent == tmp and vmcore.stat().st_mode & 0o777 == 0o600
    return {"ticks": int(m.group(1)), "vmcore": vmcore, "hit": hits[0],
            "inspect": inspect.group(1)}


def test_drgn_reads_jiffies_task_and_stack_of_the_freeze(frozen: dict) -> None:
    image = load_image(LINUX_TOML)
    vmcore, hit = frozen["vmcore"], frozen["hit"]
    assert has_vmcoreinfo_note(vmcore)
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    assert image.modules_dir is not None
    prog.load_debug_info([str(image.symbols), str(image.modules_dir / "lkdtm.ko")])
    # The guest's clock at the freeze, read through the stub, is the dump's.
    assert prog["jiffies"].value_() == frozen["ticks"] == hit["guest_time"]
    # The writer task kswgdb named (KASLR: its address is a guest address).
    task = drgn.Object(prog, "struct task_struct *", int(hit["writer_task"]["task"], 16))
    assert task.comm.string_().decode() == hit["writer_task"]["name"] == "sh"
    assert task.pid.value_() == hit["writer_task"]["pid"]
    names = [frame.name for frame in prog.stack_trace(task)]
    print(f"\ndrgn stack of {hit['writer_task']['name']}: {names[:10]}")
    assert names[:2] == ["__lkdtm_CORRUPT_STACK", "lkdtm_CORRUPT_STACK"], names
    assert "vfs_write" in names and "do_syscall_64" in names, names


def test_the_panels_inspect_command_opens_the_dump(frozen: dict) -> None:
    argv = shlex.split(frozen["inspect"])
    assert argv[:3] == ["drgn", "-c", str(frozen["vmcore"])], argv
    drgn_cli = Path(sys.executable).with_name("drgn")
    code = ("from drgn.helpers.linux.pid import find_task; "
            f"t = find_task(prog, {frozen['hit']['writer_task']['pid']}); "
            "print('KSWGDB', prog['jiffies'].value_(), t.comm.string_().decode(), "
            "prog.stack_trace(t)[0].name)")
    proc = subprocess.run([str(drgn_cli), *argv[1:], "-e", code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"KSWGDB {frozen['ticks']} sh __lkdtm_CORRUPT_STACK" in proc.stdout, \
        (proc.stdout[-1000:], proc.stderr[-1000:])


def test_crash_reads_the_dump_and_walks_the_writers_stack(frozen: dict, tmp_path: Path) -> None:
    """crash opens the same dump: ``jiffies`` agrees, and ``bt -I RIP -S RSP`` (the
    vCPU's registers at the freeze, which crash itself shows in ``help -r``) walks
    the writer's stack. A plain ``bt`` of a task running at the freeze fails before
    crash 9.0 (README, "Freezing it": Debian's cloud kernel has no CONFIG_X86_MCE, so
    its #MC IST stack is one crash cannot size), and works from 9.0 on."""
    crash = shutil.which("crash")
    assert crash is not None, "crash is not installed (make setup installs it)"
    version = subprocess.run([crash, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.split()[1]
    regs, pid = frozen["hit"]["registers"], frozen["hit"]["writer_task"]["pid"]
    commands = tmp_path / "crash.in"
    commands.write_text(f"p jiffies\n!echo KSWGDB-PLAIN\nbt {pid}\n!echo KSWGDB-GIVEN\n"
                        f"bt -I {regs['rip']} -S {regs['rsp']} {pid}\nquit\n")
    image = load_image(LINUX_TOML)
    proc = subprocess.run([crash, "-s", str(image.symbols), str(frozen["vmcore"]),
                           "-i", str(commands)], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert re.search(rf"^jiffies = \$1 = {frozen['ticks']}$", out, re.MULTILINE), out[-3000:]
    plain = out[out.index("KSWGDB-PLAIN"):out.index("KSWGDB-GIVEN")]
    given = re.findall(r"^ #\d+ \[\w+\] (\S+) at", out[out.index("KSWGDB-GIVEN"):],
                       re.MULTILINE)
    print(f"\ncrash {version} bt -I -S of {pid}: {given}")
    assert given[:4] == ["lkdtm_CORRUPT_STACK", "direct_entry.cold", "full_proxy_write",
                         "vfs_write"], out[-3000:]
    if int(version.split(".")[0]) < 9:
        assert "read of stack at fffffe" in plain, plain
    else:
        assert " lkdtm_CORRUPT_STACK at " in plain, plain
