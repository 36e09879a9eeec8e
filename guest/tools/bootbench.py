#!/usr/bin/env python3
"""Time to the first console line ("KSWTEST boot") and to the exit, per machine type.

    python3 guest/tools/bootbench.py [-n RUNS] [-s SCENARIO]

Each run spawns qemu-system-x86_64 (TCG, -smp 2) with the serial console on a pipe
and timestamps the lines as they arrive. Medians over RUNS runs are printed.
"""
import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

ELF = Path(__file__).resolve().parents[2] / "images" / "kswtest.elf"
MACHINES = {
    "pc+qboot": ["-M", "pc", "-bios", "/usr/share/qemu/qboot.rom"],
    "pc+seabios": ["-M", "pc"],
    "q35+seabios": ["-M", "q35"],
    "q35+qboot": ["-M", "q35", "-bios", "/usr/share/qemu/qboot.rom"],
    "microvm": ["-M", "microvm"],
}


def run(machine, scenario):
    argv = ["qemu-system-x86_64", "-accel", "tcg", *MACHINES[machine], "-smp", "2", "-m", "64M",
            "-kernel", str(ELF), "-append", f"scenario={scenario}",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-serial", "stdio"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    marks = {}
    buf = b""
    while True:
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        now = time.monotonic() - t0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            for key in (b"KSWTEST boot", b"KSWTEST cpus=", b"KSWTEST verdict"):
                if line.startswith(key) and key not in marks:
                    marks[key] = now
    rc = p.wait(timeout=30)
    marks[b"exit"] = time.monotonic() - t0
    return rc, marks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=7)
    ap.add_argument("-s", type=int, default=0)
    ap.add_argument("machines", nargs="*", default=list(MACHINES))
    a = ap.parse_args()
    print(f"{'machine':14} {'first line':>11} {'cpus= line':>11} {'exit':>8}  status  (ms, median of {a.n})")
    for m in a.machines:
        res = [run(m, a.s) for _ in range(a.n)]
        def med(k):
            v = [r[1][k] * 1000 for r in res if k in r[1]]
            return f"{statistics.median(v):8.1f}" if len(v) == len(res) else "       -"
        rcs = sorted({r[0] for r in res})
        print(f"{m:14} {med(b'KSWTEST boot'):>11} {med(b'KSWTEST cpus='):>11} {med(b'exit'):>8}  {rcs}")


if __name__ == "__main__":
    main()
