"""``boot --console``: the guest's console streamed on stderr as it comes, not printed again.

(``run --console`` is tests/integration/test_status_line.py's; the console in the
event log and its last lines after a run without a hit: test_unarmed_run.py and
tests/linux/test_linux_seed.py.)
"""

from __future__ import annotations

from tests.output_capture import piped


def test_boot_console_streams_on_stderr() -> None:
    proc = piped(["boot", "--scenario", "3", "--accel", "tcg", "--console", "--timeout", "240"],
                 timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    streamed = [ln[4:] for ln in proc.stderr.splitlines() if ln.startswith("  | ")]
    assert streamed[0] == "KSWTEST boot", streamed[:3]
    assert any(ln.startswith("KSWTEST verdict scenario=3") for ln in streamed), streamed[-3:]
    assert "KSWTEST" not in proc.stdout                 # shown once, live
    assert "guest ended: debug-exit" in proc.stdout
