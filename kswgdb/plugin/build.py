"""Compile kswplugin.c into a shared object for the QEMU that will load it.

A TCG plugin must be built against the ``qemu-plugin.h`` of that QEMU (QEMU
refuses a plugin whose API version it does not support), so the object is
built on the user's machine by gcc, in QEMU 10's cache next to the header
(fetched there by `kswgdb.qemu.fetch` the first time), and rebuilt whenever
the source or the header changes. No GLib library is linked: the plugin's GLib
symbols are resolved in the QEMU process that loads it.

Usage: python3 -m kswgdb.plugin.build
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from kswgdb.qemu.fetch import FetchError, Qemu10, fetch

PLUGIN_DIR_VAR = "KSWGDB_PLUGIN_DIR"
SOURCE = Path(__file__).resolve().parent / "kswplugin.c"
CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11",
          "-shared", "-fPIC")


class PluginBuildError(FetchError):
    """gcc failed: the message carries its first error lines."""


def _stamp(qemu: Qemu10) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + qemu.header.read_bytes())
    return digest.hexdigest()[:16]


def plugin_path(qemu: Qemu10) -> Path:
    """Where the built object for this source and header lives: ``KSWGDB_PLUGIN_DIR``
    if set (a QEMU cache shared read-only), else the cache's ``plugin/``."""
    where = os.environ.get(PLUGIN_DIR_VAR)
    directory = Path(where) if where else qemu.cache / "plugin"
    return directory / f"kswplugin-{_stamp(qemu)}.so"


def build(qemu: Qemu10 | None = None) -> Path:
    """The plugin's ``.so`` for ``qemu``, compiled if it is not there yet.

    The headers are fetched into ``qemu``'s cache first if they are not there.
    """
    qemu = fetch(qemu.cache if qemu else None, plugin_headers=True)
    out = plugin_path(qemu)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    argv = ["gcc", *CFLAGS, f"-I{qemu.include}",
            *(f"-I{d}" for d in qemu.glib_includes()),
            "-o", str(tmp), str(SOURCE), "-lpthread"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line][:5]
        raise PluginBuildError(f"gcc could not build {SOURCE.name}: " + " | ".join(errors))
    tmp.replace(out)
    return out


def main() -> int:
    try:
        path = build()
    except FetchError as exc:
        print(f"kswgdb.plugin.build: {exc}", file=sys.stderr)
        return 3
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
