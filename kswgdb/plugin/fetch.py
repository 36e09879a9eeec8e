"""QEMU 10 and the headers a TCG plugin is compiled against, from Debian's packages.

The plugin engine needs a QEMU with the plugin API version 4 (register and
virtual-memory reads from callbacks: QEMU >= 9.1), and a plugin must be built
against the exact ``qemu-plugin.h`` of the QEMU that loads it. Debian ships
neither the header nor a QEMU >= 9 for bookworm in its main suite, so this
fetches, without installing anything system-wide:

* ``qemu-system-x86`` and ``qemu-system-data`` from ``bookworm-backports``
  (``apt-get download`` with a private sources list and private apt state
  directories, then ``dpkg -x``): the binary runs on bookworm's libraries;
* ``include/qemu/qemu-plugin.h`` from the same version's source tarball
  (``apt-get source --download-only``; only that member is extracted);
* GLib's development headers (``libglib2.0-dev``, which ``qemu-plugin.h``
  includes), matching the installed GLib, from the system's own suite.

The mirror is the one the system's apt already uses (read from its sources);
no host is named here. Everything lands in one cache directory, by default
``build/qemu10`` in the checkout; ``KSWGDB_QEMU10_DIR`` points at another
(for instance the project's official QEMU 10 cache), in which case it is only
read. A second run finds everything in place and does nothing.

Usage: python3 -m kswgdb.plugin.fetch [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kswgdb.errors import InfraError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / "build" / "qemu10"
SUITE = "bookworm-backports"
BINARY_PACKAGES = ("qemu-system-x86", "qemu-system-data")
GLIB_DEV = "libglib2.0-dev"
SYSTEM_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class FetchError(InfraError):
    """A download or unpack step failed; the message says which."""


@dataclass(frozen=True)
class Qemu10:
    """Where the fetched pieces are."""

    root: Path          # dpkg -x of QEMU's packages: usr/bin, usr/share/qemu
    include: Path       # holds qemu-plugin.h
    glib_root: Path     # dpkg -x of libglib2.0-dev

    @property
    def binary(self) -> Path:
        return self.root / "usr/bin/qemu-system-x86_64"

    @property
    def datadir(self) -> Path:
        """QEMU 10's own firmware and option ROMs (``-L``): not the system's 7.2 ones."""
        return self.root / "usr/share/qemu"

    @property
    def header(self) -> Path:
        return self.include / "qemu-plugin.h"

    def glib_includes(self) -> list[Path]:
        """The two directories GLib's headers need (``glib.h`` and ``glibconfig.h``)."""
        return [self.glib_root / "usr/include/glib-2.0",
                self.glib_root / "usr/lib/x86_64-linux-gnu/glib-2.0/include"]

    def ready(self) -> bool:
        return (self.binary.exists() and self.header.exists()
                and all((d / name).exists() for d, name in
                        zip(self.glib_includes(), ("glib.h", "glibconfig.h"), strict=True)))


def cache_dir() -> Path:
    """The cache in use: ``KSWGDB_QEMU10_DIR`` if set, else the checkout's own."""
    env = os.environ.get("KSWGDB_QEMU10_DIR")
    return Path(env) if env else DEFAULT_CACHE


def located(cache: Path | None = None) -> Qemu10:
    cache = cache or cache_dir()
    return Qemu10(root=cache / "root", include=cache / "include", glib_root=cache / "glib")


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, text=True, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise FetchError(f"{argv[0]} failed (status {proc.returncode}): {' '.join(argv)}: {tail}")
    return proc.stdout


def system_mirror() -> str:
    """The Debian archive URI the system's apt already uses."""
    try:
        text = SYSTEM_SOURCES.read_text()
    except OSError as exc:
        raise FetchError(f"cannot read {SYSTEM_SOURCES}: {exc}") from exc
    m = re.search(r"^URIs:\s*(\S+)", text, re.M)
    if m is None:
        raise FetchError(f"no URIs: line in {SYSTEM_SOURCES}")
    return m.group(1)


def _apt_options(cache: Path) -> list[str]:
    """Private sources and state: the system's apt lists and lock are never touched."""
    state = cache / "apt"
    return ["-o", f"Dir::State={state / 'state'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", "Dir::State::status=/var/lib/dpkg/status",
            "-o", "APT::Sandbox::User=root"]


def _private_apt(cache: Path) -> list[str]:
    state = cache / "apt"
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    mirror = system_mirror()
    (state / "sources.list").write_text(
        f"deb [signed-by={KEYRING}] {mirror} {SUITE} main\n"
        f"deb-src [signed-by={KEYRING}] {mirror} {SUITE} main\n")
    opts = _apt_options(cache)
    _run(["apt-get", *opts, "update", "-qq"])
    return opts


def _extract(debs: list[Path], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(into)])


def fetch(cache: Path | None = None) -> Qemu10:
    """Fetch what is missing into ``cache``; return where everything is."""
    cache = cache or cache_dir()
    got = located(cache)
    if got.ready():
        return got
    if os.environ.get("KSWGDB_QEMU10_DIR"):
        raise FetchError(f"KSWGDB_QEMU10_DIR={cache} lacks QEMU 10 or qemu-plugin.h")
    opts = _private_apt(cache)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not got.binary.exists():
        _run(["apt-get", *opts, "download", "-q", *(f"{p}/{SUITE}" for p in BINARY_PACKAGES)],
             cwd=debs)
        _extract(sorted(d for d in debs.glob("qemu-system-*.deb")), got.root)
    if not got.header.exists():
        _fetch_header(opts, cache, got)
    if not all(d.exists() for d in got.glib_includes()):
        # The system's own suite, so the headers match the GLib QEMU will run with.
        _run(["apt-get", "download", "-q", GLIB_DEV], cwd=debs)
        _extract(sorted(debs.glob("libglib2.0-dev_*.deb")), got.glib_root)
    if not got.ready():
        raise FetchError(f"fetch into {cache} finished but something is missing")
    return got


def _fetch_header(opts: list[str], cache: Path, got: Qemu10) -> None:
    """Only the orig tarball is needed; Debian's patch tarball may not be downloadable."""
    src = cache / "src"
    src.mkdir(parents=True, exist_ok=True)
    version = _binary_version(got)
    upstream = version.split(":", 1)[-1].split("-", 1)[0]          # 10.0.2+ds
    tarball = src / f"qemu_{upstream}.orig.tar.xz"
    if not tarball.exists():
        # apt-get source fetches the .dsc's files one by one; the orig tarball
        # arrives even when another of them fails, so its status is not trusted.
        subprocess.run(["apt-get", *opts, "source", "--download-only", f"qemu={version}"],
                       cwd=src, capture_output=True, check=False)
    if not tarball.exists():
        raise FetchError(f"apt-get source qemu={version} did not give {tarball.name}")
    member = f"qemu-{upstream.split('+', 1)[0]}/include/qemu/qemu-plugin.h"
    _run(["tar", "-xJf", str(tarball), "-C", str(src), member])
    got.include.mkdir(parents=True, exist_ok=True)
    (src / member).replace(got.header)


def _binary_version(got: Qemu10) -> str:
    """The Debian version of the unpacked QEMU, read from its package file name."""
    names = sorted((got.root.parent / "debs").glob("qemu-system-x86_*.deb"))
    if not names:
        raise FetchError("qemu-system-x86's .deb is not in the cache")
    raw = names[-1].name.split("_")[1].replace("%3a", ":")
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        got = fetch(args.cache)
    except FetchError as exc:
        print(f"kswgdb.plugin.fetch: {exc}", file=sys.stderr)
        return 3
    print(f"QEMU 10: {got.binary}\nplugin header: {got.header}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
