"""The interactive screen (`kswgdb tui`): one watched guest, changed while it runs.

Imports go one way: tui -> render, watch. The screen gets a prepared
`kswgdb.run.live.LiveSession` from outside, so tests can hand it any session.
"""

from kswgdb.tui.app import KswApp

__all__ = ["KswApp"]
