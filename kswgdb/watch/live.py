"""Moved: the live (TUI) driver is `kswgdb.run.live`; kept for existing imports."""

from kswgdb.run.live import *  # noqa: F403
from kswgdb.run.live import LiveSession, RunState

__all__ = ["LiveSession", "RunState"]
