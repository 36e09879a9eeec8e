"""What ``kswgdb disasm F`` costs on a big kernel: wall and CPU seconds, peak RSS.

Runs the real command (``python -m kswgdb disasm --image IMAGE F``, output to a pipe)
in a fresh process per run, after one warm-up run per function (the first listing of
a function in a compile unit decodes its line program and caches it: "after the first
cached open" is what is measured). ``--top N`` adds the N largest functions of the
image's kernel. ``--tree DIR`` runs another checkout's code (before/after figures).
CPU is user+sys of the child; medians of ``--reps``.

Usage: python bench/disasm_time.py [--image images/linux.toml] [--top 5] [--reps 3]
       [--tree DIR] [F ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.symbols.elf import SymbolTable  # noqa: E402

DEFAULT = ("number", "do_filp_open", "__schedule", "path_openat")


def _one(tree: Path, image: str, func: str) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MB, output lines) of one run (the child's own rusage)."""
    env = dict(os.environ, PYTHONPATH=str(tree), NO_COLOR="1")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "kswgdb", "disasm", "--image", image,
                                 func], env=env, cwd=tree, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"disasm {func} failed ({proc.returncode}): {err.read().decode()}")
        out.seek(0)
        lines = out.read().count(b"\n")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("funcs", nargs="*")
    ap.add_argument("--image", default=str(ROOT / "images" / "linux.toml"))
    ap.add_argument("--top", type=int, default=0, help="also the N largest functions")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tree", default=str(ROOT), help="the checkout whose code runs")
    args = ap.parse_args()
    image = str(Path(args.image).resolve())
    funcs = list(args.funcs or DEFAULT)
    if args.top:
        table = SymbolTable.load(load_image(image).symbols)
        sized = sorted({s.addr: s for s in table.symbols if s.kind == "func"}.values(),
                       key=lambda s: s.size, reverse=True)
        funcs += [s.name for s in sized[:args.top] if len(table.lookup_all(s.name)) == 1]
    tree = Path(args.tree).resolve()
    print(f"kswgdb disasm --image {args.image} F, code of {tree}, medians of {args.reps} "
          f"after a warm-up; load average {os.getloadavg()[0]:.1f}")
    print(f"{'function':24} {'lines':>6} {'wall s':>7} {'CPU s':>7} {'peak RSS MB':>12}")
    for func in funcs:
        _one(tree, image, func)                       # warm the caches
        runs = [_one(tree, image, func) for _ in range(args.reps)]
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{func:24} {runs[0][3]:6} {wall:7.2f} {cpu:7.2f} {rss:12.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
