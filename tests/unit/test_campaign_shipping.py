"""The image shipped to cluster workers by content hash, without a cluster: hashing,
what a worker's cache already holds, materializing an image there, and a run that
cannot get its image failing with the reason (never running on something else)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kswgdb.campaign import shipping
from kswgdb.campaign.cluster import run_on_worker
from kswgdb.campaign.worker import RunJob
from kswgdb.image import load
from kswgdb.run.options import RunOptions


@pytest.fixture
def image(tmp_path: Path):
    """A small image description with a kernel, an initrd and a module directory."""
    src = tmp_path / "src"
    (src / "mods").mkdir(parents=True)
    (src / "k.elf").write_bytes(b"kernel bytes")
    (src / "initrd.img").write_bytes(b"")                  # an empty file ships too
    (src / "mods" / "lkdtm.ko").write_bytes(b"module bytes")
    (src / "mods" / "notes.txt").write_text("not a module")
    (src / "img.toml").write_text('kernel = "k.elf"\ninitrd = "initrd.img"\n'
                                  'modules_dir = "mods"\nguest = "linux"\n')
    return load(src / "img.toml")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("KSWGDB_CACHE_DIR", str(tmp_path / "worker-cache"))
    monkeypatch.setattr(shipping, "_verified", {})
    return tmp_path / "worker-cache" / "images"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_parcel_names_every_file_by_its_sha256(image):
    parcel = shipping.parcel_of(image)
    assert parcel.files["kernel"] == shipping.ShippedFile(sha(b"kernel bytes"), "k.elf", 12)
    assert parcel.files["symbols"] == parcel.files["kernel"]          # the same file
    assert parcel.files["initrd"].sha256 == sha(b"")
    assert parcel.files["path"].name == "img.toml"
    assert [m.name for m in parcel.modules] == ["lkdtm.ko"]
    assert len(parcel.hashes()) == 4
    assert parcel.sources[sha(b"kernel bytes")] == str(image.kernel)


def put(cache: Path, data: bytes, name: str) -> Path:
    path = cache / sha(data) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_worker_with_every_hash_runs_on_its_cached_copies(image, cache):
    parcel = shipping.parcel_of(image)
    for src in [image.path, image.kernel, image.initrd, image.modules_dir / "lkdtm.ko"]:
        put(cache, Path(src).read_bytes(), Path(src).name)
    assert shipping.cached_hashes(parcel.hashes()) == parcel.hashes()
    shipped = shipping.materialize(parcel)         # no chunks: nothing to fetch
    assert shipped.kernel == shipped.symbols == cache / sha(b"kernel bytes") / "k.elf"
    assert shipped.initrd == cache / sha(b"") / "initrd.img"
    assert shipped.path.parent.parent == cache
    assert [p.name for p in shipped.modules_dir.glob("*.ko")] == ["lkdtm.ko"]
    assert (shipped.modules_dir / "lkdtm.ko").read_bytes() == b"module bytes"
    assert (shipped.guest, shipped.name) == (image.guest, image.name)


def test_a_cached_copy_that_differs_is_not_used(image, cache):
    parcel = shipping.parcel_of(image)
    for src in [image.path, image.initrd, image.modules_dir / "lkdtm.ko"]:
        put(cache, Path(src).read_bytes(), Path(src).name)
    bad = cache / sha(b"kernel bytes") / "k.elf"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"kernel bytez")                 # same size, other bytes
    assert shipping.cached_hashes(parcel.hashes()) == parcel.hashes()   # present...
    with pytest.raises(shipping.ShipError, match="no k.elf .*did not send it"):
        shipping.materialize(parcel)                                     # ...but not good


def test_ship_sends_only_what_some_worker_lacks(image, monkeypatch):
    import distributed

    parcel = shipping.parcel_of(image)
    kernel = sha(b"kernel bytes")
    published = {}

    class Variable:
        def __init__(self, name, client):
            self.name = name

        def set(self, value):
            published[self.name] = value

    monkeypatch.setattr(distributed, "Variable", Variable)

    class Client:
        scattered: list[bytes] = []

        def run(self, fn, hashes):
            assert fn is shipping.cached_hashes
            return {"w1": list(hashes), "w2": [h for h in hashes if h != kernel]}

        def scatter(self, data, hash=True):
            self.scattered.append(data)
            return f"future-{len(self.scattered)}"

    sent = shipping.ship(Client(), parcel)
    assert (sent.files, sent.bytes, Client.scattered) == (1, 12, [b"kernel bytes"])
    [name] = parcel.chunks[kernel]
    assert list(parcel.chunks) == [kernel] and published == {name: "future-1"}


def test_a_run_whose_image_cannot_be_had_fails_with_the_reason(image, cache, tmp_path):
    job = RunJob(index=3, seed=9, options=RunOptions(), log_path=tmp_path / "e.jsonl")
    outcome = run_on_worker(job, shipping.parcel_of(image), [])
    assert (outcome["status"], outcome["index"], outcome["seed"]) == ("failed", 3, 9)
    assert "the image on the worker" in outcome["reason"] and "did not send" in \
        outcome["reason"]


# ------------------------------------------------------------ no scheduler there
def test_a_scheduler_address_where_nothing_answers_is_bad_input_in_bounded_time():
    import socket
    import time

    import distributed  # noqa: F401 - imported before the clock starts (seconds under load)

    from kswgdb.campaign.cluster import connect
    from kswgdb.errors import BadInput

    with socket.socket() as silent:              # accepts, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BadInput, match=f"127.0.0.1:{port}: no Dask scheduler answered "
                                           "within 1 s"):
            connect(f"tcp://127.0.0.1:{port}", timeout=1.0)
        assert time.monotonic() - started < 3.0
    with pytest.raises(BadInput, match="nothing listens on 127.0.0.1"):
        connect(f"tcp://127.0.0.1:{port}")       # closed now: refused, at once
    with pytest.raises(BadInput, match="not a Dask scheduler address"):
        connect("ray://127.0.0.1:1")


# ------------------------------------------------------- live hits of runs in flight
def test_hits_published_by_runs_in_flight_count_for_the_latest_attempt_only(tmp_path):
    from collections import deque

    from kswgdb.campaign.cluster import ClusterPool, _Remote
    from kswgdb.campaign.runner import Campaign

    pool = object.__new__(ClusterPool)          # no scheduler: only the hit bookkeeping
    job = RunJob(index=1, seed=5, options=RunOptions(), log_path=tmp_path / "e.jsonl")
    pool.running = {1: _Remote(job, future=None)}
    pool._hits = deque([{"run": 1, "attempt": "a", "key": "k1"},
                        {"run": 1, "attempt": "a", "key": "k2"},
                        {"run": 7, "attempt": "x", "key": "k9"},       # ended: not counted
                        {"run": 1, "attempt": "b", "key": "k1"}])     # retried elsewhere
    messages = pool._live_hits()
    assert [(kind, key) for _run, kind, key in messages] == [
        ("hit", "k1"), ("hit", "k2"), ("hit", "k1")]
    assert pool.running[1].hits == ["k1"] and pool.running[1].attempt == "b"
    campaign = object.__new__(Campaign)
    campaign.pool, campaign.tally = pool, type("T", (), {"hits": 2})()
    assert campaign.hits_seen == 3              # 2 of ended runs + 1 in flight


# ------------------------------------------------- the run's --module and --drive files
def test_a_runs_modules_and_drives_travel_and_name_the_cached_copies(image, cache, tmp_path):
    from kswgdb.qemu.drives import Drive
    from kswgdb.run.additions import Additions
    from kswgdb.symbols.modinfo import ModuleInfo

    (tmp_path / "extra.ko").write_bytes(b"extra module")
    (tmp_path / "disk.raw").write_bytes(b"disk bytes")
    info = ModuleInfo(path=tmp_path / "extra.ko", name="extra", vermagic="v", depends=())
    additions = Additions(modules=(info,), drives=(
        Drive(tmp_path / "disk.raw", "overlay", "raw"),))
    parcel = shipping.parcel_of(image, additions)
    assert [f.name for f in parcel.added_modules] == ["extra.ko"]
    assert [(f.sha256, mode) for f, mode in parcel.drives] == [(sha(b"disk bytes"), "overlay")]
    assert len(parcel.hashes()) == 6              # the image's 4 and the run's 2
    for src in [image.path, image.kernel, image.initrd, image.modules_dir / "lkdtm.ko"]:
        put(cache, Path(src).read_bytes(), Path(src).name)
    options = RunOptions(modules=["extra.ko"], drives=["disk.raw,overlay"])
    with pytest.raises(shipping.ShipError, match="no extra.ko"):
        shipping.worker_options(parcel, options)  # not cached, not sent: that run fails
    put(cache, b"extra module", "extra.ko")
    put(cache, b"disk bytes", "disk.raw")
    on_worker = shipping.worker_options(parcel, options)
    assert on_worker.modules == [str(cache / sha(b"extra module") / "extra.ko")]
    assert on_worker.drives == [f"{cache / sha(b'disk bytes') / 'disk.raw'},overlay"]
    assert on_worker.image.kernel == cache / sha(b"kernel bytes") / "k.elf"


# ------------------------------------------- a file not sent, from a worker holding it
class _Cluster:
    """Workers as cache directories; `run` calls the function with that worker's cache."""

    def __init__(self, monkeypatch, caches: dict[str, Path]) -> None:
        self.monkeypatch, self.caches, self.calls = monkeypatch, caches, []

    def scheduler_info(self):
        return {"workers": {w: {} for w in self.caches}}

    def run(self, fn, *args, workers):
        self.calls.append((fn.__name__, tuple(workers)))
        out = {}
        for w in workers:
            with self.monkeypatch.context() as m:
                m.setenv("KSWGDB_CACHE_DIR", str(self.caches[w]))
                out[w] = fn(*args)
        return out


def test_a_file_not_sent_comes_from_another_worker_that_holds_it(image, cache, tmp_path,
                                                                 monkeypatch):
    from kswgdb.campaign.peers import Source

    parcel = shipping.parcel_of(image)                 # nothing sent: no chunks
    kernel = parcel.files["kernel"]
    damaged, good = tmp_path / "w1", tmp_path / "w2"
    put(damaged / "images", b"kernel bytez", "k.elf")  # present, same size, other bytes
    (damaged / "images" / sha(b"kernel bytez")).rename(damaged / "images" / kernel.sha256)
    put(good / "images", b"kernel bytes", "k.elf")
    cluster = _Cluster(monkeypatch, {"me": cache.parent, "w1": damaged, "w2": good})
    monkeypatch.setattr(shipping, "CHUNK", 5)          # several chunks, one call each
    import kswgdb.campaign.peers as peers
    monkeypatch.setattr(peers, "CHUNK", 5)
    got = shipping.ensure(kernel, parcel, Source(cluster, "me"))
    assert got == cache / kernel.sha256 / "k.elf" and got.read_bytes() == b"kernel bytes"
    assert got.stat().st_mode & 0o222 == 0
    assert ("cached_hashes", ("w1", "w2")) in cluster.calls      # never asks itself
    assert [c for c in cluster.calls if c[0] == "read_cached"] == [
        ("read_cached", ("w1",))] * 3 + [("read_cached", ("w2",))] * 3   # w1's copy: damaged
    assert shipping.lacking(parcel) == [f for f in [parcel.files["path"], parcel.files["initrd"],
                                                    *parcel.modules]]


def test_a_file_no_worker_holds_fails_with_every_reason(image, cache, tmp_path, monkeypatch):
    from kswgdb.campaign.peers import Source, read_cached

    parcel = shipping.parcel_of(image)
    cluster = _Cluster(monkeypatch, {"me": cache.parent, "w1": tmp_path / "empty"})
    with pytest.raises(shipping.ShipError, match="no k.elf .*no other worker holds it"):
        shipping.ensure(parcel.files["kernel"], parcel, Source(cluster, "me"))
    with pytest.raises(shipping.ShipError, match="not a cached file"):
        read_cached(parcel.files["kernel"].sha256, "../../etc/passwd", 0)


def test_a_worker_that_holds_every_file_only_checks_them_when_it_joins(image, cache,
                                                                      monkeypatch):
    from kswgdb.campaign import joiner

    parcel = shipping.parcel_of(image)
    for src in [image.path, image.kernel, image.initrd, image.modules_dir / "lkdtm.ko"]:
        put(cache, Path(src).read_bytes(), Path(src).name)

    def no_client(*args, **kwargs):
        raise AssertionError("a worker with every file connected to fetch one")

    monkeypatch.setattr(joiner, "Client", no_client)
    assert joiner.fill(parcel, "tcp://127.0.0.1:1", "me") == []
