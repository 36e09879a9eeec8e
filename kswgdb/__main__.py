"""``python -m kswgdb`` is the ``kswgdb`` command."""

from kswgdb.cli import main

raise SystemExit(main())
