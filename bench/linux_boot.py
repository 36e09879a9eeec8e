"""Debian kernel under TCG: boot time, and time from `kswgdb run` to the first armed call.

* boot: QEMU spawned -> the initramfs's ``KSWGDB-INIT ready`` line (kernel boot,
  initramfs unpacked, lkdtm.ko loaded), no debugger attached.
* first armed call: a `WatchSession` started (symbols, QEMU, gdbstub, breakpoints)
  -> the first call of cp_new_stat armed in canary mode (the guest's first stat
  syscall, from ``ls -l``); measured by wrapping the engine's probe handler.
* lkdtm armed: the same for a watch on lkdtm_CORRUPT_STACK, a module function:
  module found on the kernel's list at load, watch armed, function triggered.
* KASLR: the image boots with KASLR and kswgdb searches the slide
  (`kswgdb.watch.kaslr`: one watchpoint over the kernel map from reset).
  The first-armed time is also measured with ``nokaslr`` (the search still runs,
  finds 0) and with ``nokaslr`` and no search at all (the path before KASLR
  support): the cost of KASLR is the first row minus the last. "KASLR slide
  search" is resume at reset -> the kernel's first write there, as the session timed it.

Runs are interleaved (boot, run, run, boot, ...) so a noisy neighbour hurts all
alike; medians printed.

Usage: python bench/linux_boot.py [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.table import print_medians  # noqa: E402
from kswgdb.image import IMAGES_DIR  # noqa: E402
from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.run import rig as session_mod  # noqa: E402 - where place_kernel is called
from kswgdb.run.oneshot import WatchSession  # noqa: E402
from kswgdb.run.options import RunOptions  # noqa: E402
from kswgdb.symbols.slide import KernelSlide  # noqa: E402
from kswgdb.watch.engine import Engine  # noqa: E402
from kswgdb.watch.kaslr import KernelPlacement, place_kernel  # noqa: E402

READY = r"KSWGDB-INIT ready"
PROVOKE = "echo CORRUPT_STACK > /sys/kernel/debug/provoke-crash/DIRECT"


def boot_once(image) -> float:
    t0 = time.monotonic()
    with Machine(image, accel="tcg", paused=False) as m:
        m.wait_for(READY, 60)
        return time.monotonic() - t0


def _no_search(target, program, guest, accel, deadline, should_stop=None):
    """The run as it was before KASLR support: the file's addresses, no search."""
    return KernelPlacement(KernelSlide(0, None, "no KASLR"), program)


def first_armed(image, watch: str, command: str, kernel_args: str = "",
                search: list[float] | None = None,
                without_search: bool = False) -> tuple[float, float]:
    """(seconds to the first armed call, seconds for the whole run); the KASLR search's
    seconds appended to ``search``."""
    first: list[float] = []
    original = Engine._probe_one

    def probe_one(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if not first and any(s.armed for s in self.stats):
            first.append(time.monotonic())
        return out

    Engine._probe_one = probe_one
    if without_search:
        session_mod.place_kernel = _no_search
    try:
        t0 = time.monotonic()
        session = WatchSession(RunOptions(image=image.path, watches=[watch], accel="tcg",
                                          timeout=120,
                                          cmdline=f"{kernel_args} -- {command}".strip()))
        report = session.run()
        total = time.monotonic() - t0
    finally:
        Engine._probe_one = original
        session_mod.place_kernel = place_kernel
    if not first:
        raise RuntimeError(f"{watch}: no call was armed ({report.summary})")
    if search is not None and session.placement is not None and session.placement.search:
        search.append(session.placement.search.seconds)
    return first[0] - t0, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kaslr-only", action="store_true",
                    help="only the first-armed rows (KASLR, nokaslr, no search)")
    args = ap.parse_args()
    image = load_image(IMAGES_DIR / "linux.toml")
    rows: dict[str, list[float]] = {"boot to init ready": [], "run to first armed cp_new_stat": [],
                                    "  same, nokaslr": [],
                                    "  same, nokaslr, no search (before)": [],
                                    "  KASLR slide search": [],
                                    "  whole run (ls -l /bin)": [],
                                    "run to lkdtm_CORRUPT_STACK armed": [],
                                    "  whole run (to the panic)": []}
    for _ in range(args.runs):
        if not args.kaslr_only:
            rows["boot to init ready"].append(boot_once(image))
        a, b = first_armed(image, "fn=cp_new_stat fo=0x3d", "ls -l /bin > /dev/null",
                           search=rows["  KASLR slide search"])
        rows["run to first armed cp_new_stat"].append(a)
        rows["  whole run (ls -l /bin)"].append(b)
        a, _ = first_armed(image, "fn=cp_new_stat fo=0x3d", "ls -l /bin > /dev/null", "nokaslr")
        rows["  same, nokaslr"].append(a)
        a, _ = first_armed(image, "fn=cp_new_stat fo=0x3d", "ls -l /bin > /dev/null", "nokaslr",
                           without_search=True)
        rows["  same, nokaslr, no search (before)"].append(a)
        if args.kaslr_only:
            continue
        a, b = first_armed(image, "fn=lkdtm_CORRUPT_STACK fo=0x1e", PROVOKE)
        rows["run to lkdtm_CORRUPT_STACK armed"].append(a)
        rows["  whole run (to the panic)"].append(b)
    print_medians("TCG, Debian 6.1 cloud kernel", f"{args.runs} runs", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
