"""Guest image descriptions: the TOML files under ``images/``.

An image is more than a kernel file: the machine type, memory, vCPU count and the
kernel command line all decide whether a scenario reproduces, so they travel
together in one small file next to the kernel. Paths inside are relative to the
TOML file, so an image directory can be copied anywhere.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kswgdb import bundled
from kswgdb.errors import BadInput

#: The directory of bundled images, next to the package in a source checkout
#: (an installed wheel has them as package data: `kswgdb.bundled`).
IMAGES_DIR = bundled.SOURCE_IMAGES_DIR
DEFAULT_IMAGE = "kswtest"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: Guest RAM bounds: below 1 MiB nothing boots; above 1 TiB QEMU refuses on this host.
MIN_MEMORY, MAX_MEMORY = 1 << 20, 1 << 40
#: Physical addresses of the x86 PC below 4 GiB are RAM or device memory; above it
#: there is only the RAM that did not fit below.
LOW_4G = 1 << 32


def parse_size(text: str | int) -> int:
    """Bytes in a QEMU-style size ("128M", "1G", "512"); a bare number means MiB as in ``-m``."""
    if isinstance(text, int):
        return text << 20
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a memory size: {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]

_KNOWN_KEYS = {
    "name", "description", "kernel", "symbols", "initrd", "cmdline", "memory",
    "cpus", "machine", "bios", "guest", "scenario_param", "scenarios", "modules_dir",
}


@dataclass(frozen=True)
class Image:
    """One bootable guest, as described by its TOML file."""

    name: str
    path: Path                  # the TOML file itself
    kernel: Path                # what QEMU's -kernel loads
    symbols: Path               # the ELF with symbols and DWARF (may equal kernel)
    cmdline: str = ""
    initrd: Path | None = None
    memory: str = "128M"
    cpus: int = 2
    machine: str = "q35"
    bios: str | None = None     # "qboot", a path, or None for QEMU's default
    guest: str = "kswtest"      # which guest-knowledge flavour applies: kswtest | linux
    scenario_param: str = "scenario"
    description: str = ""
    scenarios: dict[str, dict] = field(default_factory=dict)
    modules_dir: Path | None = None   # kernel modules (.ko with symbols) a watch may name

    def cmdline_for(self, scenario: int | None, extra: str = "") -> str:
        """The kernel command line with ``scenario=N`` (and extra words) appended."""
        words = [self.cmdline] if self.cmdline else []
        if scenario is not None:
            words.append(f"{self.scenario_param}={scenario}")
        if extra:
            words.append(extra)
        return " ".join(words)

    @property
    def memory_bytes(self) -> int:
        """Guest RAM in bytes (checked when the description was loaded)."""
        return parse_size(self.memory)

    @property
    def phys_limit(self) -> int:
        """One past the highest guest-physical address that can hold anything.

        Below 4 GiB: RAM and device memory (MMIO, the APICs, BARs). Above: at most
        the RAM itself, whatever part of it the machine placed there.
        """
        return LOW_4G + self.memory_bytes

    def check_scenario(self, scenario: int | None) -> None:
        """Refuse a scenario the image does not have (one line naming those it has)."""
        if scenario is None:
            return
        if scenario < 0:
            raise BadInput(f"--scenario {scenario}: must not be negative")
        if self.scenarios and str(scenario) not in self.scenarios:
            have = ", ".join(sorted(self.scenarios, key=int)) if all(
                k.isdigit() for k in self.scenarios) else ", ".join(sorted(self.scenarios))
            raise BadInput(f"--scenario {scenario}: image {self.name} has no such scenario "
                           f"(it has {have})")

    def qemu_args_for(self, scenario: int | None) -> tuple[str, ...]:
        """Extra QEMU arguments a scenario needs (its table's ``qemu_args``, e.g. a device)."""
        if scenario is None:
            return ()
        args = self.scenarios.get(str(scenario), {}).get("qemu_args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise BadInput(f"image {self.name}: scenarios.{scenario}.qemu_args must be a "
                           "list of strings")
        return tuple(args)


def resolve(spec: str | Path | None) -> Path:
    """Find an image description from a name (``kswtest``), a TOML path or a directory."""
    if spec is None:
        spec = DEFAULT_IMAGE
    if not str(spec).strip():
        raise BadInput("image: an empty name (give a name such as kswtest, or a .toml path)")
    path = Path(spec)
    candidates = [path]
    if path.suffix != ".toml":
        candidates += [path / "image.toml", path.with_suffix(".toml")]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    if path.suffix != ".toml" and "/" not in str(spec):
        found = bundled.find_image(str(spec))
        if found is not None:
            return found.resolve()
        candidates += bundled.image_candidates(str(spec))
    raise BadInput(f"image not found: {spec} (looked for {', '.join(map(str, candidates))})")


def load(spec: str | Path | Image | None = None) -> Image:
    """Load and check an image description; every path it names must exist.

    An `Image` is returned as it is: one loaded already (a cluster worker's, its
    paths in the worker's cache: `kswgdb.campaign.shipping`).
    """
    if isinstance(spec, Image):
        return spec
    toml_path = resolve(spec)
    try:
        data = tomllib.loads(toml_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"image description {toml_path}: {exc}") from exc
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        names = ", ".join(sorted(unknown))
        raise BadInput(f"image description {toml_path}: unknown key(s) {names}")
    if "kernel" not in data:
        raise BadInput(f"image description {toml_path}: 'kernel' is required")
    base = toml_path.parent

    def _path(key: str) -> Path | None:
        if key not in data:
            return None
        p = (base / data[key]).resolve()
        if not p.exists():
            hint = " (build it with `make guest`)" if toml_path == IMAGES_DIR / \
                f"{bundled.TEST_KERNEL}.toml" else ""
            raise BadInput(f"image {toml_path.stem}: {key} file missing: {p}{hint}")
        return p

    kernel = _path("kernel")
    assert kernel is not None
    return Image(
        name=data.get("name", toml_path.stem),
        path=toml_path,
        kernel=kernel,
        symbols=_path("symbols") or kernel,
        initrd=_path("initrd"),
        cmdline=data.get("cmdline", ""),
        memory=_memory(toml_path, data.get("memory", "128M")),
        cpus=_cpus(toml_path, data.get("cpus", 2)),
        machine=data.get("machine", "q35"),
        bios=data.get("bios"),
        guest=data.get("guest", "kswtest"),
        scenario_param=data.get("scenario_param", "scenario"),
        description=data.get("description", ""),
        scenarios={str(k): v for k, v in data.get("scenarios", {}).items()},
        modules_dir=_path("modules_dir"),
    )


def _memory(toml_path: Path, raw: object) -> str:
    """The ``memory`` value, refused unless QEMU's ``-m`` would take it as a sane size."""
    text = str(raw)
    try:
        size = parse_size(raw if isinstance(raw, int) and not isinstance(raw, bool) else text)
    except ValueError:
        size = -1
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise BadInput(f"image {toml_path.stem}: memory = {text!r} is not a size from 1M to "
                       "1T (a number of MiB, or with K, M, G or T: 512M, 2G)")
    return text


def _cpus(toml_path: Path, raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 255:
        raise BadInput(f"image {toml_path.stem}: cpus = {raw!r} must be a whole number "
                       "from 1 to 255")
    return raw
