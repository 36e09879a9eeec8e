"""Debian kernel under TCG: boot time, and time from `kswgdb run` to the first armed call.

* boot: QEMU spawned -> the initramfs's ``KSWGDB-INIT ready`` line (kernel boot,
  initramfs unpacked, lkdtm.ko loaded), no debugger attached.
* first armed call: a `WatchSession` started (symbols, QEMU, gdbstub, breakpoints)
  -> the first call of cp_new_stat armed in canary mode (the guest's first stat
  syscall, from ``ls -l``); measured by wrapping the engine's probe handler.
* lkdtm armed: the same for a watch on lkdtm_CORRUPT_STACK, a module function:
  module found on the kernel's list at load, watch armed, function triggered.
* KASLR: the image boots with KASLR; the first-armed time is also measured with
  ``nokaslr`` on the command line (the cost of finding the slide is the
  difference), and the slide search alone (resume at reset -> stopped at
  x86_64_start_kernel, with its ~480 breakpoints) as the session measured it.

Runs are interleaved (boot, run, run, boot, ...) so a noisy neighbour hurts all
alike; medians printed.

Usage: python bench/linux_boot.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.image import IMAGES_DIR  # noqa: E402
from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.watch.engine import Engine  # noqa: E402
from kswgdb.watch.session import RunOptions, WatchSession  # noqa: E402

READY = r"KSWGDB-INIT ready"
PROVOKE = "echo CORRUPT_STACK > /sys/kernel/debug/provoke-crash/DIRECT"


def boot_once(image) -> float:
    t0 = time.monotonic()
    with Machine(image, accel="tcg", paused=False) as m:
        m.wait_for(READY, 60)
        return time.monotonic() - t0


def first_armed(image, watch: str, command: str, kernel_args: str = "",
                search: list[float] | None = None) -> tuple[float, float]:
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
    try:
        t0 = time.monotonic()
        session = WatchSession(RunOptions(image=image.path, watches=[watch], accel="tcg",
                                          timeout=120,
                                          cmdline=f"{kernel_args} -- {command}".strip()))
        report = session.run()
        total = time.monotonic() - t0
    finally:
        Engine._probe_one = original
    if not first:
        raise RuntimeError(f"{watch}: no call was armed ({report.summary})")
    if search is not None and session.placement is not None and session.placement.search:
        search.append(session.placement.search.seconds)
    return first[0] - t0, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    image = load_image(IMAGES_DIR / "linux.toml")
    rows: dict[str, list[float]] = {"boot to init ready": [], "run to first armed cp_new_stat": [],
                                    "  same, nokaslr": [], "  KASLR slide search": [],
                                    "  whole run (ls -l /bin)": [],
                                    "run to lkdtm_CORRUPT_STACK armed": [],
                                    "  whole run (to the panic)": []}
    for _ in range(args.runs):
        rows["boot to init ready"].append(boot_once(image))
        a, b = first_armed(image, "fn=cp_new_stat fo=0x3d", "ls -l /bin > /dev/null",
                           search=rows["  KASLR slide search"])
        rows["run to first armed cp_new_stat"].append(a)
        rows["  whole run (ls -l /bin)"].append(b)
        a, _ = first_armed(image, "fn=cp_new_stat fo=0x3d", "ls -l /bin > /dev/null", "nokaslr")
        rows["  same, nokaslr"].append(a)
        a, b = first_armed(image, "fn=lkdtm_CORRUPT_STACK fo=0x1e", PROVOKE)
        rows["run to lkdtm_CORRUPT_STACK armed"].append(a)
        rows["  whole run (to the panic)"].append(b)
    print(f"{'TCG, Debian 6.1 cloud kernel':<36} {'median s':>9} {'min s':>7} {'max s':>7}"
          f"   ({args.runs} runs)")
    for label, values in rows.items():
        print(f"{label:<36} {statistics.median(values):9.2f} {min(values):7.2f} "
              f"{max(values):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
