"""The guest image travels to cluster workers by content hash: `ImageParcel`.

A worker needs the image's files (the description, kernel, symbols, initrd and
the ``.ko`` files of its modules directory) but shares no file system with the
campaign. The campaign hashes each file (sha256) once (`parcel_of`), asks every
worker which hashes its cache already holds, and scatters the bytes of the
others into the cluster once per campaign, in chunks (`ship`). On the worker a
run first materializes each file into its per-hash cache,
``cache_dir()/images/<sha256>/<name>``, from those chunks, checks the hash,
and then runs on an `Image` whose paths point into that cache
(`materialize`): the campaign's own paths are never read on a worker, and a
file that arrives damaged fails that run with its reason, never a run on the
wrong kernel. A worker that already has a hash skips its transfer. A file the
campaign did not send (every worker held it when it looked) comes from a worker
that holds it (`kswgdb.campaign.peers`): what a worker that joins later lacks,
and a `kswgdb.campaign.joiner.CacheFill` plugin fetches it all when it joins.

The run's own additions travel the same way: each ``--module`` ``.ko`` and each
``--drive`` image is hashed with the image (`parcel_of`), and on the worker the
run's options name the cached copies instead (`worker_options`), each drive in
its own mode. A cached copy is written once and made read-only (0444): a drive
is attached ``readonly=on`` or as the backing file of a throw-away overlay, so
neither the source nor the worker's copy is ever written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kswgdb.errors import BadInput, KswError
from kswgdb.image import Image
from kswgdb.symbols.elf import cache_dir

if TYPE_CHECKING:
    from kswgdb.run.additions import Additions
    from kswgdb.run.options import RunOptions

#: Bytes per scattered chunk: a 590 MB vmlinux never sits whole in one message.
CHUNK = 16 << 20
#: Seconds a worker waits for one chunk (16 MiB even on a slow link).
CHUNK_TIMEOUT = 300.0
#: The image's single files, by the `Image` field that names each.
ROLES = ("path", "kernel", "symbols", "initrd")


class ShipError(KswError):
    """A file of the image could not be put in the worker's cache (that run fails)."""


@dataclass(frozen=True)
class ShippedFile:
    """One file of the image: its content hash, base name and size."""

    sha256: str
    name: str
    size: int


@dataclass
class ImageParcel:
    """What a run on a worker needs to rebuild the image there (picklable, no bytes)."""

    image: Image                                     # as on the campaign's host
    files: dict[str, ShippedFile]                    # role (`ROLES`) -> file
    modules: tuple[ShippedFile, ...] = ()            # modules_dir/*.ko
    chunks: dict[str, list[str]] = field(default_factory=dict)   # sha256 -> chunk names
    sources: dict[str, str] = field(default_factory=dict)        # sha256 -> campaign path
    added_modules: tuple[ShippedFile, ...] = ()      # the run's --module files, in load order
    drives: tuple[tuple[ShippedFile, str], ...] = ()  # the run's --drive files and their mode

    def hashes(self) -> list[str]:
        """Every distinct file hash of the image and of the run's additions."""
        return sorted({f.sha256 for f in (*self.files.values(), *self.modules,
                                          *self.added_modules, *(d for d, _m in self.drives))})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def parcel_of(image: Image, additions: Additions | None = None) -> ImageParcel:
    """Hash every file of ``image`` and of the run's ``additions`` (on the campaign's host)."""
    sources: dict[str, str] = {}

    def ship(path: Path) -> ShippedFile:
        sha = file_sha256(path)
        sources[sha] = str(path)
        return ShippedFile(sha, path.name, path.stat().st_size)

    files = {role: ship(Path(getattr(image, role))) for role in ROLES
             if getattr(image, role) is not None}
    modules: tuple[ShippedFile, ...] = ()
    if image.modules_dir is not None and image.modules_dir.is_dir():
        modules = tuple(ship(ko) for ko in sorted(image.modules_dir.glob("*.ko")))
    parcel = ImageParcel(image, files, modules, sources=sources)
    if additions is not None:
        parcel.added_modules = tuple(ship(Path(m.path)) for m in additions.modules)
        parcel.drives = tuple((ship(Path(d.path)), d.mode) for d in additions.drives)
    return parcel


# ----------------------------------------------------------- the campaign's side
@dataclass
class Shipment:
    """What `ship` sent; the campaign holds ``held`` (the chunks) while runs may need them."""

    files: int
    bytes: int
    held: list[Any]            # a Dask `Variable` per chunk, each holding its scattered future

    def release(self) -> None:
        for variable in self.held:
            with contextlib.suppress(Exception):   # the cluster may be gone already
                variable.delete()


def ship(client: Any, parcel: ImageParcel) -> Shipment:
    """Scatter the files some worker lacks (their chunks' names go into ``parcel.chunks``).

    Each chunk's future is published in a named Dask `Variable`: a task that
    needs the file gets it by that name (a future rebuilt from its bare key is
    never resolved on a worker), and one that has the file never fetches it.
    """
    from distributed import Variable

    hashes = parcel.hashes()
    try:
        held = client.run(cached_hashes, hashes)           # {worker address: [sha256]}
    except Exception as exc:  # noqa: BLE001 - whatever the worker raised, one line
        raise BadInput("--cluster: the workers cannot run this kswgdb (install the same "
                       f"version there): {type(exc).__name__}: {exc}") from None
    missing = [h for h in hashes if not held or any(h not in have for have in held.values())]
    shipment = Shipment(len(missing), 0, [])
    tag = uuid.uuid4().hex
    for sha in missing:
        names = []
        with open(parcel.sources[sha], "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(CHUNK), b""):
                names.append(f"kswgdb-image-{tag}-{sha[:16]}-{len(names)}")
                variable = Variable(names[-1], client=client)
                variable.set(client.scatter(block, hash=False))
                shipment.held.append(variable)
                shipment.bytes += len(block)
        parcel.chunks[sha] = names
    return shipment


# ------------------------------------------------------------- the worker's side
def images_dir() -> Path:
    return cache_dir() / "images"


def cached_hashes(hashes: list[str]) -> list[str]:
    """Which of ``hashes`` this worker's cache holds (a whole file under ``images/<sha256>/``;
    a dot-file there is one being written, or left by a worker that died writing it)."""
    def held(sha: str) -> bool:
        folder = images_dir() / sha
        return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())

    return [h for h in hashes if held(h)]


_verified: dict[Path, tuple[int, int]] = {}     # path -> (size, mtime_ns) hashed in this process


def materialize(parcel: ImageParcel) -> Image:
    """The image with every path in this worker's cache (fetching what it lacks)."""
    paths = {role: ensure(f, parcel) for role, f in parcel.files.items()}
    changes: dict[str, Any] = dict(paths)
    if parcel.modules:
        changes["modules_dir"] = _modules_dir([ensure(f, parcel) for f in parcel.modules])
    return dataclasses.replace(parcel.image, **changes)


def worker_options(parcel: ImageParcel, options: RunOptions) -> RunOptions:
    """The run's options on this worker: its image, modules and drives in the cache."""
    return dataclasses.replace(
        options, image=materialize(parcel),
        modules=[str(ensure(f, parcel)) for f in parcel.added_modules],
        drives=[f"{ensure(f, parcel)},{mode}" for f, mode in parcel.drives])


def lacking(parcel: ImageParcel) -> list[ShippedFile]:
    """The parcel's files this worker's cache does not hold whole and right (each once)."""
    every = {f.sha256: f for f in (*parcel.files.values(), *parcel.modules,
                                   *parcel.added_modules, *(d for d, _m in parcel.drives))}
    return [f for f in every.values() if not _good(images_dir() / f.sha256 / f.name, f)]


def ensure(f: ShippedFile, parcel: ImageParcel, source: Any = None) -> Path:
    """``f`` in this worker's cache: from the chunks the campaign sent, else from a worker
    that holds it (``source``: how to reach the cluster, `peers.Source`; None in a task)."""
    target = images_dir() / f.sha256 / f.name
    if _good(target, f):
        return target
    with _fetching(f.sha256):              # one fetch per file in this process
        if _good(target, f):               # (the worker plugin's, or a run's)
            return target
        return _fetch(f, parcel, target, source)


def _fetching(sha256: str) -> threading.Lock:
    with _fetch_locks_guard:
        return _fetch_locks.setdefault(sha256, threading.Lock())


_fetch_locks: dict[str, threading.Lock] = {}
_fetch_locks_guard = threading.Lock()


def _fetch(f: ShippedFile, parcel: ImageParcel, target: Path, source: Any) -> Path:
    from kswgdb.campaign import peers

    names = parcel.chunks.get(f.sha256)
    source = source or peers.Source.of_task()
    reasons = []

    def streams() -> Iterator[Iterable[bytes]]:
        if names is not None:
            yield source.sent(names)
        yield from source.holders(f)      # not sent, or its chunks did not come

    try:
        for blocks in streams():
            try:
                _write(target, blocks)
            except ShipError as exc:
                reasons.append(str(exc))
                continue
            if _good(target, f):
                return target
            target.unlink(missing_ok=True)
            reasons.append(f"{f.name} arrived damaged on the worker (sha256 differs)")
    except ShipError as exc:                   # the cluster could not say who holds it
        reasons.append(str(exc))
    raise ShipError("; ".join(reasons) or (
        f"the worker has no {f.name} (sha256 {f.sha256[:12]}), the campaign did not send "
        "it and no other worker holds it"))


def _write(target: Path, blocks: Any) -> None:
    """``blocks`` (an iterable of bytes) into ``target``, made read-only, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        with open(partial, "wb") as out:
            for block in blocks:
                out.write(block)
        os.chmod(partial, 0o444)          # never written again (a drive above all)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _good(path: Path, f: ShippedFile) -> bool:
    """The cached file is there with the right hash (hashed once per process and version)."""
    try:
        st = path.stat()
    except OSError:
        return False
    stamp = (st.st_size, st.st_mtime_ns)
    if _verified.get(path) == stamp:
        return True
    if st.st_size != f.size or file_sha256(path) != f.sha256:
        return False
    _verified[path] = stamp
    return True


def _modules_dir(kos: list[Path]) -> Path:
    """A directory of links named as the modules (their names say which module is which)."""
    tag = hashlib.sha256("".join(sorted(str(k) for k in kos)).encode()).hexdigest()
    directory = images_dir() / "modules" / tag
    directory.mkdir(parents=True, exist_ok=True)
    for ko in kos:
        link = directory / ko.name
        if not link.exists():
            with contextlib.suppress(FileExistsError):
                link.symlink_to(ko)
    return directory
