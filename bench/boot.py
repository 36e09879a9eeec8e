"""Boot-time benchmark: launch -> first console line ``KSWTEST boot``, per machine type.

Every integration test and every kswgdb run boots a guest, so the machine type
and firmware are chosen by measurement. Configurations run interleaved (round
robin), not one block after another, so a noisy neighbour on this shared machine
hurts all of them alike. The clock starts before QEMU is spawned and stops when
the console line arrives: it includes process start, firmware and kernel boot,
exactly what a user waits for.

Usage: python bench/boot.py [--runs 10] [--image images/kswtest.toml] [--accel tcg]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kswgdb.image import Image  # noqa: E402
from kswgdb.image import load as load_image  # noqa: E402
from kswgdb.qemu.errors import MachineError  # noqa: E402
from kswgdb.qemu.machine import Machine  # noqa: E402

BOOT_LINE = r"^KSWTEST boot"


@dataclass(frozen=True)
class Config:
    """One machine type + firmware combination."""

    label: str
    machine: str
    bios: str | None


CONFIGS = [
    Config("pc+qboot", "pc", "qboot"),
    Config("q35+SeaBIOS", "q35", None),
    Config("microvm", "microvm", None),       # its default firmware is qboot-based
    Config("q35+qboot", "q35", "qboot"),
    Config("pc+SeaBIOS", "pc", None),
]


def fallback_image() -> Image:
    """The bare kernel, for when images/kswtest.toml has not been written yet."""
    elf = ROOT / "images" / "kswtest.elf"
    return Image(name="kswtest", path=elf, kernel=elf, symbols=elf, memory="128M", cpus=2)


def boot_once(image: Image, cfg: Config, accel: str) -> float:
    """Seconds from launch to the boot line (QEMU is closed before returning)."""
    t0 = time.perf_counter()
    with Machine(image, accel=accel, paused=False, machine=cfg.machine, bios=cfg.bios) as m:
        m.wait_for(BOOT_LINE, 30)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--image", default=None, help="image name or TOML (default kswtest)")
    ap.add_argument("--accel", default="tcg")
    args = ap.parse_args()

    try:
        image = load_image(args.image)
    except Exception:
        if args.image:
            raise
        image = fallback_image()
    print(f"image {image.kernel} (default machine in its TOML: {image.machine}, "
          f"bios {image.bios}); accel {args.accel}; {args.runs} runs each, interleaved")

    times: dict[str, list[float]] = {c.label: [] for c in CONFIGS}
    failed: dict[str, str] = {}
    for _ in range(args.runs):
        for cfg in CONFIGS:
            if cfg.label in failed:
                continue
            try:
                times[cfg.label].append(boot_once(image, cfg, args.accel))
            except MachineError as exc:
                failed[cfg.label] = str(exc).splitlines()[0]

    medians = {k: statistics.median(v) for k, v in times.items() if v and k not in failed}
    if not medians:
        print("no configuration booted")
        return 1
    best = min(medians.values())
    print(f"{'config':<14} {'median ms':>9} {'min ms':>7} {'max ms':>7} {'x best':>7}")
    for cfg in CONFIGS:
        if cfg.label in failed:
            print(f"{cfg.label:<14} failed: {failed[cfg.label]}")
            continue
        v = times[cfg.label]
        print(f"{cfg.label:<14} {medians[cfg.label] * 1e3:9.1f} {min(v) * 1e3:7.1f} "
              f"{max(v) * 1e3:7.1f} {medians[cfg.label] / best:7.2f}")
    chosen = next((c.label for c in CONFIGS
                   if c.machine == image.machine.split(",")[0] and c.bios == image.bios), None)
    fastest = min(medians, key=lambda k: medians[k])
    print(f"fastest: {fastest}; image default: {chosen or image.machine}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
