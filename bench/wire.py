"""Wire costs of the gdbstub layer against a real QEMU 7.2 (TCG), on this machine.

Run: python bench/wire.py [--tcp] [--eager] [-n N]
Boots no kernel: a two-instruction real-mode loop is written at 0x7000 and the
vCPU pointed at it, so breakpoints and watchpoints fire deterministically.
Prints medians in microseconds; the machines are shared and noisy (+-30%).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from kswgdb.gdbstub.client import RemoteClient

LOOP = bytes.fromhex("ff060090ebfa")  # 0x7000: inc word [0x9000]; 0x7004: jmp 0x7000
A, B = 0x7000, 0x7004


def median_us(fn: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", action="store_true", help="gdbstub on 127.0.0.1 instead of unix")
    ap.add_argument("--eager", action="store_true", help="ack every reply at once")
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kswgdb-bench-")
    if args.tcp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        gdb_opt, address = f"tcp:127.0.0.1:{port},server=on,wait=off", f"127.0.0.1:{port}"
    else:
        path = os.path.join(tmp, "gdb.sock")
        gdb_opt, address = f"unix:{path},server=on,wait=off", path
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-gdb",
            gdb_opt,
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        c = RemoteClient.connect(address, 10, ack_mode="eager" if args.eager else "lazy")
        c.handshake()
        c.write_memory(A, LOOP)
        c.write_register("cs", 0)
        c.write_register("rip", A)
        n = args.n
        five = [f"m{0x9000 + 8 * i:x},8" for i in range(5)]
        print(
            f"transport={'tcp' if args.tcp else 'unix'} acks={'eager' if args.eager else 'lazy'}"
            f" n={n}"
        )
        rows = {
            "m 8 bytes": lambda: c.read_memory(0x9000, 8),
            "g (all registers)": lambda: c.read_registers(),
            "g, decode 4 names": lambda: c.read_registers(names=("rsp", "rbp", "rip", "gs_base")),
            "p rip": lambda: c.read_register("rip"),
            "Z2+z2 sequential": lambda: (
                c.insert_watchpoint(0xA000, 8),
                c.remove_watchpoint(0xA000, 8),
            ),
            "Z2+z2 pipelined": lambda: c.pipeline(["Z2,a000,8", "z2,a000,8"]),
            "5 x m sequential": lambda: [c.request(p) for p in five],
            "5 x m pipelined": lambda: c.pipeline(five),
        }
        # Round-robin so drift on a shared machine hits every row alike.
        samples: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(n):
            for name, fn in rows.items():
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
        for name, values in samples.items():
            print(f"  {name:28s} {statistics.median(values) * 1e6:8.1f} us")
        # Breakpoint stop -> continue, toggling two breakpoints (no step needed).
        c.insert_breakpoint(A)
        c.cont()
        c.wait_stop()
        at = [A]

        def toggle() -> None:
            cur = at[0]
            nxt = B if cur == A else A
            c.pipeline([f"z0,{cur:x},1", f"Z0,{nxt:x},1", "c"])
            c.wait_stop()
            at[0] = nxt

        print(f"  {'bp stop->cont (toggle, 1 rt)':28s} {median_us(toggle, n):8.1f} us")
        c.remove_breakpoint(at[0])

        def naive() -> None:  # remove, step, re-insert, continue: 4 round trips + stops
            c.remove_breakpoint(A)
            c.step(1)
            c.wait_stop()
            c.insert_breakpoint(A)
            c.cont()
            c.wait_stop()

        c.insert_breakpoint(A)
        c.cont()
        c.wait_stop()
        print(f"  {'bp stop->cont (rm/step/ins)':28s} {median_us(naive, n // 4):8.1f} us")
        c.close()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
