"""Choose the accelerator: KVM only where a write watchpoint is proven to fire.

Under TCG every gdbstub feature kswgdb needs works (unlimited, exact
watchpoints). KVM is faster, but only useful if *hardware* data watchpoints
really fire under it — and a ``/dev/kvm`` can exist without that: on this
project's machines it is ``kvm_pvm``, a software backend that accepts watchpoints
and never reports them (and whose int3 crashes the guest). A silent watchpoint is
the worst failure for this tool — it looks exactly like "no corruption" — so
``auto`` never trusts KVM on faith:

1. cheap pre-checks, in order: no /dev/kvm; /dev/kvm not read/writable; no
   ``vmx``/``svm`` flag in /proc/cpuinfo (no hardware virtualization, so whatever
   serves /dev/kvm is emulating) → TCG, with that reason;
2. otherwise the real probe (`kswgdb.qemu.probe`): boot a tiny store loop under
   KVM, set a write watchpoint on the stored word, and see it fire;
3. the probe's verdict is cached per host in ``~/.cache/kswgdb/accel.json``, keyed
   by hostname, kernel release, QEMU version and a hash of the CPU model and
   flags — anything that could change the answer changes the key.

An explicit ``tcg`` is obeyed without probing. An explicit ``kvm`` goes through the
same checks and is refused (`BadInput`, before any guest starts) with the reason
when they say KVM cannot fire a data watchpoint here: a run that cannot catch
anything must not look like a clean one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kswgdb.errors import BadInput

AccelName = Literal["tcg", "kvm"]
AccelRequest = Literal["auto", "tcg", "kvm"]
DecisionSource = Literal["requested", "precheck", "probed", "cached"]

KVM_DEVICE = Path("/dev/kvm")
CPUINFO = Path("/proc/cpuinfo")
SYS_MODULE = Path("/sys/module")
HW_VIRT_FLAGS = frozenset({"vmx", "svm"})


@dataclass(frozen=True)
class AccelDecision:
    """Which accelerator a machine uses, why, and how we know."""

    accel: AccelName
    reason: str
    source: DecisionSource

    @property
    def probed(self) -> bool:
        """The answer came from running the probe now."""
        return self.source == "probed"

    @property
    def cached(self) -> bool:
        """The answer came from an earlier probe on this host."""
        return self.source == "cached"

    def __str__(self) -> str:
        return f"{self.accel}: {self.reason} [{self.source}]"


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one watchpoint probe under one accelerator."""

    fired: bool
    detail: str
    seconds: float = 0.0


@dataclass(frozen=True)
class HostFacts:
    """What the pre-checks and the cache key look at; faked in unit tests."""

    kvm_exists: bool
    kvm_accessible: bool
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    model_name: str = ""
    hostname: str = ""
    kernel_release: str = ""
    kvm_modules: tuple[str, ...] = ()

    def cache_key(self, qemu_version: str) -> str:
        """Everything that can change the probe's answer, hashed into one key."""
        cpu = hashlib.sha256(
            (self.model_name + "\n" + " ".join(sorted(self.cpu_flags))).encode()
        ).hexdigest()[:16]
        return "|".join([self.hostname, self.kernel_release, qemu_version, cpu])


def read_host_facts(kvm: Path = KVM_DEVICE, cpuinfo: Path = CPUINFO,
                    sys_module: Path = SYS_MODULE) -> HostFacts:
    """Collect the host facts (cheap: a stat, an access check and two small reads)."""
    flags: frozenset[str] = frozenset()
    model = ""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = frozenset(value.split())
            elif key == "model name" and not model:
                model = value.strip()
            if flags and model:
                break
    modules: tuple[str, ...] = ()
    with contextlib.suppress(OSError):
        modules = tuple(sorted(p.name for p in sys_module.iterdir() if p.name.startswith("kvm")))
    return HostFacts(
        kvm_exists=kvm.exists(),
        kvm_accessible=os.access(kvm, os.R_OK | os.W_OK),
        cpu_flags=flags,
        model_name=model,
        hostname=platform.node(),
        kernel_release=platform.release(),
        kvm_modules=modules,
    )


def precheck(facts: HostFacts) -> str | None:
    """The reason KVM cannot be worth probing here, or None if the probe should decide."""
    if not facts.kvm_exists:
        return "no /dev/kvm"
    if not facts.kvm_accessible:
        return "/dev/kvm is not readable and writable by this user"
    if not facts.cpu_flags & HW_VIRT_FLAGS:
        loaded = f" (loaded: {', '.join(facts.kvm_modules)})" if facts.kvm_modules else ""
        return (f"no vmx/svm flag in /proc/cpuinfo{loaded}: /dev/kvm is a software backend, "
                "its hardware data watchpoints never fire")
    return None


def qemu_version(binary: str | None = None) -> str:
    """QEMU's ``-version`` banner (version and distribution revision), part of the cache key."""
    from kswgdb.qemu import binary as qemu_binary  # lazy: keeps accel importable alone

    return (qemu_binary.detect(binary) if binary else qemu_binary.selected()).banner


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/kswgdb/accel.json``, by default under ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kswgdb" / "accel.json"


class AccelCache:
    """Probe verdicts per host key, in one small JSON file (written atomically)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_cache_path()

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> ProbeResult | None:
        """The cached verdict for ``key``, if any (a corrupt file counts as empty)."""
        entry = self._load().get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("fired"), bool):
            return None
        return ProbeResult(entry["fired"], str(entry.get("detail", "")),
                           float(entry.get("seconds", 0.0)))

    def put(self, key: str, result: ProbeResult) -> None:
        """Record a verdict; failures to write are ignored (the cache is an optimization)."""
        data = self._load()
        data[key] = {"fired": result.fired, "detail": result.detail,
                     "seconds": round(result.seconds, 3), "when": int(time.time())}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".accel-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)


Probe = Callable[[AccelName], ProbeResult]


def decide(
    request: str = "auto",
    *,
    facts: HostFacts | None = None,
    probe: Probe | None = None,
    cache: AccelCache | None = None,
    qemu_binary: str | None = None,
    version: str | None = None,
) -> AccelDecision:
    """Turn ``--accel auto|tcg|kvm`` into a decision (see the module docstring)."""
    if request == "tcg":
        return AccelDecision("tcg", "requested", "requested")
    facts = facts or read_host_facts()
    if request not in ("auto", "kvm"):
        raise BadInput(f"--accel must be auto, tcg or kvm, not {request!r}")

    why_not = precheck(facts)
    if why_not is not None:
        if request == "kvm":
            raise BadInput(f"--accel kvm: {why_not} (use --accel tcg or auto)")
        return AccelDecision("tcg", why_not, "precheck")

    result, source = _probe_result(facts, probe, cache, qemu_binary, version)
    if result.fired:
        reason = f"KVM write watchpoint probe fired ({result.detail})"
        return AccelDecision("kvm", f"requested; {reason}" if request == "kvm" else reason, source)
    why_not = f"a write watchpoint did not fire under KVM ({result.detail})"
    if request == "kvm":
        raise BadInput(f"--accel kvm: {why_not} (use --accel tcg or auto)")
    return AccelDecision("tcg", why_not, source)


def _probe_result(facts: HostFacts, probe: Probe | None, cache: AccelCache | None,
                  qemu_binary: str, version: str | None) -> tuple[ProbeResult, DecisionSource]:
    """The probe's verdict for this host: from the cache, else by running it (then cached)."""
    cache = cache or AccelCache()
    key = facts.cache_key(version or qemu_version(qemu_binary))
    result = cache.get(key)
    if result is not None:
        return result, "cached"
    if probe is None:
        from kswgdb.qemu.probe import probe_watchpoint  # lazy: probe boots a Machine

        def probe(accel: AccelName) -> ProbeResult:
            return probe_watchpoint(accel, qemu_binary=qemu_binary)

    result = probe("kvm")
    cache.put(key, result)
    return result, "probed"
