"""A frozen run's vmcore, from a cluster worker into the campaign directory.

The worker keeps it; the campaign fetches it only when it wants it. With
``--on-hit freeze`` every run that hits dumps the guest, and a Linux guest's dump
is the size of its RAM: sending every dump back with its outcome would move one
dump per hit through the scheduler, most of them of a signature already kept
and deleted on arrival. So a run on a worker moves its dump (and its
``.vmcoreinfo`` companion, if any) out of its run directory into a directory of
its own there (`keep`: its size and sha256 recorded), and returns only that
description. The campaign fetches the dump of a run whose signature has no
vmcore yet (`fetch`): in chunks of `CHUNK` bytes (``Client.run`` on that worker,
one chunk per call: no message holds a whole dump), written under a dot-name,
checked against the worker's sha256, then renamed into the run's directory. The
worker's copy is deleted either way (`drop`); a worker process that dies first
takes it with its run directories (`kswgdb.campaign.cluster.sweep_lost_runs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kswgdb.campaign.shipping import CHUNK, file_sha256
from kswgdb.campaign.tally import VMCOREINFO_SUFFIX as COMPANION
from kswgdb.errors import KswError


class CoreError(KswError):
    """A vmcore kept on a worker could not be brought back (the run keeps its reason)."""


# ------------------------------------------------------------- the worker's side
def keep(vmcore: Path, into: Path, worker: str) -> dict[str, Any]:
    """Move ``vmcore`` (and its companion) into ``into``; what `fetch` needs to get them."""
    files = []
    for path in (vmcore, vmcore.with_name(vmcore.name + COMPANION)):
        if not path.is_file():
            continue
        target = into / path.name
        shutil.move(path, target)
        files.append({"name": target.name, "size": target.stat().st_size,
                      "sha256": file_sha256(target)})
    return {"worker": worker, "dir": str(into), "files": files}


def read_chunk(directory: str, name: str, offset: int, size: int = CHUNK) -> bytes:
    """``size`` bytes of a kept file from ``offset`` (run on the worker by the campaign)."""
    with open(Path(directory) / name, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def drop(directory: str) -> None:
    """Delete a kept dump's directory (only one of ours, in the temporary directory)."""
    path = Path(directory)
    if path.parent == Path(tempfile.gettempdir()) and path.name.startswith("kswgdb-"):
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------- the campaign's side
def fetch(client: Any, remote: dict[str, Any], dest: Path) -> Path:
    """Bring the kept files into ``dest``; the dump's path there. `CoreError` on any failure."""
    worker = remote["worker"]
    if not remote["files"]:
        raise CoreError(f"the run's vmcore was not on worker {worker} (its dump failed?)")
    got: list[Path] = []
    try:
        for f in remote["files"]:
            got.append(_fetch_file(client, worker, remote["dir"], f, dest))
    except CoreError:
        for path in got:
            path.unlink(missing_ok=True)
        raise
    return got[0]


def _fetch_file(client: Any, worker: str, directory: str, f: dict[str, Any],
                dest: Path) -> Path:
    target = dest / f["name"]
    partial = dest / f".{f['name']}.partial"
    digest = hashlib.sha256()
    try:
        with open(partial, "wb", opener=_private) as out:     # 0600, as a local dump
            offset = 0
            while offset < f["size"]:
                answer = client.run(read_chunk, directory, f["name"], offset, CHUNK,
                                    workers=[worker])
                block = answer[worker]
                if not block:
                    raise CoreError(f"{f['name']} ends at {offset} of {f['size']} bytes "
                                    "on the worker")
                out.write(block)
                digest.update(block)
                offset += len(block)
        if digest.hexdigest() != f["sha256"]:
            raise CoreError(f"{f['name']} arrived damaged (sha256 differs)")
        os.replace(partial, target)
    except CoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - the worker or the link: one line, recorded
        raise CoreError(f"{f['name']} from worker {worker}: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
