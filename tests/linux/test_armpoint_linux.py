"""Watches armed where `kswgdb disasm` says, on Debian's kernel, over one workload.

One boot (KASLR on, the image's default) carries every watch, each at the point
``disasm`` suggests for its own mode (`build_listing`, the code behind ``kswgdb
disasm F [--var NAME | --so OFF --wl LEN]``, never a typed offset):

- ``do_filp_open`` (every open): canary mode in a function that realigns its
  stack (``and rsp, -16``); the slot is a fixed offset from the live SP at the
  probe, RBP gives the CFA for frame matching and the release point;
- ``num_to_str`` (seq_put_decimal_ull: every figure of /proc/meminfo): ``var=`` on its
  ``char tmp[24]``, cleared by three stores, then written by a store or by a call
  to ``put_dec`` given its address;
- ``proc_readfd_common`` (``ls /proc/self/fd``): ``so``/``wl`` on its ``char
  name[11]``, which ``snprintf`` and ``proc_fill_cache`` are given, in a loop;
- ``vfs_rename`` (``mv``): canary mode in a function that realigns its stack
  through a DRAP register (``lea r10, [rsp+8]; and rsp, -16; push [r10-8]``):
  keyed by the aligned frame (RBP + 16), released at ``lea rsp, [rbp-0x30]``;
- ``pci_setup_device`` (every PCI device, at boot): canary mode in a function whose
  only epilogue is in its cold part ``pci_setup_device.cold``: released there.

Each must arm on real calls and report nothing: any hit is a false positive
(the workload corrupts nothing).
"""

from __future__ import annotations

import time

import pytest

from kswgdb.run.oneshot import WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.symbols.listing import WatchRequest, build_listing
from kswgdb.symbols.program import Program
from tests.linux import test_lkdtm as lkdtm

image = lkdtm.image         # the same fixture: the built Debian image

#: (function, what disasm is asked to place, minimum armed calls over the workload)
WATCHED = (
    ("do_filp_open", WatchRequest(), 20),
    ("num_to_str", WatchRequest(var="tmp"), 20),
    ("proc_readfd_common", WatchRequest(so=0x18, wl=8), 6),
    ("vfs_rename", WatchRequest(), 10),
    ("pci_setup_device", WatchRequest(), 3),
)
WORKLOAD = ("cat /proc/version /proc/meminfo > /dev/null; ls /bin > /dev/null; "
            "for i in 1 2 3; do ls /proc/self/fd > /dev/null; done; "
            "mkdir -p /tmp; echo x > /tmp/a; "
            "for i in 1 2 3 4 5; do mv /tmp/a /tmp/b; mv /tmp/b /tmp/a; done")


def _suggested(kernel: Program, func: str, request: WatchRequest) -> str:
    listing = build_listing(kernel, func, request)
    assert listing.suggested_config, f"disasm suggests no watch for {func}: {listing.note}"
    assert "not safe" not in listing.note, listing.note
    return listing.suggested_config


@pytest.fixture(scope="module")
def kernel(image) -> Program:
    return Program.load(image.symbols)


@pytest.fixture(scope="module")
def workload_run(image, kernel, tmp_path_factory):
    """One boot, every watch of WATCHED at its suggested point, the workload run."""
    watches = [_suggested(kernel, func, request) for func, request, _ in WATCHED]
    log = tmp_path_factory.mktemp("armpoint") / "events.jsonl"
    session = WatchSession(RunOptions(image=image.path, watches=watches, accel="tcg",
                                      timeout=300.0, cmdline=f"-- {WORKLOAD}", log_path=log))
    t0 = time.monotonic()
    report = session.run()
    seconds = time.monotonic() - t0
    print(f"\n{len(watches)} watches over the workload: {seconds:.1f} s")
    for w, row in zip(watches, report.summary, strict=True):
        print(f"  {w}: calls {row['calls']} armed {row['armed']} returns {row['returns']} "
              f"stale {row['stale']} hits {row['hits']} not armed {row['not_armed']}")
    return watches, report


def test_the_guest_ran_the_workload_under_kaslr(workload_run) -> None:
    _watches, report = workload_run
    assert report.fault is None, report.fault
    assert report.guest_exit is not None and report.guest_exit.kind == "shutdown"
    assert "KSWGDB-INIT done status=0" in "\n".join(report.console_log)
    # KASLR on (the image's default): the slide was found at the kernel's entry.
    assert report.slide is not None and report.slide.found_by == "first kernel-map write"
    assert report.slide.virtual % 0x20_0000 == 0


def test_do_filp_open_and_vfs_rename_realign_their_stack(kernel) -> None:
    for func in ("do_filp_open", "vfs_rename"):
        code = kernel.analyze(func).code
        assert any(i.mnemonic == "and" and i.op_str.startswith("rsp") for i in code.instructions)
    assert not kernel.analyze("do_filp_open").frame.drap_anchored       # RBP gives the CFA
    assert kernel.analyze("vfs_rename").frame.drap_anchored


def test_pci_setup_device_returns_only_from_its_cold_part(kernel) -> None:
    analysis = kernel.analyze("pci_setup_device")
    (cold,) = analysis.code.parts
    assert cold.name == "pci_setup_device.cold"
    releases = analysis.writers.releases(analysis.canary.cfa_offset, 8)
    assert releases and all(addr in cold for addr, _, _ in releases)


def test_the_watched_locals_are_arrays(kernel) -> None:
    for func, name, size in (("num_to_str", "tmp", 24), ("proc_readfd_common", "name", 11)):
        var = next(v for v in build_listing(kernel, func).locals if v.name == name)
        assert var.total_size == size and var.size == 1, var
    # so=0x18 wl=8 is inside name[] (SP in the body: after the prologue's sub rsp)
    listing = build_listing(kernel, "proc_readfd_common", WatchRequest(so=0x18, wl=8))
    name = next(v for v in listing.locals if v.name == "name")
    body = kernel.analyze("proc_readfd_common").frame.state_after(
        listing.function.addr + listing.suggested_offset)
    assert name.cfa_offset <= 0x18 - body.sp and 0x18 - body.sp + 8 <= name.cfa_offset + 11


@pytest.mark.parametrize("index", range(len(WATCHED)), ids=[w[0] for w in WATCHED])
def test_armed_at_the_suggested_point_with_no_false_positive(workload_run, index: int) -> None:
    watches, report = workload_run
    func, request, minimum = WATCHED[index]
    row = report.summary[index]
    assert row["config"] == watches[index] and row["func"] == func
    if request.var:
        assert f"var={request.var}" in watches[index]
    if request.so is not None:
        assert f"so={request.so:#x} wl={request.wl}" in watches[index]
    assert row["armed"] >= minimum, row
    assert row["hits"] == 0, [h.writer.symbol for h in report.hits if h.watched_func == func]
    assert not [h for h in report.hits if h.watched_func == func]
    assert row["not_armed"] == 0, row
    assert row["returns"] + row["stale"] == row["armed"], row      # every armed call released
