"""Where a cluster worker gets a file of the campaign it lacks: `Source`.

The campaign sends (scatters) only the files some worker lacked when it looked
(`kswgdb.campaign.shipping.ship`); a file every worker held then is not sent at
all. A worker that joins later, or whose cache lost a file, still needs it, and
the campaign may no longer have it (its source deleted once shipped): so such a
file comes from a worker whose cache holds it, read there in `CHUNK`-byte
pieces (``Client.run`` on that worker, one chunk per call: no message holds a
whole vmlinux), written and sha256-checked by `shipping` as a sent file is. A
damaged copy on one holder makes the worker try the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kswgdb.campaign.cores import read_chunk
from kswgdb.campaign.shipping import (
    CHUNK,
    CHUNK_TIMEOUT,
    ShipError,
    ShippedFile,
    cached_hashes,
    images_dir,
)


class Source:
    """The cluster as seen from one worker: its client, its own address, how long to
    wait for a chunk the campaign published (``wait``: short where its absence means
    the campaign is gone, as in a plugin left behind by one that died)."""

    def __init__(self, client: Any, me: str | None, wait: float = CHUNK_TIMEOUT) -> None:
        self.client, self.me, self.wait = client, me, wait

    @classmethod
    def of_task(cls) -> Source:
        """The source of the Dask task running this (no cluster outside one: none)."""
        from distributed import get_client, get_worker

        try:
            worker = get_worker()
        except ValueError:
            return cls(None, None)
        return cls(get_client(), worker.address)

    def sent(self, names: list[str]) -> Iterator[bytes]:
        """The chunks the campaign scattered for a file (named Dask `Variable`s)."""
        from distributed import Variable

        if self.client is None:
            raise ShipError("the campaign's chunks: not on a cluster worker")
        for name in names:
            try:
                yield Variable(name, client=self.client).get(timeout=self.wait).result(
                    CHUNK_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - gone, late or lost: that file's reason
                raise ShipError(f"the campaign's chunk {name} did not come "
                                f"({type(exc).__name__}: {exc})") from None

    def holders(self, f: ShippedFile) -> list[Iterator[bytes]]:
        """One chunk stream per other worker whose cache holds ``f`` (none: empty)."""
        if self.client is None:
            return []
        try:            # never itself: a worker still joining answers no request yet
            others = [w for w in self.client.scheduler_info()["workers"] if w != self.me]
            held = self.client.run(cached_hashes, [f.sha256], workers=others) if others else {}
        except Exception as exc:  # noqa: BLE001 - the cluster could not say: that file's reason
            raise ShipError(f"asking the workers for {f.name}: {type(exc).__name__}: {exc}"
                            ) from None
        return [self._from(worker, f) for worker in sorted(held) if f.sha256 in held[worker]]

    def _from(self, worker: str, f: ShippedFile) -> Iterator[bytes]:
        for offset in range(0, f.size, CHUNK):
            try:
                got = self.client.run(read_cached, f.sha256, f.name, offset, CHUNK,
                                      workers=[worker])
            except Exception as exc:  # noqa: BLE001 - that holder failed: try the next
                raise ShipError(f"{f.name} from worker {worker}: "
                                f"{type(exc).__name__}: {exc}") from None
            yield got[worker]


def read_cached(sha256: str, name: str, offset: int, size: int = CHUNK) -> bytes:
    """``size`` bytes of a cached file from ``offset`` (run on the holder by the worker
    that lacks it); only a file of the cache (a plain name under a sha256)."""
    if len(sha256) != 64 or Path(name).name != name or name.startswith("."):
        raise ShipError(f"not a cached file: {sha256[:12]}/{name}")
    return read_chunk(str(images_dir() / sha256), name, offset, size)
