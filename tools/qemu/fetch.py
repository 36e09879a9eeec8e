#!/usr/bin/env python3
"""Fetch QEMU 10.0 from Debian's bookworm-backports into a cache directory (``make qemu10``).

Nothing is installed system-wide and the system's apt state is left alone: apt
runs with a private sources list, package lists, archive cache and preferences
(``-o Dir::State`` / ``Dir::Etc::SourceList`` / ``Dir::Cache`` ...), reading the
system's dpkg status only to learn which libraries this host already has.
Then:

1. the pinned version (`PINNED`) of ``qemu-system-x86`` is looked up in
   bookworm-backports; if Debian has replaced it, the newest 10.0.x there is
   taken instead and the script says so (the stamp records what was fetched);
2. apt's resolver, asked to *simulate* installing it on this host, names every
   package that would have to be installed or upgraded: QEMU itself,
   ``qemu-system-common``, ``qemu-system-data`` (firmware such as qboot.rom and
   pvh.bin), backports' seabios, and whatever libraries this host lacks;
3. those exact versions are ``apt-get download``-ed and unpacked with ``dpkg -x``
   into ``<dest>/root`` (a fresh directory each time);
4. ``<dest>/bin/qemu-system-x86_64`` is written: a wrapper that runs the unpacked
   binary with its own firmware directories first (``-L``), its own module
   directory (``QEMU_MODULE_DIR``) and, if libraries were unpacked,
   ``LD_LIBRARY_PATH``. Without ``-L`` the binary would load the *system* QEMU's
   option ROMs (pvh.bin, linuxboot_dma.bin) from /usr/share/qemu;
5. the wrapper is checked: ``-version`` says 10.0, every shared library resolves,
   and the firmware directory it searches first holds qboot.rom.

Point kswgdb at it with ``KSWGDB_QEMU=<dest>/bin/qemu-system-x86_64`` or
``kswgdb --qemu <that path>``. Every external command is an argument list.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEST = HERE / "cache" / "10.0"
PACKAGE = "qemu-system-x86"
SUITE = "bookworm-backports"
#: The version tested (docs/qemu-versions.md). Debian keeps one version per package
#: in backports; when it moves on, the newest of the same series is used instead.
PINNED = "1:10.0.2+ds-2+deb13u1~bpo12+1"
SERIES = "1:10.0."
MIRROR = os.environ.get("KSWGDB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SYSTEM_STATUS = "/var/lib/dpkg/status"
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
q = shlex.quote


class FetchError(Exception):
    """A step failed; the message says which and why."""


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True)
    if check and proc.returncode != 0:
        detail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise FetchError(f"{argv[0]} failed (status {proc.returncode}): {' '.join(argv)}"
                         + (f": {detail}" if detail else ""))
    return proc


class PrivateApt:
    """apt-get / apt-cache with every state directory under ``root`` (no system lock)."""

    def __init__(self, root: Path, status: str = SYSTEM_STATUS) -> None:
        self.root = root
        self.status = status
        for sub in ("lists/partial", "archives/partial", "etc/preferences.d",
                    "etc/sources.list.d", "etc/apt.conf.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.sources = root / "etc" / "sources.list"
        self.sources.write_text(
            f"deb [signed-by={KEYRING}] {MIRROR} bookworm main\n"
            f"deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n")

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

    def get(self, *args: str, cwd: Path | None = None) -> str:
        return _run(["apt-get", "-q", *self.options(), *args], cwd=cwd).stdout

    def cache(self, *args: str) -> str:
        return _run(["apt-cache", *self.options(), *args]).stdout


def choose_version(apt: PrivateApt) -> str:
    """The pinned version if the mirror still has it, else the newest of its series."""
    versions = []
    for line in apt.cache("madison", PACKAGE).splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and SUITE in parts[2]:
            versions.append(parts[1])
    if PINNED in versions:
        return PINNED
    series = [v for v in versions if v.startswith(SERIES)]
    if not series:
        raise FetchError(f"{SUITE} has no {PACKAGE} {SERIES[2:]}x (has: "
                         f"{', '.join(versions) or 'none'})")
    print(f"[qemu10] {PINNED} is gone from {SUITE}; using {series[0]} instead "
          f"(update PINNED in {Path(__file__).name} and docs/qemu-versions.md)", flush=True)
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


def unpack(debs: list[Path], root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)])


def lib_dirs(root: Path) -> list[Path]:
    """The unpacked directories holding shared libraries (none when the host has them all)."""
    return [root / d for d in LIB_DIRS if (root / d).is_dir() and any((root / d).glob("lib*.so*"))]


def write_wrapper(dest: Path, root: Path) -> Path:
    """``dest/bin/qemu-system-x86_64``: the unpacked QEMU with its own data and libraries."""
    libs = lib_dirs(root)
    data_dirs = [root / "usr/share/qemu", root / "usr/share/seabios", root / "usr/lib/ipxe/qemu"]
    lines = ["#!/bin/sh",
             "# Written by tools/qemu/fetch.py: QEMU from Debian's packages, unpacked here.",
             f"export QEMU_MODULE_DIR={q(str(root / 'usr/lib/x86_64-linux-gnu/qemu'))}"]
    if libs:
        joined = ":".join(str(d) for d in libs)
        lines.append(f"export LD_LIBRARY_PATH={q(joined)}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")
    firmware = " ".join(f"-L {q(str(d))}" for d in data_dirs if d.is_dir())
    lines.append(f"exec {q(str(root / 'usr/bin/qemu-system-x86_64'))} {firmware} \"$@\"")
    wrapper = dest / "bin" / "qemu-system-x86_64"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    tmp = wrapper.with_suffix(".part")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o755)
    tmp.replace(wrapper)
    return wrapper


def check(wrapper: Path, root: Path, version: str) -> str:
    """The wrapper runs, is the version fetched, finds its libraries and its firmware."""
    upstream = version.split(":", 1)[-1].split("+", 1)[0]           # 10.0.2
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


def fetch(dest: Path, dpkg_status: str) -> tuple[Path, str]:
    """Every step of the module docstring; returns the wrapper and its ``-version`` line."""
    apt = PrivateApt(dest / "apt", dpkg_status)
    print(f"[qemu10] apt-get update (private lists, {MIRROR} bookworm + {SUITE})", flush=True)
    apt.get("update")
    version = choose_version(apt)
    wanted = packages_to_fetch(apt, version)
    debs_dir = dest / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    for old in debs_dir.glob("*.deb"):
        old.unlink()
    print(f"[qemu10] apt-get download {len(wanted)} packages: {', '.join(sorted(wanted))}",
          flush=True)
    apt.get("download", *(f"{n}={v}" for n, v in sorted(wanted.items())), cwd=debs_dir)
    debs = sorted(debs_dir.glob("*.deb"))
    if len(debs) != len(wanted):
        raise FetchError(f"expected {len(wanted)} .deb files, got {len(debs)}")
    root = dest / "root"
    unpack(debs, root)
    wrapper = write_wrapper(dest, root)
    banner = check(wrapper, root, version)
    (dest / "VERSION").write_text(f"{version}\n")
    return wrapper, banner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dest", type=Path, default=DEST,
                        help=f"cache directory (default {DEST.relative_to(HERE.parent.parent)})")
    parser.add_argument("--dpkg-status", default=SYSTEM_STATUS,
                        help="dpkg status file saying what the host has (default: the system's; "
                             "a smaller one shows what a bare host would need)")
    args = parser.parse_args()
    try:
        wrapper, banner = fetch(args.dest.resolve(), args.dpkg_status)
    except FetchError as exc:
        sys.exit(f"[qemu10] error: {exc}")
    print(f"[qemu10] {wrapper}: {banner}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
