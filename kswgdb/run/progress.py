"""How far a running guest has got, in a few numbers: what a live status line shows.

Read from another thread (a terminal's refresh) while the engine works: only
counters are read, never anything the engine is in the middle of changing shape,
and a read that races a new watch being added simply gives the last numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunProgress:
    calls: int = 0            # calls of the watched functions so far, every config
    armed: int = 0            # of which armed
    hits: int = 0             # watch hits, and poll hits
    elapsed: float = 0.0      # seconds since the rig started
    slide: int | None = None  # the KASLR slide found, when the kernel was moved

    def line(self) -> str:
        """``calls 1000, armed 998, hits 1, 12s; kaslr slide +0x18a00000``."""
        kaslr = f"; kaslr slide {self.slide:+#x}" if self.slide else ""
        return (f"calls {self.calls}, armed {self.armed}, hits {self.hits}, "
                f"{self.elapsed:.0f}s{kaslr}")


def progress_reader(rig: Any) -> Callable[[], RunProgress]:
    """A reader of ``rig``'s progress (a `kswgdb.run.rig.Rig`), safe from any thread."""
    last = [RunProgress()]

    def read() -> RunProgress:
        try:
            engine, phys, placement = rig.engine, rig.phys, rig.placement
            stats = list(engine.stats) if engine is not None else []
            polls = len(phys.poller.hits) if phys is not None else 0
            last[0] = RunProgress(
                calls=sum(s.calls for s in stats), armed=sum(s.armed for s in stats),
                hits=(engine.hit_count if engine is not None else 0) + polls,
                elapsed=time.monotonic() - rig.started,
                slide=placement.slide.virtual if placement is not None else None)
        except Exception:  # noqa: BLE001 - a status line never breaks a run
            pass
        return last[0]

    return read
