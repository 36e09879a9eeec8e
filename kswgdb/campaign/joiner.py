"""A worker fills its cache with the campaign's files when it joins: `CacheFill`.

A Dask worker plugin registered by the campaign's client is set up on every
worker there is, and on every worker that joins later. Its setup starts fetching
what this worker's cache lacks of the campaign's files, from the chunks the
campaign sent or from another worker that holds them (`kswgdb.campaign.peers`),
sha256-checked and read-only as a run's own fetch (`kswgdb.campaign.shipping`);
a worker that holds them all only checks them. The fetch runs in a thread of its
own: the campaign's registration and the worker's start never wait for the
slowest worker's transfer, and a run that needs a file meanwhile waits for that
fetch (one per file and process). It never fails the worker: a file it could
not get is logged here, and the run that needs it fetches it again, or fails
with the reason. The campaign removes the plugin when it ends (`unregister`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from distributed import Client, WorkerPlugin

from kswgdb.campaign.peers import Source
from kswgdb.campaign.shipping import ImageParcel, ShipError, ensure, lacking

#: Seconds a joining worker waits for a chunk the campaign published: it was published
#: before the plugin was registered, so only a campaign gone leaves it missing.
SENT_WAIT = 10.0
#: Seconds to reach the scheduler from the joining worker.
CONNECT_TIMEOUT = 30.0

log = logging.getLogger(__name__)


class CacheFill(WorkerPlugin):
    """Fetch the campaign's files this worker lacks, at setup (on every worker, now and later)."""

    def __init__(self, parcel: ImageParcel) -> None:
        self.parcel = parcel

    def setup(self, worker: Any) -> None:
        threading.Thread(target=fill, args=(self.parcel, worker.scheduler.address,
                                            worker.address),
                         name="kswgdb-cache-fill", daemon=True).start()


def fill(parcel: ImageParcel, scheduler: str, me: str) -> list[str]:
    """Put every file of ``parcel`` this worker lacks into its cache; the names it got."""
    got: list[str] = []
    try:
        missing = lacking(parcel)
        if not missing:
            return got
        with Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False) as client:
            source = Source(client, me, wait=SENT_WAIT)
            for f in missing:
                try:
                    ensure(f, parcel, source)
                    got.append(f.name)
                except (ShipError, OSError) as exc:
                    log.warning("kswgdb: %s (sha256 %s) not in this worker's cache: %s",
                                f.name, f.sha256[:12], exc)
    except Exception as exc:  # noqa: BLE001 - a thread of the worker's: logged, never raised
        log.warning("kswgdb: filling this worker's cache failed: %s: %s",
                    type(exc).__name__, exc)
    return got


def register(client: Any, parcel: ImageParcel) -> str:
    """Register a `CacheFill` for ``parcel`` on every worker, now and later (its name)."""
    name = f"kswgdb-image-{uuid.uuid4().hex}"
    client.register_plugin(CacheFill(parcel), name=name)
    return name


def unregister(client: Any, name: str) -> None:
    """No worker that joins after the campaign sets its files up any more."""
    client.unregister_worker_plugin(name)
