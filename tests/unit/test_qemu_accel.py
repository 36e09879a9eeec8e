"""Accelerator choice without QEMU: faked host facts, a fake probe, a temp cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kswgdb.errors import BadInput
from kswgdb.qemu.accel import (
    AccelCache,
    HostFacts,
    ProbeResult,
    decide,
    default_cache_path,
    precheck,
    read_host_facts,
)

HW = frozenset({"fpu", "vmx", "sse2"})


def facts(**kw: object) -> HostFacts:
    base: dict[str, object] = dict(kvm_exists=True, kvm_accessible=True, cpu_flags=HW,
                                   model_name="Intel Xeon", hostname="h1",
                                   kernel_release="6.1.0")
    base.update(kw)
    return HostFacts(**base)  # type: ignore[arg-type]


class FakeProbe:
    def __init__(self, fired: bool) -> None:
        self.fired = fired
        self.calls: list[str] = []

    def __call__(self, accel: str) -> ProbeResult:
        self.calls.append(accel)
        return ProbeResult(self.fired, "fake", 0.1)


@pytest.fixture
def cache(tmp_path: Path) -> AccelCache:
    return AccelCache(tmp_path / "cache" / "accel.json")


def test_no_dev_kvm(cache: AccelCache) -> None:
    probe = FakeProbe(True)
    d = decide("auto", facts=facts(kvm_exists=False, kvm_accessible=False), probe=probe,
               cache=cache, version="7.2")
    assert (d.accel, d.source, d.reason) == ("tcg", "precheck", "no /dev/kvm")
    assert probe.calls == []


def test_dev_kvm_not_accessible(cache: AccelCache) -> None:
    d = decide("auto", facts=facts(kvm_accessible=False), probe=FakeProbe(True), cache=cache,
               version="7.2")
    assert d.accel == "tcg"
    assert "not readable and writable" in d.reason


def test_software_kvm_without_vmx_svm(cache: AccelCache) -> None:
    f = facts(cpu_flags=frozenset({"fpu", "hypervisor"}), kvm_modules=("kvm", "kvm_pvm"))
    probe = FakeProbe(True)
    d = decide("auto", facts=f, probe=probe, cache=cache, version="7.2")
    assert d.accel == "tcg"
    assert d.source == "precheck"
    assert d.reason.startswith("no vmx/svm flag in /proc/cpuinfo (loaded: kvm, kvm_pvm)")
    assert "\n" not in d.reason
    assert probe.calls == []
    assert not d.probed and not d.cached


@pytest.mark.parametrize("flag", ["vmx", "svm"])
def test_precheck_passes_with_hw_virt(flag: str) -> None:
    assert precheck(facts(cpu_flags=frozenset({flag}))) is None


def test_probe_fires_then_cached(cache: AccelCache) -> None:
    probe = FakeProbe(True)
    d1 = decide("auto", facts=facts(), probe=probe, cache=cache, version="7.2")
    assert (d1.accel, d1.source) == ("kvm", "probed")
    assert d1.probed
    d2 = decide("auto", facts=facts(), probe=probe, cache=cache, version="7.2")
    assert (d2.accel, d2.source) == ("kvm", "cached")
    assert d2.cached
    assert probe.calls == ["kvm"]


def test_probe_silent_means_tcg(cache: AccelCache) -> None:
    d = decide("auto", facts=facts(), probe=FakeProbe(False), cache=cache, version="7.2")
    assert d.accel == "tcg"
    assert "did not fire under KVM" in d.reason
    assert decide("auto", facts=facts(), probe=FakeProbe(True), cache=cache,
                  version="7.2").accel == "tcg"   # cached negative wins


@pytest.mark.parametrize("change", [
    {"hostname": "h2"}, {"kernel_release": "6.2.0"}, {"model_name": "AMD EPYC"},
    {"cpu_flags": HW | {"avx512f"}},
])
def test_cache_key_changes_reprobe(cache: AccelCache, change: dict) -> None:
    decide("auto", facts=facts(), probe=FakeProbe(False), cache=cache, version="7.2")
    probe = FakeProbe(True)
    d = decide("auto", facts=facts(**change), probe=probe, cache=cache, version="7.2")
    assert (d.accel, d.source, probe.calls) == ("kvm", "probed", ["kvm"])


def test_qemu_version_in_key(cache: AccelCache) -> None:
    decide("auto", facts=facts(), probe=FakeProbe(False), cache=cache, version="7.2")
    probe = FakeProbe(True)
    assert decide("auto", facts=facts(), probe=probe, cache=cache, version="8.0").probed


def test_cache_file_format(cache: AccelCache) -> None:
    decide("auto", facts=facts(), probe=FakeProbe(True), cache=cache, version="7.2")
    data = json.loads(cache.path.read_text())
    (key, entry), = data.items()
    assert key.startswith("h1|6.1.0|7.2|")
    assert entry["fired"] is True and entry["detail"] == "fake"


def test_corrupt_cache_is_ignored(cache: AccelCache) -> None:
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{not json")
    probe = FakeProbe(True)
    assert decide("auto", facts=facts(), probe=probe, cache=cache, version="7.2").probed
    assert json.loads(cache.path.read_text())  # rewritten


def test_explicit_tcg_is_obeyed_without_probing(cache: AccelCache) -> None:
    probe = FakeProbe(False)
    assert decide("tcg", probe=probe, cache=cache).accel == "tcg"
    assert probe.calls == []


def test_explicit_kvm_on_a_software_kvm_is_refused_at_once(cache: AccelCache) -> None:
    probe = FakeProbe(True)
    with pytest.raises(BadInput, match="--accel kvm: no vmx/svm flag.*never fire"):
        decide("kvm", facts=facts(cpu_flags=frozenset(), kvm_modules=("kvm", "kvm_pvm")),
               probe=probe, cache=cache)
    assert probe.calls == []          # refused by the precheck: nothing booted


def test_explicit_kvm_refused_when_the_probe_did_not_fire(cache: AccelCache) -> None:
    probe = FakeProbe(False)
    with pytest.raises(BadInput, match="--accel kvm: a write watchpoint did not fire"):
        decide("kvm", facts=facts(), probe=probe, cache=cache, version="7.2")
    with pytest.raises(BadInput):       # the cached verdict refuses as fast, with no probe
        decide("kvm", facts=facts(), probe=probe, cache=cache, version="7.2")
    assert probe.calls == ["kvm"]


def test_explicit_kvm_accepted_when_the_probe_fired(cache: AccelCache) -> None:
    d = decide("kvm", facts=facts(), probe=FakeProbe(True), cache=cache, version="7.2")
    assert d.accel == "kvm" and d.reason.startswith("requested; KVM write watchpoint")


def test_explicit_kvm_without_dev_kvm_is_bad_input() -> None:
    with pytest.raises(BadInput, match="no /dev/kvm"):
        decide("kvm", facts=facts(kvm_exists=False, kvm_accessible=False))


def test_unknown_request() -> None:
    with pytest.raises(BadInput):
        decide("hvf", facts=facts())


def test_read_host_facts_from_files(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 "
                       "hypervisor\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: svm\n")
    mods = tmp_path / "module"
    for m in ("kvm", "kvm_pvm", "ext4"):
        (mods / m).mkdir(parents=True)
    f = read_host_facts(kvm=tmp_path / "nokvm", cpuinfo=cpuinfo, sys_module=mods)
    assert f.model_name == "AMD EPYC"
    assert f.cpu_flags == {"fpu", "sse2", "hypervisor"}
    assert f.kvm_modules == ("kvm", "kvm_pvm")
    assert not f.kvm_exists and not f.kvm_accessible
    assert precheck(f) == "no /dev/kvm"


def test_default_cache_path_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "kswgdb" / "accel.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_path() == Path.home() / ".cache" / "kswgdb" / "accel.json"
