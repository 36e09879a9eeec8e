"""Symbols of Debian's 590 MB vmlinux: time and peak RSS of what a run needs, cold vs warm.

"What a run needs" is what `kswgdb run images/linux.toml --watch ...` does before
QEMU starts plus the Linux facts it reads at run time: load the symbol table,
build the "linux" GuestLayout (per-CPU current task, task_struct offsets), the
module-walk offsets (struct module, struct mod_kallsyms) and resolve a canary
watch on cp_new_stat. Cold: an empty cache directory (the first run on a new
kernel). Warm: the cache the cold run left (every later run). Each measurement
is a fresh Python process, so peak RSS is that run's own.

Usage: python bench/linux_symbols.py [--runs 3] [--symbols images/linux/out/vmlinux]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
t0 = time.monotonic()
from kswgdb.symbols.program import Program
from kswgdb.watch.config import parse_watches
from kswgdb.watch.layout import layout_for
from kswgdb.watch.modules import ModuleLayout
from kswgdb.watch.resolve import resolve_watch
t1 = time.monotonic()
p = Program.load(sys.argv[1])
t2 = time.monotonic()
layout = layout_for(p, "linux")
mods = ModuleLayout.from_program(p)
resolve_watch(parse_watches(["fn=cp_new_stat fo=0x3d"])[0], p)
t3 = time.monotonic()
assert layout.current_gs_offset is not None and layout.task_pid_offset is not None
print(json.dumps({"symtab": t2 - t1, "facts_and_watch": t3 - t2, "total": t3 - t1,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "dwarf_opened": p._dwarf is not None}))
"""


def measure(symbols: Path, cache: Path) -> dict:
    env = {**os.environ, "KSWGDB_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(symbols)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--symbols", type=Path, default=ROOT / "images/linux/out/vmlinux")
    args = ap.parse_args()
    if not args.symbols.is_file():
        print(f"{args.symbols} missing: run `make image-linux`", file=sys.stderr)
        return 2
    print(f"{args.symbols}: {args.symbols.stat().st_size / 1e6:.0f} MB")
    results: dict[str, list[dict]] = {"cold": [], "warm": []}
    for _ in range(args.runs):          # interleaved: cold, warm, cold, warm...
        cache = Path(tempfile.mkdtemp(prefix="kswgdb-bench-"))
        try:
            results["cold"].append(measure(args.symbols, cache))
            results["warm"].append(measure(args.symbols, cache))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"{'cache':<6} {'symtab s':>9} {'facts+watch s':>14} {'total s':>8} "
          f"{'peak RSS MB':>12} {'DWARF opened':>13}   (medians of {args.runs})")
    for kind, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows)
               for k in ("symtab", "facts_and_watch", "total", "rss_mb")}
        opened = sum(r["dwarf_opened"] for r in rows)
        print(f"{kind:<6} {med['symtab']:9.2f} {med['facts_and_watch']:14.2f} "
              f"{med['total']:8.2f} {med['rss_mb']:12.0f} {opened:>9}/{len(rows)}")
    cold = statistics.median(r["total"] for r in results["cold"])
    warm = statistics.median(r["total"] for r in results["warm"])
    print(f"warm/cold total: {warm / cold:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
