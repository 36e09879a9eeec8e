"""What QEMU said when it died under us, kept where the user looks.

QEMU's own stderr (an assertion such as ``qemu_mutex_lock_iothread_impl:
assertion failed``) goes to ``qemu.log`` in the private run directory, which is
removed with the run. When a run ends by a fault, its last lines are shown and
the whole log is copied next to the event log (``NAME.qemu.log``, mode 0600),
so a QEMU abort can be reported and debugged after the fact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kswgdb.qemu.machine import Machine

#: Lines of QEMU's stderr shown with the fault.
SHOWN_LINES = 5


def keep_qemu_log(machine: Machine, event_log: Path | None) -> tuple[list[str], Path | None]:
    """(QEMU's last non-empty stderr lines, the kept copy of its log or None).

    A QEMU that said nothing (the guest panicked, say) leaves nothing behind.
    """
    lines = [ln for ln in machine.qemu_log_tail() if ln.strip()][-SHOWN_LINES:]
    source = machine.qemu_log_path
    if not lines or event_log is None or source is None or not source.exists():
        return lines, None
    kept = event_log.with_name(event_log.name.removesuffix(".jsonl") + ".qemu.log")
    try:
        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
    except OSError:
        return lines, None
    return lines, kept
