"""What shipping an image to cluster workers by content hash costs (`kswgdb.campaign.shipping`).

Usage: python3 bench/cluster_ship.py [IMAGE]   (default: images/linux.toml, 600+ MiB)

On a local Dask cluster of 2 single-thread workers with a fresh cache: hashing the
image's files on the campaign's side, sending the ones the workers lack, a worker
materializing them into its cache (fetch, write, sha256 check), the same on a run
that finds them cached, and a second campaign's send (nothing: every hash is held).
Both workers of a local cluster share one cache directory, so the second worker
finds the files its peer wrote: on separate hosts each pays the first figure.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def materialize_time(parcel) -> float:
    """On a worker: seconds to have the image in this worker's cache."""
    from kswgdb.campaign import shipping

    started = time.monotonic()
    shipping.materialize(parcel)
    return time.monotonic() - started


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = str(ROOT)
    import distributed

    from kswgdb.campaign import shipping
    from kswgdb.image import load

    image = load(sys.argv[1] if len(sys.argv) > 1 else ROOT / "images" / "linux.toml")
    with tempfile.TemporaryDirectory(prefix="kswgdb-ship-bench-") as cache:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, host="127.0.0.1",
                                           env={"KSWGDB_CACHE_DIR": cache})
        client = distributed.Client(cluster)
        try:
            started = time.monotonic()
            parcel = shipping.parcel_of(image)
            hashed = time.monotonic() - started
            started = time.monotonic()
            sent = shipping.ship(client, parcel)
            print(f"image {image.name}: {len(parcel.hashes())} files; hashing "
                  f"{hashed:.1f} s; sending {sent.files} files, {sent.bytes / 2**20:.0f} MiB: "
                  f"{time.monotonic() - started:.1f} s")
            for what in ("first run on a worker", "a later run"):
                for worker in client.scheduler_info()["workers"]:
                    took = client.submit(materialize_time, parcel, workers=[worker],
                                         pure=False).result()
                    print(f"{what} ({worker}): materialized in {took:.2f} s")
            started = time.monotonic()
            again = shipping.ship(client, shipping.parcel_of(image))
            print(f"a second campaign: {again.files} files sent, "
                  f"{time.monotonic() - started:.1f} s (hashing included)")
            sent.release()
        finally:
            client.close()
            cluster.close()
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
