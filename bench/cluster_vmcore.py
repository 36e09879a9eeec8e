"""What bringing a frozen run's vmcore back from a cluster worker costs
(`kswgdb.campaign.cores`).

Usage: python3 bench/cluster_vmcore.py [MiB ...]   (default: 64 256 512)

On a local Dask cluster of 1 single-thread worker: a dump of each size (random
bytes) is written on the worker, kept there (`cores.keep`: moved, sha256 noted),
then fetched by the campaign's side (`cores.fetch`: 16 MiB chunks, each one
`Client.run`, the sha256 checked) and deleted on the worker. 64 MiB is the test
kernel's dump, 256 MiB the Debian image's (its guest RAM).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dump_on_worker(size: int) -> str:
    """On the worker: a dump of ``size`` bytes in a run directory of its own."""
    path = Path(tempfile.mkdtemp(prefix="kswgdb-vmcore-bench-")) / "kswgdb-vmcore-bench.elf"
    with open(path, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(os.urandom(1 << 20))
    return str(path)


def keep_on_worker(dump: str, worker: str) -> tuple[dict, float]:
    """On the worker: what a run does with its dump (timed)."""
    from kswgdb.campaign import cores

    started = time.monotonic()
    into = Path(tempfile.mkdtemp(prefix="kswgdb-cluster-run-0-core-bench-"))
    remote = cores.keep(Path(dump), into, worker)
    shutil.rmtree(Path(dump).parent, ignore_errors=True)
    return remote, time.monotonic() - started


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = str(ROOT)
    import distributed

    from kswgdb.campaign import cores

    sizes = [int(a) for a in sys.argv[1:]] or [64, 256, 512]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        [worker] = client.scheduler_info()["workers"]
        for mib in sizes:
            dump = client.submit(dump_on_worker, mib << 20, pure=False).result()
            remote, kept = client.submit(keep_on_worker, dump, worker, pure=False).result()
            with tempfile.TemporaryDirectory(prefix="kswgdb-vmcore-bench-dest-") as dest:
                started = time.monotonic()
                got = cores.fetch(client, remote, Path(dest))
                took = time.monotonic() - started
                assert got.stat().st_size == mib << 20
            client.run(cores.drop, remote["dir"], workers=[worker])
            print(f"{mib} MiB dump: kept on the worker in {kept:.2f} s (move, sha256); "
                  f"fetched in {took:.2f} s ({mib / took:.0f} MiB/s, sha256 checked); "
                  f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
