"""The TCG plugin engine on the Debian kernel, KASLR on: a hot path watched, no false hit.

`kswgdb --qemu QEMU10 run --engine plugin`: the plugin finds the kernel's slide
itself (its first store into the kernel map, `kswgdb.plugin.engine`), then
every call of ``do_sys_openat2`` (each ``open``) is armed at the fo kswgdb
suggests and released at its release point inside QEMU 10 while busybox runs
a few hundred opens. Nothing corrupts the stack, so any hit is a false positive.
"""

from __future__ import annotations

import pytest

from kswgdb.image import IMAGES_DIR
from kswgdb.image import load as load_image
from kswgdb.plugin.build import build
from kswgdb.plugin.engine import FOUND_BY
from kswgdb.qemu import binary
from kswgdb.qemu.fetch import FetchError, fetch
from kswgdb.run.oneshot import WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.listing import build_listing
from kswgdb.symbols.program import Program

WORKLOAD = ("i=0; while [ $i -lt 40 ]; do cat /proc/self/stat >/dev/null; ls / >/dev/null; "
            "uname -a >/dev/null; i=$((i+1)); done")


def test_plugin_watches_a_hot_path_under_kaslr_with_no_false_positive() -> None:
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        pytest.fail("the Debian image is not built: run `make image-linux` (make test-linux does)")
    try:
        qemu = fetch()
        build(qemu)
    except FetchError as exc:
        pytest.fail(f"QEMU 10 / plugin header unavailable: {exc}")
    image = load_image(IMAGES_DIR / "linux.toml")
    watch = build_listing(Program.load(image.symbols), "do_sys_openat2").suggested_config
    assert watch
    with binary.using(str(qemu.binary)):
        session = WatchSession(RunOptions(image=image.path, watches=[watch], timeout=300,
                                          engine="plugin", cmdline=f"-- {WORKLOAD}"))
        report = session.run()
    row = report.summary[0]
    print(f"\nplugin, do_sys_openat2: {watch}: {report.seconds:.1f} s, "
          f"{report.slide.describe() if report.slide else 'no slide'}: {row}")
    assert report.fault is None, (report.fault, report.console_log[-5:])
    assert report.slide is not None and report.slide.found_by == FOUND_BY
    assert report.slide.virtual % (2 << 20) == 0 and report.slide.physical is not None
    assert "KSWGDB-INIT done status=0" in "\n".join(report.console_log)
    assert row["armed"] >= 150 and row["not_armed"] == 0
    assert row["hits"] == 0 and report.hits == []
    assert row["returns"] + row["stale"] == row["armed"]
