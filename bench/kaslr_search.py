"""What finding the KASLR slide costs: from reset to the kernel stopped at its entry, 3 ways.

The Debian image under TCG, with ``nokaslr`` so every mode boots the same path:

* search: `kswgdb.watch.kaslr.find_slide` (one write watchpoint over the 1 GiB kernel
  map, inserted at reset, removed at the kernel's first write there, its code, the
  entry's bytes and phys_base read);
* breakpoints: a breakpoint on x86_64_start_kernel at every 2 MiB slot (~480), the
  first design, kept here to show why it was dropped (TCG compares every breakpoint
  at every block lookup, all through the decompression);
* one breakpoint: what a run needs when the slide is known in advance, a single
  breakpoint on x86_64_start_kernel.

Each ends when the removals have been sent (the next packet would be the engine's
probes). "search - one" is what KASLR support adds to the time to the first armed call
(the search stops a few instructions before the entry; a session with KASLR on pays the
same search).
Modes are interleaved, medians printed.

Usage: python bench/kaslr_search.py [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.table import print_medians  # noqa: E402
from kswgdb.gdbstub.client import RemoteClient  # noqa: E402
from kswgdb.image import IMAGES_DIR  # noqa: E402
from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402
from kswgdb.run.stub_target import StubTarget  # noqa: E402
from kswgdb.symbols.program import Program  # noqa: E402
from kswgdb.watch.kaslr import candidate_slides, entry_function, find_slide  # noqa: E402


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (QEMU): what the guest's work cost, which a
    loaded machine stretches far less than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def to_entry(image, program: Program, mode: str) -> tuple[float, float]:
    """Wall seconds from resuming the paused guest to being stopped at the entry with
    the traps removed, and QEMU's CPU seconds over the same span."""
    with Machine(image, accel="tcg", paused=True, extra_cmdline="nokaslr -- true") as machine:
        client = RemoteClient.connect(str(machine.gdb_socket), timeout=10.0)
        try:
            client.handshake()
            target = StubTarget(client, queue_watchpoints=True)
            assert machine.pid is not None
            c0 = _cpu_seconds(machine.pid)
            t0 = time.monotonic()
            _, entry = entry_function(program)
            if mode == "breakpoints":
                points = [entry + slide for slide in candidate_slides(program)]
                for addr in points:
                    target.set_breakpoint(addr)
                target.resume()
                stop = target.wait_stop(120)
                if stop is None or stop.pc != entry:
                    raise RuntimeError(f"breakpoints: {stop}")
                for addr in points:
                    target.clear_breakpoint(addr)
            elif mode == "search":
                found = find_slide(target, program, "tcg", deadline=t0 + 120)
                if found.slide is None or found.slide.virtual != 0:
                    raise RuntimeError(f"search: {found}")
            else:
                target.set_breakpoint(entry)
                target.resume()
                stop = target.wait_stop(120)
                if stop is None or stop.pc != entry:
                    raise RuntimeError(f"one breakpoint: {stop}")
                target.clear_breakpoint(entry)
            target.flush()
            return time.monotonic() - t0, _cpu_seconds(machine.pid) - c0
        finally:
            client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-breakpoints", action="store_true",
                    help="leave out the breakpoints-at-every-slot mode")
    args = ap.parse_args()
    image = load_image(IMAGES_DIR / "linux.toml")
    program = Program.load(image.symbols)
    rows: dict[str, list[float]] = {"search (kernel-map watch)": [],
                                    "breakpoints at every slot": [], "one breakpoint": []}
    cpu: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.reps):
        for label, mode in (("search (kernel-map watch)", "search"),
                            ("breakpoints at every slot", "breakpoints"),
                            ("one breakpoint", "one")):
            if mode == "breakpoints" and args.no_breakpoints:
                continue
            wall, used = to_entry(image, program, mode)
            rows[label].append(wall)
            cpu[label].append(used)
    base = rows["one breakpoint"]
    diffs = [a - b for a, b in zip(rows["search (kernel-map watch)"], base, strict=True)]
    bdiffs = [a - b for a, b in zip(rows["breakpoints at every slot"], base, strict=False)]
    rows["search - one, per triple"] = diffs
    rows["breakpoints - one, per triple"] = bdiffs
    print_medians("reset -> x86_64_start_kernel, TCG", f"{args.reps} interleaved, "
                  f"{len(candidate_slides(program))} slots", rows, width=34, digits=3)
    print_medians("  the same, QEMU CPU seconds", "user + system", cpu, width=34, digits=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
