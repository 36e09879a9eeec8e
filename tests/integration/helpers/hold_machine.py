"""Start a running Machine, print ``READY <qemu-pid> <run-dir> <tmp-dir>``, then block.

Used by test_machine_kill.py: the test signals this process (SIGINT, SIGTERM or
SIGKILL) and checks that QEMU does not survive it. The image is a pvh store loop,
so the guest keeps running (and a vCPU busy) until something kills QEMU.

Usage: python -m tests.integration.helpers.hold_machine [IMAGE.toml]
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

from kswgdb.qemu import pvh
from kswgdb.qemu.machine import Machine


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="kswgdb-hold-") as tmp:
        image = argv[1] if len(argv) > 1 else pvh.watch_loop().image(Path(tmp) / "loop.elf")
        with Machine(image, accel="tcg", paused=False) as m:
            assert m.run_dir is not None
            print(f"READY {m.pid} {m.run_dir.root} {tmp}", flush=True)
            threading.Event().wait()       # block until a signal ends us
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
