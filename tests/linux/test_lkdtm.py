"""Debian's own 6.1 kernel under TCG: LKDTM's stack corruption caught, a hot path clean.

Runs with ``make test-linux`` (which builds images/linux.toml first). Each test
boots the real kernel, lets its initramfs load lkdtm.ko and run one command
from the kernel command line, and watches in canary mode at the ``fo`` that
`kswgdb disasm` suggests (the symbol layer's own listing, not a typed number).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kswgdb.image import IMAGES_DIR
from kswgdb.image import load as load_image
from kswgdb.run.oneshot import WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program
from kswgdb.watch.modules import find_module_function

LINUX_TOML = IMAGES_DIR / "linux.toml"
PROVOKE = "/sys/kernel/debug/provoke-crash/DIRECT"


@pytest.fixture(scope="module")
def image():
    assert LINUX_TOML.is_file()
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        pytest.fail("the Debian image is not built: run `make image-linux` (make test-linux does)")
    return load_image(LINUX_TOML)


def _suggested(program: Program, func: str) -> str:
    listing = build_listing(program, func)
    assert listing.suggested_config, f"no watch suggested for {func}"
    return listing.suggested_config


def _memset_line(module_program: Program) -> tuple[str, int]:
    """Where bugs.c calls memset in __lkdtm_CORRUPT_STACK (read from the source, not typed)."""
    func = module_program.function("__lkdtm_CORRUPT_STACK")
    first = module_program.source_line(func.addr)
    assert first is not None
    lines = Path(first.file).read_text().splitlines()
    for n in range(first.line, first.line + 5):
        if "memset(stack" in lines[n - 1]:
            return first.file, n
    raise AssertionError("memset not found in __lkdtm_CORRUPT_STACK's source")


def _run(image, watch: str, command: str, timeout: float, tmp_path: Path, kernel_args: str = ""):
    session = WatchSession(RunOptions(
        image=image.path, watches=[watch], accel="tcg", timeout=timeout,
        cmdline=f"{kernel_args} -- {command}".strip(), log_path=tmp_path / "events.jsonl"))
    t0 = time.monotonic()
    report = session.run()
    return report, time.monotonic() - t0


@pytest.mark.parametrize("func", ["lkdtm_CORRUPT_STACK", "lkdtm_CORRUPT_STACK_STRONG"])
def test_lkdtm_corrupt_stack_caught_at_the_memset(image, func: str, tmp_path: Path) -> None:
    found = find_module_function(image.modules_dir, func)
    assert found is not None and found[0] == "lkdtm"
    module_program = found[1]
    watch = _suggested(module_program, func)
    crash = func.removeprefix("lkdtm_")
    report, seconds = _run(image, watch, f"echo {crash} > {PROVOKE}", 120.0, tmp_path)
    print(f"\n{func}: {watch}: {seconds:.1f} s, summary {report.summary}")

    assert len(report.hits) == 1, [h.writer.symbol for h in report.hits]
    _assert_kaslr_found(report, tmp_path)
    hit = report.hits[0]
    assert hit.watched_func == func and hit.what.startswith("canary")
    # The writing instruction: the memset, inlined as `rep stosb`, in LKDTM's helper.
    assert hit.writer.function == "__lkdtm_CORRUPT_STACK"
    assert hit.writer.disasm.startswith("rep stos"), hit.writer.disasm
    assert "[lkdtm]" in hit.writer.symbol
    src_file, src_line = _memset_line(module_program)
    assert hit.writer.source is not None
    assert (hit.writer.source.file, hit.writer.source.line) == (src_file, src_line)
    assert hit.owner.task == hit.writer_task.task
    assert hit.writer_task.name == "sh" and hit.writer_task.pid is not None
    # 0xff over the canary; one catch for the instruction, its other bytes counted.
    assert hit.new.startswith("ff")     # guest byte order: the lowest byte first
    row = report.summary[0]
    assert (row["calls"], row["armed"], row["hits"]) == (1, 1, 1)
    assert row["rep_repeats"] == hit.length - 1
    # The guest ran on after the catch into the kernel's own verdict, which comes
    # only when the function returns: the catch came first.
    console = "\n".join(report.console_log)
    assert re.search(rf"stack-protector: Kernel stack is corrupted in: {func}\b", console), \
        console[-2000:]
    # ... and the run says so: the guest kernel panicked, which is how LKDTM ends, not
    # a fault (exit status 1 from the hit, not 3).
    ended = report.guest_exit
    assert ended is not None and ended.kind == "panic", ended
    assert ended.panic is not None and re.match(
        rf"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: {func}\b",
        ended.panic), ended.panic
    assert report.fault is None
    _assert_syscall_backtrace(hit, func, report)


def _function_of(symbol: str) -> str:
    """``lkdtm_CORRUPT_STACK+0x2d/0x4b [lkdtm]`` -> ``lkdtm_CORRUPT_STACK``."""
    return symbol.split(" ")[0].split("+")[0]


def _assert_syscall_backtrace(hit, func: str, report) -> None:
    """gdb (with lkdtm.ko's symbols at its guest addresses) unwinds the whole write(2)."""
    assert report.backtrace == "gdb" and not report.backtrace_failures, report.backtrace_failures
    names = [_function_of(f.symbol) for f in hit.backtrace]
    print(f"backtrace: {' <- '.join(names)}  (gdb {report.backtrace_seconds[0]:.1f} s)")
    assert names[:2] == ["__lkdtm_CORRUPT_STACK", func], names
    assert all("[lkdtm]" in f.symbol for f in hit.backtrace[:3]), hit.backtrace[:3]
    assert names[2].startswith(("direct_entry", "lkdtm_do_action")), names
    assert hit.backtrace[1].source is not None and hit.backtrace[1].source.file.endswith(
        "lkdtm/bugs.c")
    for expected in ("full_proxy_write", "vfs_write", "ksys_write", "do_syscall_64"):
        assert expected in names, names
    assert names.index("vfs_write") < names.index("ksys_write") < names.index("do_syscall_64")
    assert names[-1] == "entry_SYSCALL_64", names        # and nothing past the kernel entry
    # An untyped asm symbol (a "code" label, sized by SYM_CODE_END), offset known.
    assert re.match(r"entry_SYSCALL_64\+0x[0-9a-f]+(/0x[0-9a-f]+)?$",
                    hit.backtrace[-1].symbol), hit.backtrace[-1]


def _assert_kaslr_found(report, tmp_path: Path) -> None:
    """The image boots with KASLR: the slide was found at the entry, 2 MiB aligned, logged."""
    assert report.slide is not None and report.slide.found_by == "first kernel-map write"
    assert report.slide.virtual % 0x20_0000 == 0 and report.slide.physical is not None
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    kaslr = next(e for e in events if e["event"] == "kaslr")
    assert events[0]["event"] == "start" and kaslr["kaslr_slide"] == report.slide.virtual


def test_hot_path_canary_watch_has_no_false_positive(image, tmp_path: Path) -> None:
    """cp_new_stat (every stat syscall; a 144-byte struct stat on the stack, so a canary),
    under KASLR: the slide kswgdb found is the one the kernel itself reports (kallsyms)."""
    kernel = Program.load(image.symbols)
    watch = _suggested(kernel, "cp_new_stat")
    workload = ("grep -w _text /proc/kallsyms; "
                "for i in 1 2 3 4; do ls -l /bin /sys/kernel/debug > /dev/null; done")
    report, seconds = _run(image, watch, workload, 240.0, tmp_path)
    _assert_kaslr_found(report, tmp_path)
    text = re.search(r"^([0-9a-f]{16}) T _text$", "\n".join(report.console_log), re.MULTILINE)
    assert text is not None, report.console_log[-20:]
    assert int(text.group(1), 16) == kernel.linker_symbol("_text") + report.slide.virtual
    row = report.summary[0]
    print(f"\ncp_new_stat: {watch}: {seconds:.1f} s: calls {row['calls']} armed {row['armed']} "
          f"returns {row['returns']} hits {row['hits']} not armed {row['not_armed']}")
    assert report.guest_exit is not None and report.guest_exit.kind == "shutdown"
    assert report.fault is None        # init powering off is how a Linux run ends
    assert "KSWGDB-INIT done status=0" in "\n".join(report.console_log)
    assert row["armed"] >= 300
    assert row["hits"] == 0 and report.hits == []
    assert row["not_armed"] == 0
    assert row["returns"] + row["stale"] == row["armed"]
    # released by its canary check's read under KASLR (kswgdb.watch.checkrelease)
    assert row["check_releases"] == row["returns"], row


def test_nokaslr_kernel_is_found_at_slide_zero(image, tmp_path: Path) -> None:
    """The same watch with ``nokaslr`` on the kernel command line: slide 0, armed as before."""
    watch = _suggested(Program.load(image.symbols), "cp_new_stat")
    report, _ = _run(image, watch, "ls -l /bin > /dev/null", 120.0, tmp_path, "nokaslr")
    assert report.slide is not None and report.slide.virtual == 0
    assert report.slide.physical == 0 and report.fault is None
    assert report.summary[0]["armed"] > 0 and report.unarmed == []


def test_boot_with_accel_auto_picks_tcg_and_says_why(image) -> None:
    """`kswgdb boot` on the Debian image: auto -> TCG here (software KVM), to init and off."""
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "boot", str(image.path), "--accel", "auto",
         "--timeout", "60", "--cmdline", "-- cat /proc/modules"],
        capture_output=True, text=True, timeout=120, cwd=IMAGES_DIR.parent)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"accelerator: tcg \(.+\)", proc.stderr), proc.stderr
    assert "KSWGDB-INIT ready kernel=6.1." in proc.stdout
    assert re.search(r"^lkdtm \d+ 0 - Live 0x[0-9a-f]+", proc.stdout, re.MULTILINE)
    assert "guest ended: shutdown" in proc.stdout


def test_cli_lkdtm_hit_panel_exit_status_and_panic_line(image, tmp_path: Path) -> None:
    """The README's example as a user runs it: the panel, the panic line, exit status 1."""
    proc = subprocess.run(
        [sys.executable, "-m", "kswgdb", "run", str(image.path),
         "--watch", "fn=lkdtm_CORRUPT_STACK fo=0x1e", "--accel", "tcg",
         "--cmdline", f"-- echo CORRUPT_STACK > {PROVOKE}", "--log", str(tmp_path / "e.jsonl")],
        capture_output=True, text=True, timeout=240, cwd=IMAGES_DIR.parent,
        env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 1, proc.stderr[-2000:]          # a hit; the panic is no fault
    assert "kswgdb: error" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert re.search(r"the guest kernel panicked: Kernel panic - not syncing: stack-protector: "
                     r"Kernel stack is corrupted in: lkdtm_CORRUPT_STACK", out), out[-3000:]
    assert "guest ended: panic status=0 reason=guest-reset" in out
    # Module code as loaded: the relocated calls name their targets.
    assert re.search(r"0x[0-9a-f]+  call __fentry__", out), out
    assert re.search(r"0x[0-9a-f]+  jmp __x86_return_thunk", out), out
    assert re.search(r"=> 0x[0-9a-f]+  rep stosb", out), out
    assert "entry_SYSCALL_64" in out and "vfs_write+" in out
    events = (tmp_path / "e.jsonl").read_text().splitlines()
    end = json.loads(events[-1])
    assert end["event"] == "end" and end["guest_exit"] == "panic" and not end["fault"]
    assert end["panic"].startswith("Kernel panic - not syncing: stack-protector")


def test_a_long_guest_command_runs_to_completion(image, tmp_path: Path) -> None:
    """A 60-word command (the kernel panics past 32 words it hands to init) runs whole.

    The words after ``--`` travel in the initramfs (kswgdb.qemu.guestcmd), so the
    last word runs, with a watch armed on a hot path meanwhile.
    """
    kernel = Program.load(image.symbols)
    watch = _suggested(kernel, "cp_new_stat")
    steps = " ".join(f"s{i}" for i in range(1, 41))
    command = f"for w in {steps}; do echo step-$w > /dev/null; done; ls -l /bin > /dev/null; " \
              "echo KSWGDB-LONG last-word-ran"
    assert len(command.split()) >= 40
    report, _ = _run(image, watch, command, 240.0, tmp_path)
    console = "\n".join(report.console_log)
    assert report.fault is None, (report.fault, report.console_log[-5:])
    assert "KSWGDB-LONG last-word-ran" in console and "KSWGDB-INIT done status=0" in console
    assert "Too many boot" not in console
    assert report.summary[0]["armed"] > 0
