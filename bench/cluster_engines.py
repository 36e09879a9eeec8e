"""Choosing the campaign's cluster engine: Dask distributed against Ray, on this machine.

Usage: python3 bench/cluster_engines.py [--install] [--tasks 200]

  --install   for each engine, a fresh venv in a temporary directory: ``pip install``
              wall time and the venv's size above an empty venv's (then measured in it)
  otherwise   measured with whichever engine this Python has

For each engine: cluster start (a local cluster of 2 single-thread workers, from
nothing until a first batch of tasks came back), per-task overhead (a trivial task
submitted and awaited ``--tasks`` times one after the other), and the resident memory
of the cluster's processes (driver included) at the end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r'''
import sys, time, psutil

def f(x):
    return x

def dask(n):
    from distributed import Client, LocalCluster
    t = time.monotonic()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, host="127.0.0.1")
    client = Client(cluster)
    client.gather(client.map(f, range(5), pure=False))
    start = time.monotonic() - t
    t = time.monotonic()
    for i in range(n):
        client.submit(f, i, pure=False).result()
    per = (time.monotonic() - t) / n
    me = psutil.Process()
    rss = me.memory_info().rss + sum(p.memory_info().rss for p in me.children(recursive=True))
    client.close(); cluster.close()
    return start, per, rss

def ray(n):
    import ray as r
    t = time.monotonic()
    r.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    g = r.remote(num_cpus=1)(f)
    r.get([g.remote(i) for i in range(5)])
    start = time.monotonic() - t
    t = time.monotonic()
    for i in range(n):
        r.get(g.remote(i))
    per = (time.monotonic() - t) / n
    me = psutil.Process()
    procs = [me] + me.children(recursive=True)
    rss = sum(p.memory_info().rss for p in procs)
    r.shutdown()
    return start, per, rss

if __name__ == "__main__":
    engine, n = sys.argv[1], int(sys.argv[2])
    start, per, rss = {"dask": dask, "ray": ray}[engine](n)
    print(f"{start:.2f} {per * 1000:.2f} {rss / 2**20:.0f}")
'''

PACKAGES = {"dask": ["distributed", "psutil"], "ray": ["ray", "psutil"]}


def du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure(python: str, engine: str, tasks: int, workdir: Path) -> str:
    probe = workdir / "probe.py"
    probe.write_text(PROBE)
    done = subprocess.run([python, str(probe), engine, str(tasks)], capture_output=True,
                          text=True, timeout=600, cwd=workdir)
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1:]}"
    start, per, rss = done.stdout.split()[-3:]
    return f"cluster start {start} s, per task {per} ms, memory {rss} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true")
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kswgdb-bench-engines-") as tmp:
        work = Path(tmp)
        if not args.install:
            for engine in PACKAGES:
                print(f"{engine:5} {measure(sys.executable, engine, args.tasks, work)}")
            return
        empty = work / "empty"
        subprocess.run([sys.executable, "-m", "venv", str(empty)], check=True)
        base = du_mib(empty)
        for engine, packages in PACKAGES.items():
            venv = work / engine
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            t = time.monotonic()
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            took = time.monotonic() - t
            size = du_mib(venv) - base
            print(f"{engine:5} install {took:.1f} s, {size:.0f} MiB; "
                  f"{measure(str(venv / 'bin' / 'python'), engine, args.tasks, work)}")
            shutil.rmtree(venv)


if __name__ == "__main__":
    main()
