"""Debian kernel under TCG: how long until the first LKDTM hit is reported, by backtrace kind.

Each run is `kswgdb run images/linux.toml --watch 'fn=lkdtm_CORRUPT_STACK fo=0x1e'`
with ``echo CORRUPT_STACK > .../DIRECT`` as the guest's command, and measures
from the session's start (symbols, QEMU, boot, module armed, trigger) to the hit
reaching ``on_hit``, i.e. with its backtrace. Three ways of unwinding, interleaved
so a noisy neighbour hurts all alike:

* ``gdb, indexed``: the default (gdb through the relay; images/linux/out/vmlinux has
  the ``.gdb_index`` that ``make image-linux`` adds);
* ``gdb, no index``: the same gdb on a copy of the vmlinux without ``.gdb_index``
  (``objcopy --remove-section``), i.e. what the image gave before;
* ``fp``: the frame-pointer walk (no gdb; one frame on this ORC kernel).

"gdb s" is the time gdb took for that backtrace (start, symbols, module, unwind).
"to hit s" includes the boot, so on a shared machine its noise is larger than
gdb's share. Then gdb alone, the two files side by side: ``gdb -batch FILE`` with
a line lookup, a symbol lookup and ``ptype struct task_struct`` (seconds, peak RSS).
Medians of ``--runs`` (default 3).

Usage: python bench/linux_backtrace.py [--runs 3] [--no-unindexed]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.image import IMAGES_DIR  # noqa: E402
from kswgdb.run.oneshot import WatchSession  # noqa: E402
from kswgdb.run.options import RunOptions  # noqa: E402

WATCH = "fn=lkdtm_CORRUPT_STACK fo=0x1e"
PROVOKE = "-- echo CORRUPT_STACK > /sys/kernel/debug/provoke-crash/DIRECT"


def unindexed_image(tmp: Path) -> Path:
    """images/linux.toml again, with a vmlinux copy that has no .gdb_index."""
    out = IMAGES_DIR / "linux" / "out"
    vmlinux = tmp / "vmlinux"
    subprocess.run(["objcopy", "--remove-section", ".gdb_index", str(out / "vmlinux"),
                    str(vmlinux)], check=True)
    text = (IMAGES_DIR / "linux.toml").read_text()
    text = text.replace('symbols = "linux/out/vmlinux"', f'symbols = "{vmlinux}"')
    for key in ("kernel", "initrd", "modules_dir"):
        text = text.replace(f'{key} = "linux/out', f'{key} = "{out}')
    toml = tmp / "linux-noindex.toml"
    toml.write_text(text)
    return toml


def one_run(image: Path, backtrace: str) -> tuple[float, float, int]:
    """(seconds to the hit with its backtrace, seconds gdb took for it, frames)."""
    at: list[float] = []
    session = WatchSession(RunOptions(image=image, watches=[WATCH], accel="tcg", timeout=180,
                                      cmdline=PROVOKE, backtrace=backtrace),
                           on_hit=lambda _hit: at.append(time.monotonic()))
    t0 = time.monotonic()
    report = session.run()
    if not at or not report.hits:
        raise RuntimeError(f"{image} {backtrace}: no hit ({report.summary}, {report.fault})")
    gdb_s = report.backtrace_seconds[0] if report.backtrace_seconds else 0.0
    return at[0] - t0, gdb_s, len(report.hits[0].backtrace)


def gdb_alone(vmlinux: Path) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one gdb -batch on ``vmlinux`` (GNU time's %e %M)."""
    probe = ["-ex", "info line vfs_write", "-ex", "info symbol vfs_write",
             "-ex", "ptype struct task_struct"]
    done = subprocess.run(["/usr/bin/time", "-f", "KSWGDB-TIME %e %M", "gdb", "-nx", "-q",
                           "-batch", str(vmlinux), *probe], capture_output=True, text=True,
                          check=True)
    line = next(x for x in done.stderr.splitlines() if x.startswith("KSWGDB-TIME"))
    _tag, seconds, kb = line.split()
    return float(seconds), int(kb) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-unindexed", action="store_true", help="skip the no-index copy")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kswgdb-bench-") as tmp:
        modes = [("gdb, indexed", IMAGES_DIR / "linux.toml", "gdb")]
        if not args.no_unindexed:
            modes.append(("gdb, no index", unindexed_image(Path(tmp)), "gdb"))
        modes.append(("fp (no gdb)", IMAGES_DIR / "linux.toml", "fp"))
        rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _, _ in modes}
        for _ in range(args.runs):
            for name, image, backtrace in modes:
                rows[name].append(one_run(image, backtrace))
        alone: dict[str, list[tuple[float, float]]] = {"indexed": [], "no index": []}
        if not args.no_unindexed:
            for _ in range(args.runs):
                alone["indexed"].append(gdb_alone(IMAGES_DIR / "linux" / "out" / "vmlinux"))
                alone["no index"].append(gdb_alone(Path(tmp) / "vmlinux"))
    print(f"TCG, Debian 6.1, LKDTM CORRUPT_STACK   to hit s (min-max)   gdb s (min-max)  "
          f"frames   (medians of {args.runs})")
    for name, runs in rows.items():
        hit = [r[0] for r in runs]
        gdb = [r[1] for r in runs]
        frames = statistics.median(r[2] for r in runs)
        print(f"{name:<36} {statistics.median(hit):6.2f} ({min(hit):5.2f}-{max(hit):5.2f})"
              f"  {statistics.median(gdb):5.2f} ({min(gdb):4.2f}-{max(gdb):4.2f})"
              f"  {frames:5.0f}")
    if alone["indexed"]:
        print("gdb -batch vmlinux (line, symbol, ptype task_struct)    s      peak RSS MB")
        for name, runs in alone.items():
            print(f"  {name:<52} {statistics.median(r[0] for r in runs):5.2f} "
                  f"{statistics.median(r[1] for r in runs):8.0f}")
        ratio = (statistics.median(r[0] for r in alone["no index"])
                 / statistics.median(r[0] for r in alone["indexed"]))
        print(f"  no index / indexed: {ratio:.1f}x")
    fp = statistics.median(r[0] for r in rows["fp (no gdb)"])
    for name in rows:
        if name != "fp (no gdb)":
            print(f"{name} / fp, time to hit: "
                  f"{statistics.median(r[0] for r in rows[name]) / fp:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
