"""Functions that realign their stack (``and rsp, -16``) watched on Debian's kernel.

do_filp_open (every open) keeps its canary at [rsp+0xe8] after ``and rsp, -16``:
the slot's distance from the CFA is not static, but at the probe it is a fixed
offset from the live SP, and RBP still gives the CFA for frame matching and the
release point. Followed at the ``fo`` `kswgdb disasm` suggests, over a workload.
"""

from __future__ import annotations

from pathlib import Path

from kswgdb.symbols.program import Program
from tests.linux import test_lkdtm as lkdtm

image = lkdtm.image         # the same fixture: the built Debian image


def test_realigned_canary_armed_and_released_with_no_false_positive(image, tmp_path: Path
                                                                    ) -> None:
    kernel = Program.load(image.symbols)
    analysis = kernel.analyze("do_filp_open")
    assert any(i.mnemonic == "and" and i.op_str.startswith("rsp")
               for i in analysis.code.instructions)            # it does realign
    watch = lkdtm._suggested(kernel, "do_filp_open")
    workload = ("for i in 1 2 3; do cat /proc/version /proc/cpuinfo > /dev/null; "
                "ls /bin > /dev/null; done")
    report, seconds = lkdtm._run(image, watch, workload, 240.0, tmp_path)
    row = report.summary[0]
    print(f"\ndo_filp_open: {watch}: {seconds:.1f} s: calls {row['calls']} armed {row['armed']} "
          f"returns {row['returns']} hits {row['hits']} not armed {row['not_armed']}")
    assert report.fault is None and report.guest_exit is not None
    assert report.guest_exit.kind == "shutdown"
    assert "KSWGDB-INIT done status=0" in "\n".join(report.console_log)
    assert row["armed"] >= 20
    assert row["hits"] == 0 and report.hits == []
    assert row["not_armed"] == 0
    assert row["returns"] + row["stale"] == row["armed"]
