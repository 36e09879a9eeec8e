"""QEMU 10.0 from Debian's bookworm-backports, unpacked into one cache directory.

Debian 12 ships QEMU 7.2; kswgdb is also tested on 10.0 (``make test``), and the
TCG plugin engine needs it (plugin API 4: register and memory reads from
callbacks, QEMU >= 9.1) together with the exact ``qemu-plugin.h`` of that
QEMU and GLib's headers. This module is the one place that fetches them;
nothing is installed system-wide and the system's apt state is left alone:
apt runs with private package lists, archive cache and preferences
(``-o Dir::State`` / ``Dir::Cache`` ...), the system's own sources plus
bookworm-backports, and reads the system's dpkg status only to learn what
this host already has.

QEMU (`fetch`, ``make qemu10``):

1. the pinned version (`PINNED`) of ``qemu-system-x86`` is looked up in
   bookworm-backports; if Debian has replaced it, the newest 10.0.x there is
   taken instead and the fetch says so (the stamp records what was fetched);
2. apt's resolver, asked to *simulate* installing it on this host, names every
   package that would have to be installed or upgraded: QEMU itself,
   ``qemu-system-common``, ``qemu-system-data`` (firmware such as qboot.rom and
   pvh.bin), backports' seabios, and whatever libraries this host lacks;
3. those exact versions are ``apt-get download``-ed and unpacked with
   ``dpkg-deb -x`` into ``<cache>/root`` (a fresh directory each time);
4. ``<cache>/bin/qemu-system-x86_64`` is written: a wrapper that runs the
   unpacked binary with its own firmware directories first (``-L``), its own
   module directory (``QEMU_MODULE_DIR``) and, if libraries were unpacked,
   ``LD_LIBRARY_PATH``. Without ``-L`` the binary would load the *system*
   QEMU's option ROMs (pvh.bin, linuxboot_dma.bin) from /usr/share/qemu;
5. the wrapper is checked (``-version`` says the version fetched, every shared
   library resolves, its first firmware directory holds qboot.rom) and only
   then is ``<cache>/.stamp`` written: a second run finds it and does nothing.

The plugin's headers (`fetch` with ``plugin_headers=True``, done when the
plugin is built; ``--plugin-headers`` here) go into the same cache:
``include/qemu-plugin.h`` from the same version's source tarball (``apt-get
source --download-only``, only that member extracted) and ``glib/`` from
``libglib2.0-dev`` at the version of the host's installed GLib, which is the
one QEMU runs with.

The cache is ``KSWGDB_QEMU10_DIR`` if set, else ``build/qemu10`` in a checkout,
else ``$XDG_CACHE_HOME/kswgdb/qemu10``. Point kswgdb at the QEMU with
``KSWGDB_QEMU=<cache>/bin/qemu-system-x86_64`` (or ``--qemu``). Every external
command is an argument list.

Usage: python3 -m kswgdb.qemu.fetch [--cache DIR] [--plugin-headers]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kswgdb.errors import InfraError

PACKAGE = "qemu-system-x86"
SUITE = "bookworm-backports"
#: The version tested (docs/qemu-versions.md). Debian keeps one version per package
#: in backports; when it moves on, the newest of the same series is used instead.
PINNED = "1:10.0.2+ds-2+deb13u1~bpo12+1"
SERIES = "1:10.0."
GLIB_DEV = "libglib2.0-dev"
GLIB_RUNTIME = "libglib2.0-0"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SYSTEM_STATUS = "/var/lib/dpkg/status"
SYSTEM_SOURCE_PARTS = Path("/etc/apt/sources.list.d")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
#: First line of the stamp; a cache laid out by another revision of this module is redone.
STAMP_FORMAT = "kswgdb-qemu10 1"
CHECKOUT = Path(__file__).resolve().parents[2]
q = shlex.quote


class FetchError(InfraError):
    """A download, unpack or check step failed; the message says which and why."""


@dataclass(frozen=True)
class Qemu10:
    """Where the fetched pieces of one cache directory are."""

    cache: Path

    @property
    def binary(self) -> Path:
        """The wrapper: QEMU 10 with its own firmware, modules and libraries."""
        return self.cache / "bin" / "qemu-system-x86_64"

    @property
    def root(self) -> Path:
        """``dpkg-deb -x`` of QEMU's packages (usr/bin, usr/share/qemu, libraries)."""
        return self.cache / "root"

    @property
    def stamp(self) -> Path:
        return self.cache / ".stamp"

    @property
    def include(self) -> Path:
        """Holds qemu-plugin.h."""
        return self.cache / "include"

    @property
    def header(self) -> Path:
        return self.include / "qemu-plugin.h"

    @property
    def glib_root(self) -> Path:
        """``dpkg-deb -x`` of libglib2.0-dev."""
        return self.cache / "glib"

    def glib_includes(self) -> list[Path]:
        """The two directories GLib's headers need (``glib.h`` and ``glibconfig.h``)."""
        return [self.glib_root / "usr/include/glib-2.0",
                self.glib_root / "usr/lib/x86_64-linux-gnu/glib-2.0/include"]

    def version(self) -> str | None:
        """The Debian version fetched, from the stamp; None if the fetch is not complete."""
        try:
            lines = self.stamp.read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 2 or lines[0] != STAMP_FORMAT or not self.binary.exists():
            return None
        return lines[1]

    def ready(self) -> bool:
        """QEMU fetched and checked."""
        return self.version() is not None

    def headers_ready(self) -> bool:
        """The plugin can be compiled: qemu-plugin.h and GLib's headers are here."""
        return (self.header.exists()
                and all((d / name).exists() for d, name in
                        zip(self.glib_includes(), ("glib.h", "glibconfig.h"), strict=True)))


def default_cache() -> Path:
    """``build/qemu10`` in a checkout; the user's cache directory for an installed kswgdb."""
    if (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / "build" / "qemu10"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kswgdb" / "qemu10"


def cache_dir() -> Path:
    """The cache in use: ``KSWGDB_QEMU10_DIR`` if set, else `default_cache`."""
    env = os.environ.get("KSWGDB_QEMU10_DIR")
    return Path(env).resolve() if env else default_cache()


def located(cache: Path | None = None) -> Qemu10:
    """The pieces of ``cache`` (default `cache_dir`), as absolute paths (apt needs them)."""
    return Qemu10((cache or cache_dir()).resolve())


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        detail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise FetchError(f"{argv[0]} failed (status {proc.returncode}): {' '.join(argv)}"
                         + (f": {detail}" if detail else ""))
    return proc


def _say(text: str) -> None:
    print(f"[qemu10] {text}", file=sys.stderr, flush=True)


def debian_sources(parts: Path = SYSTEM_SOURCE_PARTS) -> list[str]:
    """The system's Debian ``deb`` entries (deb822 ``*.sources``) as one-line sources.

    Only Debian's own archives are taken (signed by the Debian keyring), so a
    third-party repository needing its own transport or credentials is never asked.
    """
    lines = []
    for source in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", source.read_text(errors="replace")):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
            if ("deb" in fields.get("Types", "").split() and fields.get("Signed-By") == KEYRING
                    and fields.get("Enabled", "yes") != "no"):
                lines += [f"deb [signed-by={KEYRING}] {uri} {suite} "     # one suite a line
                          f"{fields.get('Components', 'main')}"
                          for uri in fields.get("URIs", "").split()
                          for suite in fields.get("Suites", "").split()]
    return lines


def mirror_of(entries: list[str]) -> str:
    """The Debian archive to take backports from (``KSWGDB_DEBIAN_MIRROR`` overrides it)."""
    env = os.environ.get("KSWGDB_DEBIAN_MIRROR")
    if env:
        return env
    uris = [e.split()[2] for e in entries]
    return next((u for u in uris if u.rstrip("/").endswith("/debian")), DEFAULT_MIRROR)


class PrivateApt:
    """apt-get / apt-cache with every state directory under ``root`` (no system lock).

    Sources: the system's Debian ones (so libraries and GLib come from the suites
    the host's come from) plus bookworm-backports, binary and source.
    """

    def __init__(self, root: Path, status: str = SYSTEM_STATUS,
                 parts: Path = SYSTEM_SOURCE_PARTS) -> None:
        self.root = root
        self.status = status
        self._updated = False
        for sub in ("lists/partial", "archives/partial", "etc/preferences.d",
                    "etc/sources.list.d", "etc/apt.conf.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        system = [] if os.environ.get("KSWGDB_DEBIAN_MIRROR") else debian_sources(parts)
        mirror = mirror_of(system)
        base = system or [f"deb [signed-by={KEYRING}] {mirror} {suite} main"
                          for suite in ("bookworm", "bookworm-updates")]
        self.sources = root / "etc" / "sources.list"
        self.sources.write_text("\n".join([
            *base,
            f"deb [signed-by={KEYRING}] {mirror} {SUITE} main",
            f"deb-src [signed-by={KEYRING}] {mirror} {SUITE} main"]) + "\n")

    def options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::State={r}",
            "-o", f"Dir::State::Lists={r / 'lists'}",
            "-o", f"Dir::State::status={self.status}",   # read only: what the host has
            "-o", f"Dir::Cache={r}",
            "-o", f"Dir::Cache::Archives={r / 'archives'}",
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", f"Dir::Etc::SourceParts={r / 'etc' / 'sources.list.d'}",
            "-o", f"Dir::Etc::Preferences={r / 'etc' / 'preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={r / 'etc' / 'preferences.d'}",
            "-o", f"Dir::Etc::Parts={r / 'etc' / 'apt.conf.d'}",
            "-o", "Debug::NoLocking=1",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Sandbox::User=root",
            "-o", "APT::Install-Recommends=0",
        ]

    def get(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        return _run(["apt-get", "-q", *self.options(), *args], cwd=cwd, check=check).stdout

    def cache(self, *args: str) -> str:
        return _run(["apt-cache", *self.options(), *args]).stdout

    def updated(self) -> PrivateApt:
        """This apt, its private package lists downloaded (once per instance)."""
        if not self._updated:
            _say(f"apt-get update (private lists: the system's Debian sources + {SUITE})")
            self.get("update")
            self._updated = True
        return self


def choose_version(apt: PrivateApt) -> str:
    """The pinned version if the mirror still has it, else the newest of its series."""
    versions = []
    for line in apt.cache("madison", PACKAGE).splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and SUITE in parts[2] and "Sources" not in parts[2]:
            versions.append(parts[1])
    if PINNED in versions:
        return PINNED
    series = [v for v in versions if v.startswith(SERIES)]
    if not series:
        raise FetchError(f"{SUITE} has no {PACKAGE} {SERIES[2:]}x (has: "
                         f"{', '.join(versions) or 'none'})")
    _say(f"{PINNED} is gone from {SUITE}; using {series[0]} instead "
         f"(update PINNED in {Path(__file__).name} and docs/qemu-versions.md)")
    return series[0]


_INST = re.compile(r"^Inst (\S+) (?:\[[^]]*\] )?\((\S+) ")


def packages_to_fetch(apt: PrivateApt, version: str) -> dict[str, str]:
    """Package -> version that installing QEMU ``version`` here would install or upgrade.

    ``pkg/suite`` (not ``pkg=version``) is what makes apt take the dependencies
    that need it (qemu-system-common, seabios) from backports too; backports holds
    one version per package, which `choose_version` checked is ``version``.
    """
    out = apt.get("-s", "install", f"{PACKAGE}/{SUITE}")
    wanted = {m.group(1): m.group(2) for m in map(_INST.match, out.splitlines()) if m}
    if wanted.get(PACKAGE) != version:
        raise FetchError(f"apt's plan does not install {PACKAGE}={version}:\n{out[-800:]}")
    return wanted


def _download(apt: PrivateApt, into: Path, wanted: dict[str, str]) -> list[Path]:
    """``apt-get download`` of exact versions into a directory emptied first."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    apt.get("download", *(f"{n}={v}" for n, v in sorted(wanted.items())), cwd=into)
    debs = sorted(into.glob("*.deb"))
    if len(debs) != len(wanted):
        raise FetchError(f"expected {len(wanted)} .deb files in {into}, got {len(debs)}")
    return debs


def unpack(debs: list[Path], root: Path) -> None:
    """``dpkg-deb -x`` each package into a fresh ``root``."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)])


def lib_dirs(root: Path) -> list[Path]:
    """The unpacked directories holding shared libraries (none when the host has them all)."""
    return [root / d for d in LIB_DIRS if (root / d).is_dir() and any((root / d).glob("lib*.so*"))]


def write_wrapper(wrapper: Path, root: Path) -> Path:
    """The script that runs the unpacked QEMU with its own data and libraries."""
    libs = lib_dirs(root)
    data_dirs = [root / "usr/share/qemu", root / "usr/share/seabios", root / "usr/lib/ipxe/qemu"]
    lines = ["#!/bin/sh",
             "# Written by kswgdb.qemu.fetch: QEMU from Debian's packages, unpacked here.",
             f"export QEMU_MODULE_DIR={q(str(root / 'usr/lib/x86_64-linux-gnu/qemu'))}"]
    if libs:
        joined = ":".join(str(d) for d in libs)
        lines.append(f"export LD_LIBRARY_PATH={q(joined)}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")
    firmware = " ".join(f"-L {q(str(d))}" for d in data_dirs if d.is_dir())
    lines.append(f"exec {q(str(root / 'usr/bin/qemu-system-x86_64'))} {firmware} \"$@\"")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    tmp = wrapper.with_suffix(".part")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o755)
    tmp.replace(wrapper)
    return wrapper


def upstream_of(version: str) -> str:
    """``1:10.0.2+ds-2+deb13u1~bpo12+1`` -> ``10.0.2+ds`` (the orig tarball's version)."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def check(wrapper: Path, root: Path, version: str) -> str:
    """The wrapper runs, is the version fetched, finds its libraries and its firmware."""
    upstream = upstream_of(version).split("+", 1)[0]                 # 10.0.2
    out = _run([str(wrapper), "-version"]).stdout
    if f"version {upstream}" not in out:
        raise FetchError(f"{wrapper} -version does not say {upstream}: {out.strip()}")
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(d) for d in lib_dirs(root)))
    missing = [line.strip() for line in
               _run(["ldd", str(root / "usr/bin/qemu-system-x86_64")], env=env).stdout.splitlines()
               if "not found" in line]
    if missing:
        raise FetchError("libraries not found: " + "; ".join(missing))
    dirs = _run([str(wrapper), "-L", "help"]).stdout.split()
    if not dirs or not (Path(dirs[0]) / "qboot.rom").is_file():
        raise FetchError(f"the wrapper's first firmware directory has no qboot.rom: {dirs}")
    return out.splitlines()[0]


def fetch_qemu(got: Qemu10, apt: PrivateApt) -> str:
    """Steps 1-5 of the module docstring; returns the wrapper's ``-version`` line."""
    got.stamp.unlink(missing_ok=True)
    version = choose_version(apt.updated())
    wanted = packages_to_fetch(apt, version)
    _say(f"apt-get download {len(wanted)} packages: {', '.join(sorted(wanted))}")
    unpack(_download(apt, got.cache / "debs", wanted), got.root)
    write_wrapper(got.binary, got.root)
    banner = check(got.binary, got.root, version)
    got.stamp.write_text(f"{STAMP_FORMAT}\n{version}\n")
    return banner


def fetch_plugin_headers(got: Qemu10, apt: PrivateApt, version: str) -> None:
    """qemu-plugin.h of QEMU ``version`` and GLib's headers at the host's GLib version."""
    if not got.header.exists():
        _fetch_plugin_header(got, apt.updated(), version)
    if not got.headers_ready():
        glib = _run(["dpkg-query", "-W", "-f=${Version}", GLIB_RUNTIME],
                    check=False).stdout.strip()
        if not glib:
            raise FetchError(f"{GLIB_RUNTIME} is not installed: QEMU could not run here")
        unpack(_download(apt.updated(), got.cache / "glib-debs",
                         {GLIB_DEV: glib_dev_version(apt, glib)}), got.glib_root)


def glib_dev_version(apt: PrivateApt, installed: str) -> str:
    """``installed`` if the archive still has it, else the newest it has of the same GLib.

    The archive keeps only the latest point release of a suite, so a host not
    upgraded since may run a GLib whose -dev package is gone; the headers of the
    same upstream version are what the plugin needs.
    """
    rows = ([p.strip() for p in line.split("|")]
            for line in apt.cache("madison", GLIB_DEV).splitlines())
    have = [r[1] for r in rows if len(r) >= 3 and "Sources" not in r[2]]
    if installed in have:
        return installed
    same = [v for v in have if v.split("-", 1)[0] == installed.split("-", 1)[0]]
    if not same:
        raise FetchError(f"no {GLIB_DEV} for GLib {installed} (the archive has: "
                         f"{', '.join(have) or 'none'})")
    _say(f"{GLIB_DEV} {installed} is gone from the archive; using {same[0]} (same GLib)")
    return same[0]


def _fetch_plugin_header(got: Qemu10, apt: PrivateApt, version: str) -> None:
    """Only the orig tarball is needed; Debian's patch tarball may not be downloadable."""
    src = got.cache / "src"
    src.mkdir(parents=True, exist_ok=True)
    upstream = upstream_of(version)                                  # 10.0.2+ds
    tarball = src / f"qemu_{upstream}.orig.tar.xz"
    if not tarball.exists():
        # apt-get source fetches the .dsc's files one by one; the orig tarball
        # arrives even when another of them fails, so its status is not trusted.
        _say(f"apt-get source --download-only qemu={version} (for qemu-plugin.h)")
        apt.get("source", "--download-only", f"qemu={version}", cwd=src, check=False)
    if not tarball.exists():
        raise FetchError(f"apt-get source qemu={version} did not give {tarball.name}")
    member = f"qemu-{upstream.split('+', 1)[0]}/include/qemu/qemu-plugin.h"
    _run(["tar", "-xJf", str(tarball), "-C", str(src), member])
    got.include.mkdir(parents=True, exist_ok=True)
    (src / member).replace(got.header)
    shutil.rmtree(src)                     # the tarball is large; the header is all we keep


def fetch(cache: Path | None = None, *, plugin_headers: bool = False,
          dpkg_status: str = SYSTEM_STATUS) -> Qemu10:
    """Fetch what is missing into ``cache``; return where everything is.

    A complete cache is only read (no network); ``plugin_headers`` also
    fetches what compiling the TCG plugin needs.
    """
    got = located(cache)
    if got.ready() and (got.headers_ready() or not plugin_headers):
        return got
    apt = PrivateApt(got.cache / "apt", dpkg_status)
    if not got.ready():
        _say(f"{got.binary}: {fetch_qemu(got, apt)}")
    if plugin_headers and not got.headers_ready():
        version = got.version()
        assert version is not None              # ready() above
        fetch_plugin_headers(got, apt, version)
        if not got.headers_ready():
            raise FetchError(f"fetch into {got.cache} finished but a header is missing")
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory (default: KSWGDB_QEMU10_DIR, else build/qemu10)")
    parser.add_argument("--plugin-headers", action="store_true",
                        help="also fetch qemu-plugin.h and GLib's headers (the TCG plugin)")
    parser.add_argument("--dpkg-status", default=SYSTEM_STATUS,
                        help="dpkg status file saying what the host has (default: the system's; "
                             "a smaller one shows what a bare host would need)")
    args = parser.parse_args(argv)
    try:
        got = fetch(args.cache.resolve() if args.cache else None,
                    plugin_headers=args.plugin_headers, dpkg_status=args.dpkg_status)
    except FetchError as exc:
        print(f"[qemu10] error: {exc}", file=sys.stderr)
        return 3
    print(f"QEMU {got.version()}: {got.binary}")
    if got.headers_ready():
        print(f"plugin header: {got.header}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
