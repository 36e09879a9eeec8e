"""The accelerator probe on real QEMU: fires under TCG; does not under this host's KVM."""

from __future__ import annotations

from pathlib import Path

import pytest

from kswgdb.qemu.accel import KVM_DEVICE, AccelCache, decide, read_host_facts
from kswgdb.qemu.probe import probe_watchpoint

pytestmark = pytest.mark.integration


def test_probe_fires_under_tcg() -> None:
    result = probe_watchpoint("tcg")
    assert result.fired, result.detail
    assert result.detail.startswith("stopped at watch:0x101000")
    assert result.seconds < 5


def test_auto_decision_on_this_host(accel_cache: AccelCache) -> None:
    """Whatever the host, `auto` must agree with the probe; here it is TCG by pre-check."""
    facts = read_host_facts()
    d = decide("auto", cache=accel_cache)
    assert d.accel in ("tcg", "kvm")
    if not facts.cpu_flags & {"vmx", "svm"}:
        # this project's machines: /dev/kvm is kvm_pvm, a software backend
        assert (d.accel, d.source) == ("tcg", "precheck")
        assert "no vmx/svm flag" in d.reason or "/dev/kvm" in d.reason
        assert not accel_cache.path.exists()           # no probe, nothing cached
    elif d.accel == "kvm":
        assert d.probed and "fired" in d.reason


@pytest.mark.skipif(not KVM_DEVICE.exists(), reason="no /dev/kvm on this host")
def test_probe_under_kvm_matches_hardware_virtualization(tmp_path: Path) -> None:
    """Run the real probe under -accel kvm (cpu host,-arch-capabilities).

    On a host without vmx/svm (the software kvm_pvm here) the watchpoint must not
    fire — a crash or timeout counts as "does not fire" and is not skipped.
    """
    facts = read_host_facts()
    result = probe_watchpoint("kvm", timeout=3.0)
    if not facts.cpu_flags & {"vmx", "svm"}:
        assert not result.fired, result.detail
    assert result.detail
