"""Moved: the one-shot run lives in `kswgdb.run` (options, prepare, rig, oneshot).

Kept so existing imports (``from kswgdb.watch.session import RunOptions,
WatchSession``) keep working.
"""

from kswgdb.run.oneshot import RunReport, WatchSession
from kswgdb.run.options import RunOptions
from kswgdb.run.prepare import BACKTRACE_WHAT, resolve_backtrace_mode

__all__ = ["BACKTRACE_WHAT", "RunOptions", "RunReport", "WatchSession",
           "resolve_backtrace_mode"]
