"""A frozen run's vmcore kept on a cluster worker and fetched by the campaign, without a
cluster: kept with its companion, fetched in chunks and checked, fetched only for a
signature that has no vmcore yet, deleted on the worker either way."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from kswgdb.campaign import cores
from kswgdb.campaign.cluster import ClusterPool, _Remote
from kswgdb.campaign.worker import RunJob
from kswgdb.run.options import RunOptions


class FakeClient:
    """`Client.run` on one worker, run here; counts the calls (one per chunk)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, fn, *args, workers):
        assert workers == ["tcp://w:1"]
        self.calls.append(fn.__name__)
        return {"tcp://w:1": fn(*args)}


@pytest.fixture
def kept(tmp_path: Path, monkeypatch):
    """A 2.5-chunk dump and its vmcoreinfo kept on the 'worker' (chunks of 1 KiB)."""
    monkeypatch.setattr(cores, "CHUNK", 1024)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dump = run_dir / "kswgdb-vmcore-1.elf"
    dump.write_bytes(bytes(range(256)) * 10)
    (run_dir / "kswgdb-vmcore-1.elf.vmcoreinfo").write_text("OSRELEASE=6.1\n")
    into = Path(tempfile.mkdtemp(prefix="kswgdb-cluster-run-1-core-test-"))
    remote = cores.keep(dump, into, "tcp://w:1")
    yield dump, remote
    cores.drop(str(into))


def test_a_kept_dump_and_its_companion_come_back_in_chunks(kept, tmp_path):
    dump, remote = kept
    assert not dump.exists()                       # moved out of the run's directory
    assert [f["name"] for f in remote["files"]] == [dump.name, dump.name + ".vmcoreinfo"]
    dest = tmp_path / "campaign"
    dest.mkdir()
    client = FakeClient()
    got = cores.fetch(client, remote, dest)
    assert got == dest / dump.name and got.read_bytes() == bytes(range(256)) * 10
    assert got.stat().st_mode & 0o777 == 0o600
    assert (dest / (dump.name + ".vmcoreinfo")).read_text() == "OSRELEASE=6.1\n"
    assert client.calls == ["read_chunk"] * (3 + 1)
    assert sorted(p.name for p in dest.iterdir()) == [dump.name, dump.name + ".vmcoreinfo"]


def test_a_dump_that_arrives_damaged_is_not_kept(kept, tmp_path):
    _dump, remote = kept
    remote["files"][0]["sha256"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(cores.CoreError, match="arrived damaged"):
        cores.fetch(FakeClient(), remote, tmp_path)
    assert not list(tmp_path.glob("*.elf*")) and not list(tmp_path.glob(".*partial"))


def test_only_a_new_signatures_dump_is_fetched_and_every_kept_one_is_dropped(kept, tmp_path):
    dump, remote = kept
    pool = object.__new__(ClusterPool)
    pool.client, pool._vmcores = FakeClient(), set()
    runs = []
    for index in (1, 2):
        (tmp_path / f"{index}").mkdir()
        job = RunJob(index, 7, RunOptions(), log_path=tmp_path / f"{index}" / "events.jsonl")
        runs.append(_Remote(job, future=None))
    worker_path = str(Path(remote["dir"]).parent / "run" / dump.name)
    log = json.dumps({"event": "freeze", "vmcore": worker_path}) + "\n"
    first = {"vmcore": worker_path, "signatures": {"k1": 1}}
    log = pool._bring_vmcore(runs[0], first, dict(remote), log)
    assert first["vmcore"] == str(tmp_path / "1" / dump.name) and Path(first["vmcore"]).exists()
    assert json.loads(log)["vmcore"] == first["vmcore"]        # the log says where it is
    assert not Path(remote["dir"]).exists()                      # the worker's copy is gone
    pool.client.calls.clear()
    again = {"vmcore": worker_path, "signatures": {"k1": 1}}
    pool._bring_vmcore(runs[1], again, dict(remote), "")
    assert pool.client.calls == ["drop"]                         # same signature: not fetched
    assert again["vmcore"] == str(tmp_path / "2" / dump.name)    # the tally marks it dropped
    assert not Path(again["vmcore"]).exists()
    lost = {"vmcore": worker_path, "signatures": {"k2": 1}}      # a new one, the copy gone
    pool._bring_vmcore(runs[1], lost, dict(remote), "")
    assert lost["vmcore"] is None and "worker tcp://w:1" in lost["vmcore_lost"]


def test_a_run_whose_dump_is_missing_says_so(tmp_path):
    into = tmp_path / "kept"
    into.mkdir()
    remote = cores.keep(tmp_path / "never-written.elf", into, "tcp://w:1")
    with pytest.raises(cores.CoreError, match="not on worker tcp://w:1"):
        cores.fetch(FakeClient(), remote, tmp_path)
