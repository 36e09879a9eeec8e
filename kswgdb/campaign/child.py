"""One run as a plain child process (``python -m kswgdb.campaign.child``): for cluster workers.

A Dask worker process is daemonic and may not use multiprocessing, but it may
start a subprocess: the job goes in pickled on stdin, the run's messages come
back over an inherited pipe (a `multiprocessing.connection.Connection` on its
fd), exactly as from a local forkserver child (`worker.run_one`).
"""

from __future__ import annotations

import os
import pickle
import sys
from multiprocessing.connection import Connection


def main() -> None:
    fd = int(sys.argv[1])
    job = pickle.load(sys.stdin.buffer)
    from kswgdb.campaign.worker import run_one

    run_one(job, Connection(fd, readable=False))
    os._exit(0)


if __name__ == "__main__":
    main()
