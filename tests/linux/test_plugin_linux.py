"""The TCG plugin engine on the Debian kernel, KASLR on: a module bug caught, a hot path quiet.

`kswgdb --qemu QEMU10 run --engine plugin`: the plugin finds the kernel's slide
itself (its first store into the kernel map, `kswgdb.plugin.engine`); every
call of ``do_sys_openat2`` (each ``open``) is armed at the fo kswgdb suggests
and released at its release point inside QEMU 10 while busybox runs a few
hundred opens (nothing corrupts that stack: any hit there is a false
positive); then LKDTM's CORRUPT_STACK runs, watched in the module, which the
plugin arms when lkdtm.ko loads. One boot for both.
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


def test_plugin_catches_lkdtm_in_its_module_and_stays_quiet_on_a_hot_path() -> None:
    """One boot, KASLR on, two watches: a module watch (armed when lkdtm loads,
    through the plugin's ``do_init_module`` hook) catches CORRUPT_STACK's memset,
    while the hot-path watch beside it reports nothing."""
    if not (IMAGES_DIR / "linux" / "out" / ".stamp").is_file():
        pytest.fail("the Debian image is not built: run `make image-linux` (make test-linux does)")
    image = load_image(IMAGES_DIR / "linux.toml")
    try:
        qemu = fetch()
        build(qemu)
    except FetchError as exc:
        pytest.fail(f"QEMU 10 / plugin header unavailable: {exc}")
    hot = build_listing(Program.load(image.symbols), "do_sys_openat2").suggested_config
    command = f"{WORKLOAD}; echo CORRUPT_STACK > /sys/kernel/debug/provoke-crash/DIRECT"
    with binary.using(str(qemu.binary)):
        session = WatchSession(RunOptions(
            image=image.path, watches=[hot, "fn=lkdtm_CORRUPT_STACK fo=0x1e"], timeout=300,
            engine="plugin", cmdline=f"-- {command}"))
        report = session.run()
    assert session.plan is not None and session.plan.module_watches
    hot_row, module_row = report.summary
    print(f"\nplugin: {report.seconds:.1f} s, "
          f"{report.slide.describe() if report.slide else 'no slide'}: {hot_row}")
    assert report.fault is None, (report.fault, report.console_log[-5:])
    assert report.slide is not None and report.slide.found_by == FOUND_BY
    assert report.slide.virtual % (2 << 20) == 0 and report.slide.physical is not None
    assert report.guest_exit is not None and report.guest_exit.kind == "panic"
    assert "stack-protector" in (report.guest_exit.panic or "")
    assert hot_row["armed"] >= 150 and hot_row["not_armed"] == 0 and hot_row["hits"] == 0
    assert hot_row["returns"] + hot_row["stale"] == hot_row["armed"]
    assert module_row["armed"] == 1 and module_row["hits"] >= 1
    assert report.hits and all(h.watched_func == "lkdtm_CORRUPT_STACK" for h in report.hits)
    assert report.hits[0].writer_task.name.startswith("sh")
